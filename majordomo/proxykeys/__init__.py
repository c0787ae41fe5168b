"""
Proxy keys (C{mdm_pk_...}): a key given to a customer or an app
under a Majordomo key, so that it never holds a provider credential.  The
gateway swaps in the provider key mapped to it, which is stored sealed
(L{majordomo.vault}).

L{majordomo.proxykeys.store} reads and changes them in PostgreSQL (for the
C{majordomo proxy-keys} and C{majordomo secrets} commands and the gateway);
the request path's cache and swap are beside it.  Each change NOTIFYs the
key channel with the proxy key's id, so every running gateway forgets it at once.
"""
