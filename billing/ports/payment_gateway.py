"""The payment provider, as the use cases see it (Stripe Checkout in production)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from billing.domain.money import Money
from billing.domain.payment_events import PaymentEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutParams:
    """Everything sent to create a session: stored on our row first, resent unchanged on retry."""

    payment_id: str
    user_id: str
    package_id: str
    coins: int
    bonus: int
    amount: Money
    product_name: str
    description: str
    success_url: str
    cancel_url: str
    expires_at: datetime

    @property
    def idempotency_key(self) -> str:
        return f"{self.payment_id}:create"

    @property
    def metadata(self) -> Mapping[str, str]:
        """The guide's keys plus ours; informative only, our row is the truth."""
        return {
            "user_id": self.user_id,
            "coins": str(self.coins),
            "bonus": str(self.bonus),
            "total_coins": str(self.coins + self.bonus),
            "package_id": self.package_id,
            "payment_id": self.payment_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutSnapshot:
    """A Checkout Session as the provider sees it now."""

    session_id: str
    url: str
    status: str  # open | complete | expired
    payment_status: str  # paid | unpaid | no_payment_required
    amount: Money
    expires_at: datetime
    payment_id: str = ""
    payment_intent_id: str = ""

    @property
    def is_paid(self) -> bool:
        return self.payment_status in ("paid", "no_payment_required")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundParams:
    refund_key: str
    payment_id: str
    payment_intent_id: str
    amount: Money
    reason: str

    @property
    def idempotency_key(self) -> str:
        return f"{self.refund_key}:refund"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundSnapshot:
    refund_id: str
    status: str  # pending | requires_action | succeeded | failed | canceled
    amount: Money


@runtime_checkable
class PaymentGateway(Protocol):
    """The provider, asynchronous: a call waits hundreds of milliseconds on the network, and while
    it waits it holds no thread and no database connection (DESIGN.md, "Concurrency and speed").

    Every call raises GatewayUnavailable (retry later) or GatewayRejected (never will), and
    Overloaded, before anything is sent, when the bounded number of calls in flight is reached.
    """

    def reserve(self) -> AbstractAsyncContextManager[None]:
        """Hold one slot of the bounded provider calls for the block; the calls made inside it
        use that slot. Raises Overloaded at once when every slot is taken, so a use case can
        refuse a request before it writes anything."""
        ...

    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot: ...

    async def retrieve_checkout(self, session_id: str) -> CheckoutSnapshot: ...

    async def expire_checkout(self, session_id: str, payment_id: str) -> CheckoutSnapshot:
        """Expire an open session; a session already complete or expired is returned as is."""
        ...

    async def refund(self, params: RefundParams) -> RefundSnapshot: ...

    async def retrieve_refund(self, refund_id: str) -> RefundSnapshot: ...

    async def undelivered_events(self, limit: int = 100) -> Sequence[PaymentEvent]:
        """Events the provider failed to deliver to our webhook, translated (reconciliation)."""
        ...


@runtime_checkable
class PaymentEventParser(Protocol):
    def parse(self, payload: str) -> PaymentEvent:
        """Translate a stored provider payload (an inbox row) back into a PaymentEvent."""
        ...
