from __future__ import annotations

import threading
from collections.abc import Sequence

from billing.domain.events import DomainEvent


class RecordingNotifier:
    """Implements Notifier by keeping every published event, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.published: list[DomainEvent] = []

    def publish(self, events: Sequence[DomainEvent]) -> None:
        with self._lock:
            self.published.extend(events)
