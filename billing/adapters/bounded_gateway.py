"""Bounds and times every call to the payment provider, whichever gateway makes it.

- At most `limit` calls in flight per process. Past it, a call is refused at once with
  Overloaded (`limit=stripe_calls`): a use case reserves its slot before it writes anything, so a
  refused request changed nothing. Shedding beats queueing here: a queue in front of a slow
  provider only turns every caller's latency into a timeout.
- Each call's time is bounded by min(`timeout_s`, the caller's remaining deadline), across the
  SDK's own retries. A caller that leaves cancels the call, and its slot is freed.
- Calls in flight, their latency by endpoint and outcome, and requests shed are metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, TypeVar

from billing.adapters import deadlines
from billing.adapters.metrics import Metrics
from billing.domain.errors import GatewayRejected, GatewayUnavailable, Overloaded
from billing.domain.payment_events import PaymentEvent
from billing.ports import (
    CheckoutParams,
    CheckoutSnapshot,
    PaymentGateway,
    RefundParams,
    RefundSnapshot,
)

T = TypeVar("T")
LIMIT_NAME = "stripe_calls"
# When the caller's deadline bounds a call, the runtime ends the RPC at that deadline with
# DEADLINE_EXCEEDED and cancels the call; the timer, a little later, is only the backstop, so the
# caller never sees a racing UNAVAILABLE instead.
DEADLINE_BACKSTOP_S = 0.05

# Whether the running task holds a slot already (its calls then use it instead of another).
_holding: ContextVar[bool] = ContextVar("billing_gateway_slot", default=False)


class BoundedPaymentGateway:
    """Implements PaymentGateway around another gateway; one instance per process."""

    def __init__(
        self, inner: PaymentGateway, *, limit: int, timeout_s: float, metrics: Metrics
    ) -> None:
        if limit < 1 or timeout_s <= 0:
            raise ValueError("limit and timeout_s must be positive")
        self.inner = inner
        self.limit = limit
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._in_flight = 0  # touched on the event loop only
        metrics.stripe_limit.set(limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[None]:
        if _holding.get():
            yield
            return
        if self._in_flight >= self.limit:
            self._metrics.stripe_shed.inc()
            raise Overloaded(
                LIMIT_NAME,
                f"{self.limit} Stripe calls are already in flight; retry with backoff",
            )
        self._in_flight += 1
        self._metrics.stripe_in_flight.inc()
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)
            self._in_flight -= 1
            self._metrics.stripe_in_flight.dec()

    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot:
        return await self._call("create_checkout", lambda: self.inner.create_checkout(params))

    async def retrieve_checkout(self, session_id: str) -> CheckoutSnapshot:
        return await self._call(
            "retrieve_checkout", lambda: self.inner.retrieve_checkout(session_id)
        )

    async def expire_checkout(self, session_id: str, payment_id: str) -> CheckoutSnapshot:
        return await self._call(
            "expire_checkout", lambda: self.inner.expire_checkout(session_id, payment_id)
        )

    async def refund(self, params: RefundParams) -> RefundSnapshot:
        return await self._call("refund", lambda: self.inner.refund(params))

    async def retrieve_refund(self, refund_id: str) -> RefundSnapshot:
        return await self._call("retrieve_refund", lambda: self.inner.retrieve_refund(refund_id))

    async def undelivered_events(self, limit: int = 100) -> Sequence[PaymentEvent]:
        return await self._call(
            "undelivered_events", lambda: self.inner.undelivered_events(limit)
        )

    async def _call(self, endpoint: str, call: Callable[[], Awaitable[T]]) -> T:
        async with self.reserve():
            left = deadlines.remaining()
            timeout = self.timeout_s
            if left is not None and left + DEADLINE_BACKSTOP_S < timeout:
                timeout = left + DEADLINE_BACKSTOP_S
            started = time.perf_counter()
            outcome = "error"
            try:
                async with asyncio.timeout(timeout):
                    result = await call()
                outcome = "ok"
                return result
            except TimeoutError:
                outcome = "timeout"
                raise GatewayUnavailable(
                    f"Stripe did not answer within {timeout:.1f} s; retry later"
                ) from None
            except GatewayRejected:
                outcome = "rejected"
                raise
            except GatewayUnavailable:
                outcome = "unavailable"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"  # the caller left: the slot is freed on the way out
                raise
            finally:
                self._metrics.stripe_latency.labels(endpoint, outcome).observe(
                    time.perf_counter() - started
                )


if TYPE_CHECKING:

    def _implements_the_port(gateway: BoundedPaymentGateway) -> PaymentGateway:
        return gateway
