"""A payment gateway that behaves like Stripe Checkout, in memory.

Idempotency keys replay the first answer and refuse other parameters, sessions are open until
paid or expired, refunds keep Stripe's statuses. `outage` makes it unreachable for a while.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace

from billing.domain.errors import GatewayRejected, GatewayUnavailable
from billing.domain.payment_events import PaymentEvent
from billing.ports import CheckoutParams, CheckoutSnapshot, RefundParams, RefundSnapshot


@dataclass
class _Session:
    snapshot: CheckoutSnapshot
    params: CheckoutParams


class InMemoryPaymentGateway:
    """Implements PaymentGateway (async like the real one; it never waits)."""

    def __init__(self, base_url: str = "https://checkout.example.test/c/pay") -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)  # ids stay unique when gateways share a database
        self._base_url = base_url
        self.sessions: dict[str, _Session] = {}
        self.refunds: dict[str, tuple[RefundParams, RefundSnapshot]] = {}
        self._replies: dict[str, tuple[object, object]] = {}
        self.calls: list[str] = []
        self.undelivered: list[PaymentEvent] = []  # events "Stripe" failed to deliver
        self.unavailable_calls = 0  # the next N calls fail as if Stripe were unreachable
        self.refuse_refunds = False
        self.fail_refunds = False  # refunds are accepted, then fail (like 4000000000005126)

    # -- the port -------------------------------------------------------------------------
    def reserve(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()  # unbounded: BoundedPaymentGateway adds the bound

    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot:
        with self._lock:
            self._call("create_checkout")
            replayed = self._replay(params.idempotency_key, params)
            if isinstance(replayed, CheckoutSnapshot):
                return replayed
            session_id = f"cs_test_{self._prefix}{next(self._ids):06d}"
            snapshot = CheckoutSnapshot(
                session_id=session_id,
                url=f"{self._base_url}/{session_id}",
                status="open",
                payment_status="unpaid",
                amount=params.amount,
                expires_at=params.expires_at,
                payment_id=params.payment_id,
            )
            self.sessions[session_id] = _Session(snapshot, params)
            self._replies[params.idempotency_key] = (params, snapshot)
            return snapshot

    async def retrieve_checkout(self, session_id: str) -> CheckoutSnapshot:
        with self._lock:
            self._call("retrieve_checkout")
            return self._session(session_id).snapshot

    async def expire_checkout(self, session_id: str, payment_id: str) -> CheckoutSnapshot:
        with self._lock:
            self._call("expire_checkout")
            session = self._session(session_id)
            if session.snapshot.status == "open":
                session.snapshot = replace(session.snapshot, status="expired")
            return session.snapshot

    async def refund(self, params: RefundParams) -> RefundSnapshot:
        with self._lock:
            self._call("refund")
            replayed = self._replay(params.idempotency_key, params)
            if isinstance(replayed, RefundSnapshot):
                return replayed
            if self.refuse_refunds:
                raise GatewayRejected("Stripe refused the refund: charge already refunded")
            refund = RefundSnapshot(
                refund_id=f"re_test_{self._prefix}{next(self._ids):06d}",
                status="pending" if self.fail_refunds else "succeeded",
                amount=params.amount,
            )
            self.refunds[refund.refund_id] = (params, refund)
            self._replies[params.idempotency_key] = (params, refund)
            return refund

    async def retrieve_refund(self, refund_id: str) -> RefundSnapshot:
        with self._lock:
            self._call("retrieve_refund")
            try:
                return self.refunds[refund_id][1]
            except KeyError:
                raise GatewayRejected(f"No such refund: {refund_id!r}") from None

    async def undelivered_events(self, limit: int = 100) -> list[PaymentEvent]:
        with self._lock:
            self._call("undelivered_events")
            return list(self.undelivered[:limit])

    # -- what a customer or Stripe does -----------------------------------------------------
    def pay(self, session_id: str, payment_intent_id: str | None = None) -> CheckoutSnapshot:
        with self._lock:
            session = self._session(session_id)
            session.snapshot = replace(
                session.snapshot,
                status="complete",
                payment_status="paid",
                payment_intent_id=payment_intent_id or f"pi_{session_id}",
            )
            return session.snapshot

    def settle_refund(self, refund_id: str, status: str) -> None:
        with self._lock:
            params, refund = self.refunds[refund_id]
            self.refunds[refund_id] = (params, replace(refund, status=status))

    def refund_count(self) -> int:
        return len(self.refunds)

    # -- internals --------------------------------------------------------------------------
    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.unavailable_calls > 0:
            self.unavailable_calls -= 1
            raise GatewayUnavailable("Stripe could not be reached")

    def _replay(self, key: str, params: object) -> object | None:
        earlier = self._replies.get(key)
        if earlier is None:
            return None
        if earlier[0] != params:
            raise GatewayRejected(
                "Keys for idempotent requests can only be used with the same parameters"
            )
        return earlier[1]

    def _session(self, session_id: str) -> _Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise GatewayRejected(f"No such checkout.session: {session_id!r}") from None
