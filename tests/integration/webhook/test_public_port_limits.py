"""The public port's connection limits on a real socket: the head deadline, the connection cap
(and the idle connections it reclaims), the body deadline, malformed requests; each refusal
counted and its log lines rate-limited.

Small limits are injected; nothing waits by sleeping: a test waits for the server to close a
socket (a blocking read with a generous deadline) or for a count, and never asserts how long
anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import pytest

from billing.adapters.metrics import Metrics
from billing.adapters.refusal_log import RefusalLog
from billing.adapters.webhook import ConnectionGuard, ConnectionLimits, create_public_app
from billing.adapters.webhook.connections import HELD_BYTES, MAX_WAIT_S, RefusalPace
from billing.adapters.webhook.public_app import ApplyEvent
from billing.domain.payment_events import PaymentEvent
from billing.use_cases.apply_payment_event import EventApplied
from tests.e2e.harness import wait_for

from .conftest import NOW, SECRET, StripeSender
from .harness import RunningApp, Service, committed_by_group
from .stripe_events import encode, stripe_signature

DEADLINE_S = 10.0  # how long a test waits for what must happen; never asserted on
HEAD = b"POST /api/payment/webhook HTTP/1.1\r\nHost: billing\r\nContent-Type: application/json\r\n"


def closed(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "billing_webhook_connections_closed_total", {"reason": reason})
    return value or 0.0


def limits(**overrides: float) -> ConnectionLimits:
    values = {"max_connections": 64, "header_timeout_s": 30.0, "keepalive_s": 30.0,
              "linger_s": 1.0} | overrides
    return ConnectionLimits(**values)  # type: ignore[arg-type]


class Port:
    """The public app behind a guard with `limits`, over the in-memory service."""

    def __init__(self, service: Service, limits: ConnectionLimits, *,
                 apply_event: ApplyEvent | None = None,
                 body_timeout_s: float = 10.0) -> None:
        self.metrics = service.metrics
        self.refusals = RefusalLog(logging.getLogger("billing.webhook"))
        self.guard = ConnectionGuard(limits, self.metrics, self.refusals)
        app = create_public_app(
            apply_event or committed_by_group(service.apply_event, self.metrics), [SECRET],
            self.metrics, refusals=self.refusals, body_timeout_s=body_timeout_s,
            now=lambda: float(NOW))
        self.running = RunningApp(app, self.guard)

    def __enter__(self) -> Port:
        self.running.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.running.__exit__(*exc_info)

    @property
    def port(self) -> int:
        return self.running.port

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)

    def wait_open(self, count: int) -> None:
        wait_for(lambda: self.guard.open_connections == count, DEADLINE_S,
                 f"{count} open connections")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after DEADLINE_S)."""
    sock.settimeout(DEADLINE_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def signed_request(body: bytes) -> bytes:
    signature = stripe_signature(body, SECRET, NOW)
    return (HEAD + f"Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def webhook_lines(caplog) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    with caplog.at_level(logging.INFO):
        yield lambda: [r for r in caplog.records if r.name in ("billing.webhook", "aiohttp.server")]


# -- the head deadline ---------------------------------------------------------------------------
def test_a_sender_trickling_its_head_is_cut_off_at_the_head_deadline(service, webhook_lines):
    with Port(service, limits(header_timeout_s=0.3)) as port, port.connect() as sock:
        sock.sendall(HEAD)
        gave_up = time.monotonic() + DEADLINE_S
        cut = False
        while not cut and time.monotonic() < gave_up:
            try:
                sock.sendall(b"X")  # one byte of a header that never ends
            except OSError:
                cut = True
                break
            readable, _, _ = select.select([sock], [], [], 0.05)  # paces the sender
            cut = bool(readable) and read_until_closed(sock) == b""
        assert cut, "a trickling sender kept its connection: the deadline moved with its bytes"
        port.wait_open(0)
    assert closed(service.metrics, "header_timeout") == 1
    [line] = webhook_lines()
    assert "no complete request head within 0.3 s" in line.getMessage()
    assert line.remote == "127.0.0.1"


def test_a_connection_that_never_sends_is_closed_at_the_head_deadline(service):
    with Port(service, limits(header_timeout_s=0.3)) as port, port.connect() as sock:
        assert read_until_closed(sock) == b""
    assert closed(service.metrics, "header_timeout") == 1


def test_a_slow_use_case_is_not_cut_off_by_the_head_deadline(service):
    async def slow(event: PaymentEvent) -> EventApplied:
        await asyncio.sleep(1.0)  # a slow database: longer than the head deadline
        return await asyncio.to_thread(service.apply_event, event)

    events = service.checkout("alice")
    with Port(service, limits(header_timeout_s=0.2), apply_event=slow) as port:
        assert StripeSender(port.port).send(events.completed()).status == 200
    assert service.balance("alice") == 1200
    assert closed(service.metrics, "header_timeout") == 0


def test_an_idle_keep_alive_connection_outlives_the_head_deadline_and_is_reused(service):
    with Port(service, limits(header_timeout_s=0.2, keepalive_s=30)) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port.port, timeout=DEADLINE_S)
        try:
            for _ in range(2):
                connection.request("GET", "/healthz")
                assert connection.getresponse().read() == b'{"status": "ok"}'
                threading.Event().wait(0.6)  # idle between requests: longer than the deadline
            connection.request("GET", "/healthz")  # still the same connection: no reconnect
            assert connection.getresponse().status == 200
            assert port.guard.open_connections == 1
        finally:
            connection.close()
    assert closed(service.metrics, "header_timeout") == 0


# -- the connection cap --------------------------------------------------------------------------
def test_past_the_cap_a_new_connection_is_closed_at_once_and_counted(service, webhook_lines):
    with Port(service, limits(max_connections=3)) as port:
        held = [port.connect() for _ in range(3)]
        port.wait_open(3)
        with port.connect() as refused:
            assert read_until_closed(refused) == b""
        assert closed(service.metrics, "over_limit") == 1
        assert port.guard.open_connections == 3
        held.pop().close()
        port.wait_open(2)
        assert StripeSender(port.port).send_raw(b"{}", None).status == 400  # served again
        for sock in held:
            sock.close()
    [line] = [r for r in webhook_lines() if r.outcome == "over_limit"]
    assert "3 connections are open (the limit)" in line.getMessage()
    assert service.metrics.registry.get_sample_value("billing_webhook_open_connections") == 0


def test_at_the_cap_the_oldest_idle_keep_alive_connection_makes_room(service):
    with Port(service, limits(max_connections=2)) as port:
        idle = http.client.HTTPConnection("127.0.0.1", port.port, timeout=DEADLINE_S)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read()  # answered, kept alive, now idle
        with port.connect() as silent:  # open, no request yet: not idle, never reclaimed
            port.wait_open(2)
            assert StripeSender(port.port).send_raw(b"{}", None).status == 400
            assert read_until_closed(idle.sock) == b""  # the idle one was closed for it
            assert closed(service.metrics, "idle_reclaimed") == 1
            assert closed(service.metrics, "over_limit") == 0
            silent.sendall(b"GET /healthz HTTP/1.1\r\nHost: billing\r\n\r\n")
            assert silent.recv(65536).startswith(b"HTTP/1.1 200 ")  # left alone
        idle.close()


# -- the body deadline --------------------------------------------------------------------------
def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_is_closed(service):
    body = encode(service.checkout("alice").completed())
    with Port(service, limits(linger_s=0.2), body_timeout_s=0.3) as port, \
            port.connect() as sock:
        sock.sendall(signed_request(body)[: -len(body) + 10])  # the head, 10 bytes of body
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error": "the body did not arrive within 0.3 s"}' in answer
    assert b"Connection: close" in answer
    assert service.inbox() == {} and service.ledger() == []
    assert service.metrics.registry.get_sample_value(
        "billing_webhook_events_total", {"type": "unknown", "outcome": "rejected"}) == 1


def test_a_sender_hanging_up_mid_body_is_counted_without_a_traceback(service, webhook_lines):
    with Port(service, limits()) as port:
        with port.connect() as sock:
            sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\n" + b"{" * 10)
        wait_for(lambda: service.metrics.registry.get_sample_value(
            "billing_webhook_events_total", {"type": "unknown", "outcome": "rejected"}),
            DEADLINE_S, "the hang-up to be counted")
    [line] = webhook_lines()
    assert line.getMessage() == "webhook refused (400): the sender hung up before its body arrived"
    assert line.levelno == logging.WARNING and not line.exc_info


# -- the refusal pace ----------------------------------------------------------------------------
def test_the_pace_lets_a_second_s_worth_through_then_spaces_refusals_out():
    pace = RefusalPace(10)
    assert [pace.wait(100.0) for _ in range(10)] == [0.0] * 10  # the burst
    assert [pace.wait(100.0) for _ in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert pace.wait(102.4) == 0.0  # time has paid the debt back
    assert max(pace.wait(103.0) for _ in range(1000)) == pytest.approx(MAX_WAIT_S)


def read_answer(reader: BinaryIO) -> tuple[int, bytes]:
    """One HTTP/1.1 answer (status, body) off a keep-alive socket's reader."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def test_past_the_pace_a_refused_sender_waits_and_what_it_sent_meanwhile_is_kept(service):
    events = service.checkout("alice")
    forged = HEAD + b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 2\r\n\r\n{}"
    with Port(service, limits(refusals_per_s=1)) as port, port.connect() as sock, \
            sock.makefile("rb") as answers:
        sock.sendall(forged)
        assert read_answer(answers)[0] == 400  # within the burst
        sock.sendall(forged)
        assert read_answer(answers)[0] == 400  # past it: this connection now waits its turn
        sock.sendall(forged + signed_request(encode(events.completed())))  # held meanwhile
        assert read_answer(answers)[0] == 400
        status, body = read_answer(answers)
        assert status == 200 and b'"applied"' in body  # nothing sent during the wait is lost
    assert service.balance("alice") == 1200
    assert (service.metrics.registry.get_sample_value("billing_webhook_refusals_slowed_total")
            or 0) >= 1
    assert service.metrics.registry.get_sample_value(
        "billing_webhook_events_total", {"type": "unknown", "outcome": "rejected_signature"}) == 3


def test_a_waiting_connection_that_sends_too_much_is_closed(service):
    forged = HEAD + b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 2\r\n\r\n{}"
    with Port(service, limits(refusals_per_s=0.2)) as port, port.connect() as sock, \
            sock.makefile("rb") as answers:
        sock.sendall(forged + forged)
        assert read_answer(answers)[0] == read_answer(answers)[0] == 400  # then: a wait
        with contextlib.suppress(OSError):  # closed while it sends: also what this checks
            sock.sendall(b"x" * (HELD_BYTES + 1))
        with contextlib.suppress(ConnectionResetError):  # closed with bytes unread: a reset
            assert answers.read() == b""
    assert closed(service.metrics, "held_overflow") == 1


# -- malformed requests --------------------------------------------------------------------------
def test_malformed_requests_are_counted_and_aiohttp_s_error_lines_rate_limited(
    service, webhook_lines
):
    with Port(service, limits()) as port:
        for _ in range(100):
            with port.connect() as sock:
                sock.sendall(b"POST /api/payment/webhook HTTP/1.1\r\nno colon here\r\n\r\n")
                assert read_until_closed(sock).split(b" ", 2)[1] == b"400"
    assert closed(service.metrics, "bad_http") == 100
    lines = [r for r in webhook_lines() if r.name == "aiohttp.server"]
    assert 1 <= len(lines) <= 5
    port.refusals.flush()
    [summary] = [r for r in webhook_lines() if "more refused" in r.getMessage()]
    assert summary.getMessage().startswith(f"{100 - len(lines)} more refused in the last")
    assert "reason bad_http, top remote addresses 127.0.0.1" in summary.getMessage()
