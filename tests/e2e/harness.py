"""Start the service as `billing serve` does, on free ports, and talk to it.

`start_service()` builds the same container and runs the same `BillingServer` as the CLI, in a
thread with its own event loop (so a test can reach into the container and its in-memory
gateway), on SQLite in a temporary directory. Nothing waits by sleeping: every wait polls a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from dependency_injector import providers
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.adapters.grpc_api.errors import error_info
from billing.adapters.memory import InMemoryPaymentGateway
from billing.container import Container, build_container
from billing.ports import CheckoutParams, CheckoutSnapshot
from billing.server import BillingServer
from billing.settings import Settings, parse
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc

T = TypeVar("T")

START_TIMEOUT_S = 15.0
ADMIN_TOKEN = "admin-token-0123456789"
SHOP_TOKEN = "shop-token-0123456789"
SHOP_RPCS = ("GetBalance", "SpendCoins", "CreateCheckoutSession", "GetPaymentStatus")
API_TOKENS = f"admin:{ADMIN_TOKEN},shop:{SHOP_TOKEN}:{'+'.join(SHOP_RPCS)}"
SUCCESS_URL = "https://game.example/paid?session={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://game.example/cancelled"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def service_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Variables for a service on free ports with its state under `tmp_path`."""
    env = {
        "BILLING_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'billing.db'}",
        "BILLING_GRPC_PORT": str(free_port()),
        "BILLING_HTTP_PORT": str(free_port()),
        "BILLING_ADMIN_PORT": str(free_port()),
        "BILLING_FAKE_STRIPE_PORT": str(free_port()),
        "BILLING_FAKE_STRIPE_STATE": str(tmp_path / "var" / "stripe-fake.db"),
        "BILLING_SHUTDOWN_GRACE_S": "5",
    }
    env.update(overrides)
    return env


class ControllableGateway(InMemoryPaymentGateway):
    """The in-memory Stripe, able to be slow, to hold calls until released, or to break like a
    bug would. It runs on the service's event loop; the test drives it from its own thread."""

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0  # before Stripe makes the session
        self.answer_late_s = 0.0  # after it made it: the answer is what is slow
        self.crash: Exception | None = None
        self.entered = threading.Event()
        self.holding = False  # calls wait until release()
        self.waiting = 0  # calls waiting now
        self._gate: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot:
        self.entered.set()
        if self.holding:
            await self._held()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.crash is not None:
            raise self.crash
        snapshot = await super().create_checkout(params)
        if self.answer_late_s:
            await asyncio.sleep(self.answer_late_s)
        return snapshot

    async def _held(self) -> None:
        if self._gate is None:
            self._gate = (asyncio.get_running_loop(), asyncio.Event())
        self.waiting += 1
        try:
            await self._gate[1].wait()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        """Let every held call go on (thread-safe), and hold no more."""
        self.holding = False
        if self._gate is not None:
            loop, gate = self._gate
            loop.call_soon_threadsafe(gate.set)
        self._gate = None


@dataclass
class RunningService:
    settings: Settings
    container: Container
    server: BillingServer
    thread: threading.Thread
    outcome: dict[str, Any]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def admin_base(self) -> str:
        return f"http://127.0.0.1:{self.settings.admin_port}"

    @contextmanager
    def stub(
        self, credentials: grpc.ChannelCredentials | None = None, target: str | None = None
    ) -> Iterator[Any]:
        target = target or self.grpc_target
        channel = (grpc.secure_channel(target, credentials) if credentials is not None
                   else grpc.insecure_channel(target))
        with channel:
            yield billing_pb2_grpc.BillingServiceStub(channel)

    def stop(self, timeout: float = 20.0) -> int:
        self.server.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop in time"
        code: int = self.outcome["code"]
        return code


def start_service(
    env: Mapping[str, str],
    *,
    gateway: InMemoryPaymentGateway | None = None,
    configure: Callable[[Container], object] | None = None,
) -> RunningService:
    """Run the service; with `gateway`, that in-memory Stripe replaces the real SDK (behind the
    same bound on calls in flight)."""
    settings = parse(env)
    container = build_container(settings)
    if gateway is not None:
        container.stripe.override(providers.Object(gateway))
    if configure is not None:
        configure(container)
    server = BillingServer(container)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["code"] = asyncio.run(server.run(handle_signals=False))
        except BaseException as error:  # surfaced by the waiting test
            outcome["error"] = error
            outcome["code"] = -1

    thread = threading.Thread(target=run, name="billing-serve", daemon=True)
    thread.start()
    wait_for(lambda: server.started.is_set() or not thread.is_alive(), START_TIMEOUT_S,
             "the service to start")
    if not server.started.is_set():
        raise AssertionError(f"the service did not start: {outcome}")
    return RunningService(settings, container, server, thread, outcome)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def reason_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata) of a failed call; asserts one ErrorInfo."""
    info = error_info(error)
    assert info is not None, f"no ErrorInfo in {error}"
    assert info.domain == "billing.v1"
    assert isinstance(error, grpc.Call)
    return error.code(), info.reason, dict(info.metadata)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def http_post(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float = 5.0
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def pay_on_fake_checkout_page(checkout_url: str, card: str = "4242424242424242") -> int:
    """Pay on the fake Stripe's checkout page as a buyer does; the HTTP status (200: paid, and
    the fake sends its signed webhook)."""
    status, page = http_get(checkout_url)
    assert status == 200, page[:500]
    body = urllib.parse.urlencode({"method": "card", "card_number": card}).encode()
    status, _ = http_post(checkout_url, body,
                          {"Content-Type": "application/x-www-form-urlencoded"})
    return status


def signed_checkout_completed(
    secret: str, session: CheckoutSnapshot, *, event_id: str
) -> tuple[bytes, dict[str, str]]:
    """A `checkout.session.completed` (paid) event as Stripe would sign and send it."""
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": {
            "object": "checkout.session",
            "id": session.session_id,
            "payment_status": "paid",
            "status": "complete",
            "payment_intent": session.payment_intent_id,
            "amount_total": session.amount.amount_minor,
            "currency": session.amount.currency.lower(),
            "metadata": {"payment_id": session.payment_id},
        }},
    }
    body = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    headers = {"Content-Type": "application/json",
               "Stripe-Signature": f"t={timestamp},v1={signature.hexdigest()}"}
    return body, headers


def create_request(user_id: str, package_id: str = "coins_500", **fields: str) -> Any:
    values = {"user_id": user_id, "package_id": package_id, "success_url": SUCCESS_URL,
              "cancel_url": CANCEL_URL, "request_id": f"req-{user_id}"}
    values.update(fields)
    return pb.CreateCheckoutSessionRequest(**values)


def assert_serving(service: RunningService) -> None:
    """gRPC health SERVING (overall and BillingService), /healthz and /readyz 200."""
    with grpc.insecure_channel(service.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "billing.v1.BillingService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert http_get(f"{service.http_base}/healthz")[0] == 200
    assert http_get(f"{service.admin_base}/readyz")[0] == 200


def module_service(
    tmp_path_factory: Any, gateway: ControllableGateway, **env: str
) -> Iterator[RunningService]:
    """A service for a module: tokens on, SQLite, the in-memory Stripe (no fake started), and
    `env` on top; it must stop cleanly."""
    running = start_service(service_env(
        tmp_path_factory.mktemp("service"),
        **{"BILLING_API_TOKENS": API_TOKENS,
           "STRIPE_API_BASE": "http://127.0.0.1:9",  # never called: the gateway is in memory
           **env},
    ), gateway=gateway)
    yield running
    assert running.stop() == 0
