"""Typed errors of the billing domain.

Each error carries the `reason` of DESIGN.md's error table and a `kind` that every adapter maps
once to its own vocabulary (a gRPC status code, an HTTP status, a CLI exit code).
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    PERMISSION = "permission"
    CONFLICT = "conflict"
    PRECONDITION = "precondition"
    UNAVAILABLE = "unavailable"
    EXHAUSTED = "exhausted"


class BillingError(Exception):
    """Base of every error a caller may see; the message is safe to show."""

    reason: str = "INTERNAL"
    kind: ErrorKind = ErrorKind.PRECONDITION

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def metadata(self) -> dict[str, str]:
        return {}


class InvalidField(BillingError):
    reason = "INVALID_FIELD"
    kind = ErrorKind.INVALID

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    @property
    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


class UnknownPackage(BillingError):
    reason = "UNKNOWN_PACKAGE"
    kind = ErrorKind.INVALID


class InvalidPageToken(BillingError):
    reason = "INVALID_PAGE_TOKEN"
    kind = ErrorKind.INVALID


class NotSessionOwner(BillingError):
    reason = "NOT_SESSION_OWNER"
    kind = ErrorKind.PERMISSION


class SessionNotFound(BillingError):
    reason = "SESSION_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


class EventNotFound(BillingError):
    reason = "EVENT_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


class IdempotencyKeyReused(BillingError):
    reason = "IDEMPOTENCY_KEY_REUSED"
    kind = ErrorKind.CONFLICT


class InsufficientCoins(BillingError):
    reason = "INSUFFICIENT_COINS"


class AlreadyPaid(BillingError):
    reason = "ALREADY_PAID"


class NotRefundable(BillingError):
    reason = "NOT_REFUNDABLE"


class CoinsAlreadySpent(BillingError):
    reason = "COINS_ALREADY_SPENT"


class GatewayUnavailable(BillingError):
    """Stripe could not be reached, or kept failing after the SDK's retries."""

    reason = "GATEWAY_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class GatewayRejected(BillingError):
    """Stripe refused the request; the message says why (never a secret)."""

    reason = "GATEWAY_REJECTED"


class Overloaded(BillingError):
    """A concurrency limit is full (`limit` names it); nothing was changed, retry with backoff."""

    reason = "OVERLOADED"
    kind = ErrorKind.EXHAUSTED

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit

    @property
    def metadata(self) -> dict[str, str]:
        return {"limit": self.limit}


class InvalidCursor(BillingError):
    """A feed cursor that no stream ever sent, or one given together with from_now."""

    reason = "INVALID_CURSOR"
    kind = ErrorKind.INVALID


class SlowConsumer(BillingError):
    """A stream's consumer fell behind its bounded buffer; it resumes from its last cursor."""

    reason = "SLOW_CONSUMER"
    kind = ErrorKind.EXHAUSTED


class ShuttingDown(BillingError):
    """The process is draining: its open streams end; the caller resumes on another replica."""

    reason = "SHUTTING_DOWN"
    kind = ErrorKind.UNAVAILABLE


class StoreUnavailable(BillingError):
    """The database cannot be reached; retrying later is safe."""

    reason = "STORE_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class TransientConflict(Exception):
    """A unit of work lost a race (serialization failure, deadlock, unique-key race).

    Never shown to callers: the use-case runner re-runs the whole unit a bounded number of times.
    """


class CatalogError(ValueError):
    """The coin-package catalog is unusable; raised at start, naming the problem."""
