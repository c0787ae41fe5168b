"""
The HTTP side: the gateway's site, its limits, the proxy resource, and the upstream client.
"""
