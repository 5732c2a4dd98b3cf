"""Bounds on the public port's connections: how many, how long a request head may take, how
long an idle one is kept, how fast refused senders are answered, and how loudly a malformed
request is logged.

aiohttp has no timeout for reading a request head (it had `slow_request_timeout` long ago). Its
keep-alive timer, which recent versions also start when a connection opens, is the only bound,
and it is meant for idle connections: minutes, not seconds. So the public port's listener is
given a guard around aiohttp's protocol, built only on asyncio's Protocol interface and two
public aiohttp hooks (`Server.request_factory`, called once a request head is parsed, and the
app's `on_response_prepare` signal, sent when its answer starts):

- the cap: past `max_connections` open connections, a new one is closed at once, before any
  byte is read (first, the oldest idle keep-alive connection is closed to make room, as nginx
  does, so idle connections never lock out new ones);
- the head deadline: a connection must deliver a complete request head within
  `header_timeout_s` of opening, and of the first byte of each later request; the deadline is
  never extended by the bytes a slow sender trickles in;
- keep-alive: an idle connection is kept `keepalive_s` (aiohttp's own timer), and an unread
  request body is drained for at most `linger_s` before the connection is closed;
- the refusal pace: past `refusals_per_s` refused requests (4xx answers) a second, after a
  second's burst, the connection of each further one waits its turn before its next request is
  read. A keep-alive flood of forged requests then costs a bounded share of the one event loop,
  whatever its rate, and verified webhooks (never refused) are not slowed by it. What arrives
  during the wait is held in the guard, up to HELD_BYTES (aiohttp's own flow control is left
  alone); a waiting connection counts as idle for the cap.

Each closing is counted in `billing_webhook_connections_closed_total{reason}` and its log line
goes through the refusal log. The body's own deadline is the receiver's (public_app.py): it is
the handler that reads the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from billing.adapters.metrics import Metrics
from billing.adapters.refusal_log import RefusalLog

log = logging.getLogger("billing.webhook")

OVER_LIMIT = "over_limit"
HEADER_TIMEOUT = "header_timeout"
BAD_HTTP = "bad_http"
IDLE_RECLAIMED = "idle_reclaimed"
HELD_OVERFLOW = "held_overflow"

PACE_BURST_S = 1.0  # refusals answered at full speed before the pace applies: a second's worth
MAX_WAIT_S = 5.0  # the longest a refused sender's connection is made to wait
HELD_BYTES = 64 * 1024  # what a waiting connection may send meanwhile (a request or two)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    keepalive_s: float
    linger_s: float
    refusals_per_s: float = 0.0  # 0: no pace


class ConnectionGuard:
    """Serves an aiohttp app with the limits above: `runner(app)`, `await runner.setup()`, then
    `site(runner, host, port).start()`. One guard per listener."""

    def __init__(self, limits: ConnectionLimits, metrics: Metrics, refusals: RefusalLog) -> None:
        self.limits = limits
        self._metrics = metrics
        self._refusals = refusals
        self._open = 0
        # Connections waiting for a next request that has not begun, oldest first: the ones
        # closed to make room at the cap.
        self._idle: dict[_GuardedConnection, None] = {}
        self._pace = RefusalPace(limits.refusals_per_s) if limits.refusals_per_s > 0 else None

    @property
    def open_connections(self) -> int:
        return self._open

    def runner(self, app: web.Application, **kwargs: Any) -> web.AppRunner:
        """An AppRunner for `app` (call before setup: it hooks the app's answers)."""
        app.on_response_prepare.append(self._answered)
        return web.AppRunner(
            app, keepalive_timeout=self.limits.keepalive_s, lingering_time=self.limits.linger_s,
            logger=_ProtocolErrorLog(self), **kwargs,
        )

    def site(self, runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool = False
             ) -> web.BaseSite:
        """`reuse_port`: for the workers of one `billing serve` only (billing/supervisor.py)."""
        return _GuardedSite(runner, host, port, self, reuse_port)

    # -- the protocol factory ---------------------------------------------------------------
    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        make_request = server.request_factory

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                            task: Any) -> web.BaseRequest:
            connection = _guarded(protocol.transport)
            if connection is not None:
                connection.head_received()
            return make_request(message, payload, protocol, writer, task)

        # aiohttp's handlers read it when they are made: set before the first connection.
        server.request_factory = request_factory

        def factory() -> asyncio.Protocol:
            if self._open >= self.limits.max_connections and not self._reclaim_idle():
                return _OverTheLimit(self)
            self._open += 1
            self._metrics.webhook_connections.inc()
            return _GuardedConnection(server(), self)

        return factory

    def _reclaim_idle(self) -> bool:
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        self._closed_by_us(IDLE_RECLAIMED)
        oldest.close()
        return True

    # -- what connections report ------------------------------------------------------------
    async def _answered(self, request: web.Request, response: web.StreamResponse) -> None:
        connection = _guarded(request.transport)
        if connection is None:
            return
        connection.answered()
        if self._pace is not None and 400 <= response.status < 500:  # the sender's fault
            wait = self._pace.wait(asyncio.get_running_loop().time())
            if wait > 0:
                self._metrics.webhook_refusals_slowed.inc()
                connection.hold(wait)

    def _became_idle(self, connection: _GuardedConnection) -> None:
        self._idle[connection] = None

    def _became_busy(self, connection: _GuardedConnection) -> None:
        self._idle.pop(connection, None)

    def _released(self, connection: _GuardedConnection) -> None:
        self._idle.pop(connection, None)
        self._open -= 1
        self._metrics.webhook_connections.dec()

    def _refused(self, reason: str, peer: str | None, message: str, *args: object) -> None:
        self._closed_by_us(reason)
        if self._refusals.admit(reason, peer):
            log.warning(message, *args, extra={"outcome": reason, "remote": peer})

    def _bad_request(self, peer: str | None) -> bool:
        """aiohttp answers 400 and closes; True if its log line may be written."""
        self._closed_by_us(BAD_HTTP)
        return self._refusals.admit(BAD_HTTP, peer)

    def _closed_by_us(self, reason: str) -> None:
        self._metrics.webhook_connections_closed.labels(reason).inc()


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a head deadline and the refusal pace."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._awaiting_head = True
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._open = True
        self._hold: asyncio.TimerHandle | None = None  # set while the connection waits its turn
        self._held: list[bytes] = []
        self._held_bytes = 0

    # -- asyncio.Protocol, passed on ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._expect_head()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._hold is not None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > HELD_BYTES:
                self._guard._closed_by_us(HELD_OVERFLOW)
                self.close()
            return
        if self._awaiting_head and self._deadline is None:  # a next request begins
            self._guard._became_busy(self)
            self._expect_head()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        for timer in (self._timer, self._hold):
            if timer is not None:
                timer.cancel()
        self._timer = self._hold = None
        self._held.clear()
        if self._open:
            self._open = False
            self._guard._released(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the head deadline ----------------------------------------------------------------
    def head_received(self) -> None:
        self._awaiting_head = False
        self._deadline = None

    def answered(self) -> None:
        """The answer starts: the next request's deadline starts with its first byte."""
        self._awaiting_head = True
        self._deadline = None
        self._guard._became_idle(self)

    def hold(self, seconds: float) -> None:
        """Read nothing more from this connection for `seconds` (a refused sender's turn)."""
        if self._hold is not None:
            self._hold.cancel()
        self._hold = asyncio.get_running_loop().call_later(seconds, self._release)

    def _release(self) -> None:
        self._hold = None
        held, self._held, self._held_bytes = b"".join(self._held), [], 0
        if held and self._transport is not None and not self._transport.is_closing():
            self.data_received(held)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._open:  # its slot is free now, whenever asyncio reports the loss
            self._open = False
            self._guard._released(self)

    def _expect_head(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._guard.limits.header_timeout_s
        if self._timer is None:  # one timer at a time, moved lazily (cheap under a flood)
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check_deadline)
            return
        self._guard._refused(
            HEADER_TIMEOUT, _peer(self._transport),
            "webhook connection from %s closed: no complete request head within %g s",
            _peer(self._transport), self._guard.limits.header_timeout_s,
        )
        self.close()


class RefusalPace:
    """The generic cell rate algorithm: `per_s` refusals a second after a burst of PACE_BURST_S
    worth; `wait(now)` is how long the connection of the refusal made at `now` must wait."""

    def __init__(self, per_s: float) -> None:
        self._interval = 1.0 / per_s
        self._due = 0.0  # when the refusals counted so far would all have been answered

    def wait(self, now: float) -> float:
        self._due = min(max(self._due, now) + self._interval, now + PACE_BURST_S + MAX_WAIT_S)
        wait = self._due - now - PACE_BURST_S
        return wait if wait >= 0.001 else 0.0  # (a wait shorter than a millisecond is none)


class _OverTheLimit(asyncio.Protocol):
    """A connection past the cap: closed before anything is read."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = _peer(transport)
        transport.abort()  # type: ignore[attr-defined]
        self._guard._refused(
            OVER_LIMIT, peer,
            "webhook connection from %s refused: %d connections are open (the limit)",
            peer, self._guard.limits.max_connections,
        )


class _GuardedSite(web.BaseSite):
    """A TCP listener whose connections go through the guard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 reuse_port: bool) -> None:
        super().__init__(runner)
        self._host, self._port, self._guard = host, port, guard
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "set the runner up first"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.protocol_factory(server), self._host, self._port,
            reuse_port=self._reuse_port
        )


class _ProtocolErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, except its line for a malformed request (ERROR with a traceback,
    one per request: a stranger's pen on our disk), which is counted and rate-limited."""

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._guard = guard

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), HttpProcessingError):
            peer = str(args[0]) if args else None
            if not self._guard._bad_request(peer):
                return
        super().log(level, msg, *args, **kwargs)


def _guarded(transport: asyncio.BaseTransport | None) -> _GuardedConnection | None:
    if transport is None:
        return None
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, _GuardedConnection) else None


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None
