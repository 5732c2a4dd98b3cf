"""Use cases: one module each, a command dataclass and a callable handler built from ports."""
