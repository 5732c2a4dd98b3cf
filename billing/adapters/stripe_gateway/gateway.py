"""The PaymentGateway port on Stripe, through the official SDK's async client
(`stripe.StripeClient` over aiohttp): a call in flight holds no thread, only a socket.

Every mutating call carries its own Idempotency-Key (`<payment_id>:create`, `<payment_id>:expire`,
`<refund_key>:refund`) and is rebuilt from our stored row, so a retry replays Stripe's first answer
instead of making a second session or refund. Stripe's errors become the domain's two gateway
errors once, here, with every API key scrubbed from the message.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from billing.adapters.stripe_gateway.events import translate_event
from billing.adapters.stripe_gateway.io_loop import IoLoop
from billing.domain.errors import GatewayRejected, GatewayUnavailable
from billing.domain.money import Money
from billing.domain.payment_events import PaymentEvent
from billing.ports import CheckoutParams, CheckoutSnapshot, RefundParams, RefundSnapshot

if TYPE_CHECKING:
    import aiohttp
    import stripe

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# Secret and restricted keys (masked ones too: Stripe echoes "sk_test_****1234"), webhook
# secrets, bearer tokens.
_SECRET = re.compile(
    r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9_*]*"
    r"|\bwhsec_[A-Za-z0-9_*]*"
    r"|(?i:bearer)\s+\S+"
)
_MAX_MESSAGE = 300


def scrub(text: str) -> str:
    """Stripe's message, on one line, without anything that looks like a key or secret."""
    one_line = " ".join(_SECRET.sub("[REDACTED]", text).split())
    return one_line if len(one_line) <= _MAX_MESSAGE else one_line[: _MAX_MESSAGE - 1] + "…"


def _on_io_loop(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run the gateway's `method` on the gateway's own loop."""

    @functools.wraps(method)
    async def on_io_loop(*args: P.args, **kwargs: P.kwargs) -> T:
        gateway = args[0]
        assert isinstance(gateway, StripePaymentGateway)
        return await gateway._io.run(method(*args, **kwargs))

    return on_io_loop


class StripePaymentGateway:
    """Implements PaymentGateway on the Stripe API (bounded and timed by BoundedPaymentGateway).

    Every call runs on the gateway's own event loop (io_loop.py), where the SDK and its HTTP
    session live. They are made on first use (or by `warm_up`): importing the SDK takes over
    half a second, which `billing serve` should not spend before it listens.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout_s: float = 20,
        max_connections: int = 256,
    ) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        self._options = (api_key, api_base, max_network_retries, timeout_s)
        self._max_connections = max_connections
        self._sdk: stripe.StripeClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._io = IoLoop("stripe-io")

    @property
    def _client(self) -> stripe.StripeClient:
        if self._sdk is None:
            import ssl

            import aiohttp
            import stripe

            api_key, api_base, max_network_retries, timeout_s = self._options
            # Our own session: the SDK's default connector allows 100 connections, fewer than
            # BILLING_STRIPE_MAX_CONCURRENCY calls in flight would need.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path),
                )
            )
            self._sdk = stripe.StripeClient(
                api_key,
                base_addresses={"api": api_base.rstrip("/")} if api_base else None,
                max_network_retries=max_network_retries,
                http_client=stripe.AIOHTTPClient(
                    session=self._session, timeout=aiohttp.ClientTimeout(total=timeout_s)
                ),
            )
        return self._sdk

    async def warm_up(self) -> None:
        """Import the SDK on a thread, then make the client on the gateway's loop."""
        await asyncio.to_thread(importlib.import_module, "stripe")
        await self._io.run(self._make_client())

    async def _make_client(self) -> None:
        self._client  # noqa: B018  (the property builds it)

    async def close(self) -> None:
        """Close the HTTP session, then stop the gateway's loop."""
        await self._io.run(self._close_session())
        self._io.stop()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._sdk = self._session = None

    def reserve(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()  # no bound of its own: BoundedPaymentGateway holds the slots

    # -- the port ---------------------------------------------------------------------------
    @_on_io_loop
    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot:
        product: dict[str, Any] = {"name": params.product_name}
        if params.description:  # Stripe refuses an empty description
            product["description"] = params.description
        body: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": params.amount.currency.lower(),
                        "unit_amount": params.amount.amount_minor,
                        "product_data": product,
                    },
                    "quantity": 1,
                }
            ],
            "client_reference_id": params.user_id,
            "metadata": dict(params.metadata),
            "payment_intent_data": {"metadata": {"payment_id": params.payment_id}},
            "expires_at": _unix(params.expires_at),
            "success_url": params.success_url,
            "cancel_url": params.cancel_url,
        }
        with _stripe_errors("create a checkout session"):
            session = await self._client.v1.checkout.sessions.create_async(
                params=body,  # type: ignore[arg-type]  # a plain dict of the documented params
                options={"idempotency_key": params.idempotency_key},
            )
        snapshot = _checkout_snapshot(session)
        log.info(
            "stripe checkout session created",
            extra={"session_id": snapshot.session_id, "payment_id": params.payment_id},
        )
        return snapshot

    @_on_io_loop
    async def retrieve_checkout(self, session_id: str) -> CheckoutSnapshot:
        with _stripe_errors("retrieve the checkout session"):
            session = await self._client.v1.checkout.sessions.retrieve_async(session_id)
        return _checkout_snapshot(session)

    @_on_io_loop
    async def expire_checkout(self, session_id: str, payment_id: str) -> CheckoutSnapshot:
        import stripe

        action = "expire the checkout session"
        with _stripe_errors(action):
            try:
                session = await self._client.v1.checkout.sessions.expire_async(
                    session_id, options={"idempotency_key": f"{payment_id}:expire"}
                )
                return _checkout_snapshot(session)
            except stripe.InvalidRequestError as error:
                if error.http_status != 400:  # 404: no such session
                    raise
                refusal = error
        # Stripe refuses (400) to expire a session that is no longer open, paid or expired
        # already: that session, as it is now, is the answer.
        current = await self.retrieve_checkout(session_id)
        if current.status != "open":
            return current
        raise GatewayRejected(f"Stripe refused to {action}: {_stripe_message(refusal)}")

    @_on_io_loop
    async def refund(self, params: RefundParams) -> RefundSnapshot:
        body: dict[str, Any] = {
            "payment_intent": params.payment_intent_id,
            "amount": params.amount.amount_minor,
            "reason": "requested_by_customer",
            "metadata": {
                "refund_key": params.refund_key,
                "payment_id": params.payment_id,
                "reason": params.reason,
            },
        }
        with _stripe_errors("refund the payment"):
            refund = await self._client.v1.refunds.create_async(
                params=body,  # type: ignore[arg-type]
                options={"idempotency_key": params.idempotency_key},
            )
        snapshot = _refund_snapshot(refund)
        log.info(
            "stripe refund created",
            extra={"refund_id": snapshot.refund_id, "refund_key": params.refund_key,
                   "status": snapshot.status},
        )
        return snapshot

    @_on_io_loop
    async def retrieve_refund(self, refund_id: str) -> RefundSnapshot:
        with _stripe_errors("retrieve the refund"):
            refund = await self._client.v1.refunds.retrieve_async(refund_id)
        return _refund_snapshot(refund)

    @_on_io_loop
    async def undelivered_events(self, limit: int = 100) -> list[PaymentEvent]:
        """Events whose webhook delivery has not succeeded (yet), translated, oldest first.

        GET /v1/events?delivery_success=false, following `has_more` page after page (100 a
        page at most, Stripe's cap) until `limit` events are read: the newest `limit`.
        """
        if limit <= 0:
            return []
        events: list[PaymentEvent] = []
        with _stripe_errors("list undelivered events"):
            first = await self._client.v1.events.list_async(
                params={"delivery_success": False, "limit": min(limit, 100)}
            )
            async for event in first.auto_paging_iter():
                translated = _translated(event.to_dict(recursive=True, for_json=True))
                if translated is not None:
                    events.append(translated)
                if len(events) >= limit:
                    break
        events.reverse()
        return events


# -- conversions ----------------------------------------------------------------------------
def _translated(event: dict[str, Any]) -> PaymentEvent | None:
    payload = json.dumps(event, separators=(",", ":"))
    try:
        return translate_event(event, payload)
    except ValueError as error:  # no usable id or type: nothing to record it under
        log.warning("skipping an unreadable Stripe event: %s", scrub(str(error)))
        return None


def _unix(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _money(currency: str | None, amount: int | None, what: str) -> Money:
    try:
        return Money((currency or "").upper(), int(amount or 0))
    except (TypeError, ValueError) as error:
        raise GatewayRejected(f"Stripe returned {what} in an unusable currency: {error}") from None


def _checkout_snapshot(session: stripe.checkout.Session) -> CheckoutSnapshot:
    intent = session.payment_intent
    intent_id = intent if isinstance(intent, str) else (intent.id if intent is not None else "")
    metadata = session.metadata
    payment_id = metadata["payment_id"] if metadata and "payment_id" in metadata else ""
    return CheckoutSnapshot(
        session_id=session.id,
        url=session.url or "",  # Stripe clears the URL once the session is not open
        status=str(session.status or ""),
        payment_status=str(session.payment_status or ""),
        amount=_money(session.currency, session.amount_total, "a checkout session"),
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
        payment_id=str(payment_id),
        payment_intent_id=intent_id or "",
    )


def _refund_snapshot(refund: stripe.Refund) -> RefundSnapshot:
    return RefundSnapshot(
        refund_id=refund.id,
        status=str(refund.status or ""),
        amount=_money(refund.currency, refund.amount, "a refund"),
    )


# -- errors ---------------------------------------------------------------------------------
def _stripe_message(error: stripe.StripeError) -> str:
    text = error.user_message or type(error).__name__
    if error.request_id:
        text = f"{text} (request {error.request_id})"
    return scrub(str(text))


def _transient_status(status: int | None) -> bool:
    # No status: the response could not be read. 409: a concurrent request on the same key, or
    # a lock timeout, which the SDK already retried.
    return status is None or status >= 500 or status == 409


@contextmanager
def _stripe_errors(action: str) -> Iterator[None]:
    """Map the SDK's errors, after its own retries, to GatewayUnavailable / GatewayRejected.

    The original exception is not chained: its body and headers are Stripe's, and nothing of
    them may reach a log unscrubbed.
    """
    import stripe  # on first use only, like the client

    try:
        yield
    except (stripe.AuthenticationError, stripe.PermissionError) as error:
        log.error(
            "Stripe refused our API key while trying to %s: %s", action, _stripe_message(error)
        )
        raise GatewayRejected("Stripe refused our API key") from None
    except (stripe.APIConnectionError, stripe.RateLimitError) as error:
        raise GatewayUnavailable(
            f"Stripe could not be reached to {action}: {_stripe_message(error)}"
        ) from None
    except (stripe.InvalidRequestError, stripe.CardError, stripe.IdempotencyError) as error:
        raise GatewayRejected(f"Stripe refused to {action}: {_stripe_message(error)}") from None
    except stripe.StripeError as error:  # APIError and anything newer
        if _transient_status(error.http_status):
            raise GatewayUnavailable(
                f"Stripe failed to {action}: {_stripe_message(error)}"
            ) from None
        raise GatewayRejected(f"Stripe refused to {action}: {_stripe_message(error)}") from None
