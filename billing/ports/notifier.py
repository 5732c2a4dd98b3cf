from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from billing.domain.events import DomainEvent


@runtime_checkable
class Notifier(Protocol):
    def publish(self, events: Sequence[DomainEvent]) -> None:
        """Called after a unit of work committed; must not raise for a delivery problem."""
        ...
