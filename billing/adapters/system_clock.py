from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Implements Clock with the machine's time."""

    def now(self) -> datetime:
        return datetime.now(UTC)
