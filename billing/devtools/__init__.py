"""Tools for development and tests that are not adapters of a port: the local fake Stripe."""
