"""Running one use case's work in one unit of work, re-run on a lost race, events published."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from billing.domain.errors import StoreUnavailable, TransientConflict
from billing.ports import Clock, Notifier, UnitOfWork, UnitOfWorkFactory

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UnitRunner:
    """What every use case needs: transactions, the time, and somewhere to publish events."""

    uow: UnitOfWorkFactory
    clock: Clock
    notifier: Notifier
    max_attempts: int = 5

    def now(self) -> datetime:
        return self.clock.now()

    def run(
        self, work: Callable[[UnitOfWork], T], *, read_only: bool = False, snapshot: bool = False
    ) -> T:
        """Run `work` in a fresh unit and commit it; re-run the whole of it after a lost race.

        A domain error raised by `work` rolls the unit back and reaches the caller unchanged.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                opened = (
                    self.uow(read_only=True, snapshot=True)
                    if snapshot
                    else self.uow(read_only=read_only)
                )
                with opened as unit:
                    result = work(unit)
                    if not (read_only or snapshot):
                        unit.commit()
                    events = list(unit.events)
            except TransientConflict as conflict:
                log.info("unit of work lost a race, attempt %d: %s", attempt, conflict)
                continue
            if events:
                self.notifier.publish(events)
            return result
        raise StoreUnavailable("the database stayed too busy to finish the request; retry")
