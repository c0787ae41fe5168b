"""
The ledger of requests: one record per request, journaled, then written in batches.
"""
