"""Delivering the fake's events: signed like Stripe's, re-sent with backoff, some dropped.

One background task per app, started on startup and cancelled on cleanup. It also runs the
engine's timers (session expiry, late refund failures), so everything that happens later
happens on this one loop. Events go out one at a time, oldest first; one that the receiver
refuses waits for its retry without holding up the others, as with Stripe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time

import aiohttp

from billing.devtools.stripe_fake.config import FakeStripeConfig
from billing.devtools.stripe_fake.engine import FakeStripe
from billing.devtools.stripe_fake.store import StoredEvent

log = logging.getLogger(__name__)

_IDLE_WAKE_S = 1.0  # look at the clock at least this often (timers, retries)
_REQUEST_TIMEOUT_S = 10.0


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """Stripe's `Stripe-Signature`: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookSender:
    def __init__(self, engine: FakeStripe, config: FakeStripeConfig,
                 rng: random.Random | None = None) -> None:
        self._engine = engine
        self._store = engine.store
        self._config = config
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopped = False

    def wake(self) -> None:
        """Something changed: look for due events now rather than at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        """Make `run` return at its next step (cancelling it alone can be lost in Python 3.11,
        when the wake-up and the cancellation arrive together)."""
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stopped:
                self._wake.clear()
                try:
                    with self._store.transaction():
                        self._engine.run_due_timers()
                    for event in self._due():
                        if self._stopped:
                            return
                        await self._deliver(http, event)
                except Exception:  # a bug here must not silence every later event
                    log.exception("fake stripe webhook loop failed; continuing")
                    await asyncio.sleep(_IDLE_WAKE_S)
                    continue
                await self._sleep_until_due()

    def _due(self) -> list[StoredEvent]:
        # No endpoint configured: events stay undelivered (listed for reconciliation).
        return self._store.due_deliveries(time.time()) if self._config.webhook_url else []

    async def _sleep_until_due(self) -> None:
        now = time.time()
        next_delivery = self._store.next_delivery_at() if self._config.webhook_url else None
        due = [t for t in (next_delivery, self._engine.next_timer_at()) if t is not None]
        wait = min([_IDLE_WAKE_S, *(max(0.0, t - now) for t in due)])
        if wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _deliver(self, http: aiohttp.ClientSession, event: StoredEvent) -> None:
        attempts = event.attempts + 1
        if event.attempts == 0 and self._rng.random() < self._config.drop_rate:
            self._mark(event, "dropped", attempts, "dropped (drop_rate)")
            log.info("fake stripe dropped event %s (%s)", event.id, event.type)
            return
        payload = event.payload.encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": signature_header(
                payload, self._config.signing_secret, int(time.time())
            ),
        }
        try:
            async with http.post(self._config.webhook_url, data=payload,
                                 headers=headers) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self._retry_later(event, attempts, f"unreachable: {type(error).__name__}")
            return
        if 200 <= status < 300:
            self._mark(event, "delivered", attempts, str(status))
        else:
            self._retry_later(event, attempts, str(status))

    def _retry_later(self, event: StoredEvent, attempts: int, why: str) -> None:
        doubling = 2 ** min(attempts - 1, 30)
        delay = min(self._config.retry_initial_s * doubling, self._config.retry_max_s)
        # Loud the first time, so a developer sees the receiver is down; quiet after that.
        log.log(logging.WARNING if attempts == 1 else logging.DEBUG,
                "fake stripe could not deliver event %s (%s): %s; re-sending in %.1fs",
                event.id, event.type, why, delay)
        self._store.mark_delivery(event.id, "pending", attempts=attempts,
                                  next_attempt_at=time.time() + delay, last_response=why)

    def _mark(self, event: StoredEvent, delivery: str, attempts: int, why: str) -> None:
        self._store.mark_delivery(event.id, delivery, attempts=attempts,
                                  next_attempt_at=0, last_response=why)
