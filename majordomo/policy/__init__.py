"""
Spend and traffic policies per API key: budgets over calendar windows, model
rules and rate limits (C{majordomo keys policy}).

L{majordomo.policy.rules} says what a policy is and which window a moment
falls in; L{majordomo.policy.store} reads and changes policies in PostgreSQL;
L{majordomo.policy.estimate} bounds what a request can cost before it is sent;
L{majordomo.policy.leases} holds this process's share of each limit, leased
from PostgreSQL, so admission needs no round trip per request; and
L{majordomo.policy.gate} admits or refuses a request against them.
"""
