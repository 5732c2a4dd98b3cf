"""Billing service: sells in-app coins through Stripe Checkout and keeps the coin ledger."""
