"""Running the fake Stripe and a webhook receiver on real loopback sockets, for the tests.

Both live on one event loop in a background thread; tests drive them from the main thread with
the real SDK (through StripePaymentGateway) and plain urllib, and wait on conditions, never on
sleeps. The receiver checks each signature itself (HMAC-SHA256 over "t.payload") and answers
with the statuses a test queues up (200 once the queue is empty).

(This folder has no __init__.py on purpose: a package named `stripe` would shadow the SDK.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from billing.adapters.stripe_gateway import StripePaymentGateway
from billing.devtools.stripe_fake import FakeStripeConfig, run_fake
from billing.domain.money import Money
from billing.ports import CheckoutParams

T = TypeVar("T")

SECRET = "whsec_test_harness_secret"
API_KEY = "sk_test_harness_key_1234"
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def poll_until(check: Callable[[], T | None], timeout: float = WAIT_S, what: str = "") -> T:
    """Bounded polling of a condition that has no event to wait on (state seen over HTTP)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        threading.Event().wait(0.02)


class LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stripe-tests",
                                        daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.close()


# -- the webhook receiver -------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    event: dict[str, Any]
    signature_ok: bool
    answered: int

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def object(self) -> dict[str, Any]:
        return dict(self.event["data"]["object"])


def signature_is_valid(payload: bytes, header: str, secret: str, tolerance_s: int = 300) -> bool:
    """Stripe's scheme, written out independently of the fake's code."""
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    timestamps = [value for key, value in parts if key == "t"]
    signatures = [value for key, value in parts if key == "v1"]
    if len(timestamps) != 1 or not signatures or not timestamps[0].isdigit():
        return False
    if abs(time.time() - int(timestamps[0])) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), timestamps[0].encode() + b"." + payload,
                        hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


@dataclass
class Receiver:
    secret: str = SECRET
    answers: list[int] = field(default_factory=list)  # statuses to answer first, in order
    deliveries: list[Delivery] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.read()
        valid = signature_is_valid(payload, request.headers.get("Stripe-Signature", ""),
                                   self.secret)
        with self._changed:
            status = self.answers.pop(0) if self.answers else 200
            self.deliveries.append(Delivery(json.loads(payload), valid, status))
            self._changed.notify_all()
        return web.Response(status=status, text="{}", content_type="application/json")

    def accepted(self) -> list[Delivery]:
        with self._changed:
            return [d for d in self.deliveries if 200 <= d.answered < 300]

    def wait_for_types(self, *types: str, timeout: float = WAIT_S) -> list[Delivery]:
        """Wait until the accepted deliveries are exactly these types (more arriving fails)."""
        wanted = list(types)

        def arrived() -> bool:
            return len([d for d in self.deliveries if 200 <= d.answered < 300]) >= len(wanted)

        with self._changed:
            if not self._changed.wait_for(arrived, timeout):
                got = [d.type for d in self.deliveries]
                raise AssertionError(f"expected {wanted}, received {got}")
        accepted = self.accepted()
        assert [d.type for d in accepted] == wanted
        assert all(d.signature_ok for d in accepted)
        return accepted

    def wait_for(self, check: Callable[[list[Delivery]], bool],
                 timeout: float = WAIT_S) -> list[Delivery]:
        with self._changed:
            if not self._changed.wait_for(lambda: check(list(self.deliveries)), timeout):
                raise AssertionError(f"received {[d.type for d in self.deliveries]}")
            return list(self.deliveries)


class BlockingGateway:
    """The async StripePaymentGateway, called from a test's thread: each call runs on the
    harness's loop (where its HTTP session lives) and is waited for."""

    def __init__(self, gateway: StripePaymentGateway, loop: LoopThread) -> None:
        self.gateway = gateway
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.gateway, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs), timeout=WAIT_S * 3)

        return call


# -- the fake Stripe ------------------------------------------------------------------------
class FakeStripeServer:
    """One fake on its own port; stop() and start() again to restart it on the same state."""

    def __init__(self, loop: LoopThread, state_path: str, webhook_url: str,
                 **options: Any) -> None:
        self._loop = loop
        self.state_path = state_path
        self.webhook_url = webhook_url
        self.options = {"refund_failure_delay_s": 0.05, **options}
        self._runner: web.AppRunner | None = None
        self._gateways: list[StripePaymentGateway] = []
        self.port = 0

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeStripeServer:
        self.port = free_port()
        options = dict(self.options)
        secret = options.pop("webhook_secret", SECRET)
        config = FakeStripeConfig(self.state_path, self.webhook_url, secret,
                                  public_url=self.api_base, **options)
        self._runner = self._loop.run(run_fake(config, "127.0.0.1", self.port))
        return self

    def stop(self) -> None:
        for gateway in self._gateways:  # their HTTP sessions
            self._loop.run(gateway.close())
        self._gateways.clear()
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
            self._runner = None

    def gateway(self, api_key: str = API_KEY, **options: Any) -> BlockingGateway:
        gateway = StripePaymentGateway(api_key, api_base=self.api_base, **options)
        self._gateways.append(gateway)
        return BlockingGateway(gateway, self._loop)

    # -- raw HTTP, for what the gateway does not show -------------------------------------
    def api(self, method: str, path: str, form: dict[str, str] | None = None, *,
            key: str | None = API_KEY, headers: dict[str, str] | None = None) -> Response:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return http(method, self.api_base + path, form, sent)

    def http_post_dev(self, path: str, **form: str) -> Any:
        answer = http("POST", self.api_base + path, form, {})
        assert answer.status == 200, answer.text
        return answer.json()

    def page(self, session_id: str, step: str = "", **form: str) -> Response:
        path = f"/c/pay/{session_id}" + (f"/{step}" if step else "")
        return http("POST" if form else "GET", self.api_base + path, form or None, {})


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def http(method: str, url: str, form: dict[str, str] | None,
         headers: dict[str, str]) -> Response:
    data = None
    if form is not None:
        if method == "GET":
            url += "?" + urlencode(form)
        else:
            data = urlencode(form).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
            return Response(answer.status, dict(answer.headers), answer.read().decode())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read().decode())


def checkout_params(payment_id: str = "", **changes: Any) -> CheckoutParams:
    values: dict[str, Any] = {
        "payment_id": payment_id or f"pay_{time.monotonic_ns()}",
        "user_id": "user-42",
        "package_id": "coins_100",
        "coins": 100,
        "bonus": 10,
        "amount": Money("USD", 999),
        "product_name": "100 coins",
        "description": "100 coins + 10 bonus",
        "success_url": "https://app.example/paid?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example/cancelled",
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0),
    }
    values.update(changes)
    return CheckoutParams(**values)
