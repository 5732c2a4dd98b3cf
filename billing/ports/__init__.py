"""The ports: small Protocols the use cases need, implemented by the adapters."""

from billing.ports.clock import Clock
from billing.ports.live import FeedFollower, LiveUpdates, SessionWaiter
from billing.ports.notifier import Notifier
from billing.ports.offload import Offload
from billing.ports.payment_gateway import (
    CheckoutParams,
    CheckoutSnapshot,
    PaymentEventParser,
    PaymentGateway,
    RefundParams,
    RefundSnapshot,
)
from billing.ports.unit_of_work import (
    AccountRepository,
    EventInbox,
    IdempotencyRecord,
    IdempotencyStore,
    LedgerRepository,
    PaymentRepository,
    RefundRepository,
    UnitOfWork,
    UnitOfWorkFactory,
)

__all__ = [
    "AccountRepository",
    "CheckoutParams",
    "CheckoutSnapshot",
    "Clock",
    "EventInbox",
    "FeedFollower",
    "IdempotencyRecord",
    "IdempotencyStore",
    "LedgerRepository",
    "LiveUpdates",
    "Notifier",
    "Offload",
    "PaymentEventParser",
    "PaymentGateway",
    "PaymentRepository",
    "RefundParams",
    "RefundRepository",
    "RefundSnapshot",
    "SessionWaiter",
    "UnitOfWork",
    "UnitOfWorkFactory",
]
