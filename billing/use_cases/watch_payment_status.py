"""WatchPaymentStatus: a session's status now, then each change, until it settles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from billing.domain.limits import check_id
from billing.domain.payment import WATCH_SETTLED
from billing.ports import LiveUpdates, Offload
from billing.use_cases.get_payment_status import GetPaymentStatus, PaymentStatusView


def _what_a_watch_reports(view: PaymentStatusView) -> tuple[object, ...]:
    """A change is one of status, coins added or coins refunded (not the balance alone)."""
    session = view.session
    return session.status, session.coins_credited, session.coins_refunded


@dataclass(frozen=True, slots=True)
class WatchPaymentStatus:
    """Subscribes before its first read, so a change between the read and the wait still wakes
    it. Each wake-up re-reads the session (through `reads`): wake-ups carry no state, so a
    spurious or a lost one costs a read or `poll_s` of latency, never a change. Ends once the
    session settles (DESIGN.md), or after `max_s` (BILLING_MAX_WATCH_S; the caller's own
    deadline ends it earlier, through the runtime)."""

    status: GetPaymentStatus
    live: LiveUpdates
    reads: Offload
    max_s: float
    poll_s: float = 30.0

    async def __call__(self, user_id: str, session_id: str) -> AsyncIterator[PaymentStatusView]:
        check_id("user_id", user_id)
        check_id("session_id", session_id)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.max_s
        waiter = await self.live.watch_session(session_id)
        try:
            read = partial(self.status, user_id, session_id)
            view = await self.reads(read)  # the owner check: its errors end the watch
            yield view
            last = _what_a_watch_reports(view)
            while view.session.status not in WATCH_SETTLED:
                remaining = ends_at - loop.time()
                if remaining <= 0:
                    return
                await waiter.wait(min(remaining, self.poll_s))
                view = await self.reads(read)
                now = _what_a_watch_reports(view)
                if now != last:
                    yield view
                    last = now
        finally:
            waiter.close()
