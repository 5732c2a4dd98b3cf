"""What a running fake holds: its store, engine and webhook sender, opened on app startup."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from billing.devtools.stripe_fake.config import FakeStripeConfig
from billing.devtools.stripe_fake.engine import FakeStripe
from billing.devtools.stripe_fake.store import FakeStripeStore
from billing.devtools.stripe_fake.webhooks import WebhookSender


@dataclass
class ApiStats:
    """API calls answered, and how many were in flight at once (what a client's pool allowed)."""

    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def started(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finished(self) -> None:
        self.in_flight -= 1
        self.calls += 1


class FakeStripeRuntime:
    def __init__(self, config: FakeStripeConfig) -> None:
        self.config = config
        self._engine: FakeStripe | None = None
        self._sender: WebhookSender | None = None
        self.stats = ApiStats()

    def open(self) -> None:
        self._engine = FakeStripe(FakeStripeStore(self.config.state_path), self.config)
        self._sender = WebhookSender(self._engine, self.config)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.store.close()
        self._engine = self._sender = None

    @property
    def engine(self) -> FakeStripe:
        if self._engine is None:
            raise RuntimeError("the fake Stripe app has not started")
        return self._engine

    @property
    def store(self) -> FakeStripeStore:
        return self.engine.store

    @property
    def sender(self) -> WebhookSender:
        if self._sender is None:
            raise RuntimeError("the fake Stripe app has not started")
        return self._sender


RUNTIME = web.AppKey("fake_stripe", FakeStripeRuntime)
