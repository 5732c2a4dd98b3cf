"""In-memory adapters with database semantics, for tests and the contract suite."""

from billing.adapters.memory.clock import ManualClock
from billing.adapters.memory.gateway import InMemoryPaymentGateway
from billing.adapters.memory.notifier import RecordingNotifier
from billing.adapters.memory.unit_of_work import InMemoryStore, InMemoryUnitOfWork

__all__ = [
    "InMemoryPaymentGateway",
    "InMemoryStore",
    "InMemoryUnitOfWork",
    "ManualClock",
    "RecordingNotifier",
]
