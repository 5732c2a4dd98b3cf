"""Fixtures: the service over in-memory ports, its webhook receiver on a real socket."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from billing.adapters.webhook import create_public_app

from .harness import Reply, RunningApp, Service, committed_by_group, request
from .stripe_events import encode, stripe_signature

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"
NOW = 1_767_268_800  # the receiver's clock (2026-01-01 12:00 UTC), fixed: no test waits on it
WEBHOOK = "/api/payment/webhook"


class StripeSender:
    """Delivers events to the receiver the way Stripe does: signed JSON POSTs."""

    def __init__(self, port: int) -> None:
        self.port = port

    def send(self, event: dict[str, Any], *, secret: str = SECRET, timestamp: int = NOW) -> Reply:
        return self.send_raw(encode(event), stripe_signature(encode(event), secret, timestamp))

    def send_raw(
        self, body: bytes | Iterable[bytes], signature: str | None, **headers: str
    ) -> Reply:
        all_headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        if signature is not None:
            all_headers["Stripe-Signature"] = signature
        return request(self.port, "POST", WEBHOOK, body, all_headers)

    def signed(self, body: bytes) -> Reply:
        return self.send_raw(body, stripe_signature(body, SECRET, NOW))


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def public_app(service: Service) -> Iterator[RunningApp]:
    app = create_public_app(
        committed_by_group(service.apply_event, service.metrics), [SECRET, OLD_SECRET],
        service.metrics, now=lambda: float(NOW),
    )
    with RunningApp(app) as running:
        yield running


@pytest.fixture
def stripe(public_app: RunningApp) -> StripeSender:
    return StripeSender(public_app.port)
