"""gRPC edge: the BillingService servicer, the one error mapping, and the interceptors."""
