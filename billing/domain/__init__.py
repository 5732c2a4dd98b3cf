"""The pure core: money, the catalog, payment sessions, accounts and the ledger.

Standard library only; nothing here knows about gRPC, SQL, Stripe or HTTP.
"""
