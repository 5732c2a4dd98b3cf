"""Server interceptors (grpc.aio) for BillingService: bearer auth, and observation (log,
metrics, errors, the caller's deadline for onward calls).

Only `/billing.v1.BillingService/` methods are intercepted: health and reflection pass untouched
and need no token. `server_interceptors()` returns both in the order they must run; the
observing one is outermost, so a refused call is logged, counted and mapped like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import grpc

from billing.adapters import deadlines
from billing.adapters.grpc_api.errors import CallRefused, internal_status, status_for
from billing.adapters.metrics import Metrics
from billing.adapters.refusal_log import RefusalLog
from billing.domain.errors import BillingError, InvalidField
from billing.domain.feed import EVERY_USER_SCOPE

SERVICE = "billing.v1.BillingService"
_PREFIX = f"/{SERVICE}/"
ANONYMOUS = "anonymous"

log = logging.getLogger("billing.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What arrived instead of a request message: bytes that do not decode as one."""

    error: str


Behavior = Callable[[Any, Context], Awaitable[Any]]
# A server-streaming handler: an async generator of the responses (the style grpc.aio runs).
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


@dataclass(slots=True)
class CallState:
    """What the edge learned about the current call, shared by the interceptors and servicer."""

    rpc: str
    caller: str = ANONYMOUS


_current: ContextVar[CallState | None] = ContextVar("billing_rpc_call", default=None)


def current_caller() -> str:
    """The authenticated caller's name of the RPC running in this task."""
    state = _current.get()
    return state.caller if state else ANONYMOUS


@dataclass(frozen=True, slots=True)
class Caller:
    """A configured caller: its name, the digest of its token, the RPCs it may call."""

    name: str
    token_digest: bytes
    rpcs: frozenset[str] | None  # None: every RPC

    @classmethod
    def of(cls, name: str, token: str, rpcs: frozenset[str] | None = None) -> Caller:
        return cls(name, _digest(token), rpcs)


def _digest(token: str) -> bytes:
    # Equal-length digests: compare_digest's time depends on neither value nor length.
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Checks `authorization: Bearer <token>` against every configured token in constant time."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self._callers = tuple(callers)

    def authenticate(
        self, rpc: str, metadata: Iterable[tuple[str, str | bytes]], scope: str | None = None
    ) -> str:
        """The caller's name, if its token may call `rpc` (or, when given, the narrower or
        wider `scope` the request needs: every user's feed needs StreamAllTransactions)."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None or (isinstance(header, str) and not header.strip()):
            raise CallRefused(grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN",
                              "missing bearer token: send `authorization: Bearer <token>`")
        scheme, _, token = (header if isinstance(header, str) else "").strip().partition(" ")
        presented = _digest(token.strip())
        found: Caller | None = None
        for caller in self._callers:  # no early exit: every token is compared
            if hmac.compare_digest(presented, caller.token_digest) and found is None:
                found = caller
        if scheme.lower() != "bearer" or not token.strip() or found is None:
            raise CallRefused(grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN",
                              "invalid bearer token")
        needed = scope or rpc
        if found.rpcs is not None and needed not in found.rpcs:
            what = rpc if needed == rpc else f"{rpc} (it needs the scope {needed})"
            raise CallRefused(grpc.StatusCode.PERMISSION_DENIED, "RPC_NOT_ALLOWED",
                              f"caller {found.name!r} may not call {what}", caller=found.name)
        return found.name


class _BillingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of BillingService, unary (`_wrap`) and server-streaming
    (`_wrap_stream`); leaves everything else alone (health, reflection).

    Handlers are registered once, so each method is wrapped once and the wrapper reused.
    """

    _wrapped: dict[str, grpc.RpcMethodHandler]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_PREFIX):
            return handler
        rpc = method[len(_PREFIX):]
        deserializer = self._deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:  # a coroutine function on grpc.aio
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._wrap(rpc, cast(Behavior, handler.unary_unary)),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:  # an async generator function
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(rpc, cast(StreamBehavior, handler.unary_stream)),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        else:  # client or bidirectional streaming: not in the contract
            return handler
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, rpc: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    def _wrap_stream(self, rpc: str, behavior: StreamBehavior) -> StreamBehavior:
        raise NotImplementedError

    def _deserializer(self, deserialize: Deserializer | None) -> Deserializer | None:
        return deserialize


class AuthInterceptor(_BillingInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._wrapped = {}

    def _wrap(self, rpc: str, behavior: Behavior) -> Behavior:
        async def authenticated(request: Any, context: Context) -> Any:
            self._authenticate(rpc, context)
            return await behavior(request, context)

        return authenticated

    def _wrap_stream(self, rpc: str, behavior: StreamBehavior) -> StreamBehavior:
        async def authenticated(request: Any, context: Context) -> AsyncIterator[Any]:
            self._authenticate(rpc, context, _scope_of(rpc, request))  # before the first message
            async for response in behavior(request, context):
                yield response

        return authenticated

    def _authenticate(self, rpc: str, context: Context, scope: str | None = None) -> None:
        """Raises CallRefused; names the caller in the call's state either way."""
        state = _current.get()
        try:
            caller = self._authenticator.authenticate(
                rpc, context.invocation_metadata() or (), scope)
        except CallRefused as refused:
            if state is not None and refused.caller:
                state.caller = refused.caller  # the log says who tried
            raise
        if state is not None:
            state.caller = caller


def _scope_of(rpc: str, request: Any) -> str | None:
    """The scope a request needs beyond its RPC's name: every user's feed (no user_id)."""
    if rpc == "StreamTransactions" and not getattr(request, "user_id", ""):
        return EVERY_USER_SCOPE
    return None


class ObservingInterceptor(_BillingInterceptor):
    """One log line and two metrics per call; every exception mapped once to a rich status.

    Except that the auth refusals' lines (CallRefused: no or a wrong token, an RPC outside the
    token's scopes), which anyone who reaches the port can cause, go through `refusals`: a few
    per reason and minute, then a summary. They are all counted in billing_rpc_total.
    """

    def __init__(self, metrics: Metrics, refusals: RefusalLog | None = None) -> None:
        self._metrics = metrics
        self._refusals = refusals
        self._wrapped = {}
        self._counters: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def _observe(
        self,
        rpc: str,
        request: Any,
        call: _Call,
        code: grpc.StatusCode,
        reason: str,
        failure: Exception | None,
        context: Context,
        *,
        refusal: bool = False,
        streaming: bool = False,
    ) -> None:
        elapsed = time.perf_counter() - call.started
        counted = self._counters.get((rpc, code))
        if counted is None:  # labels() takes a lock and builds a key: once per (rpc, code)
            counted = self._counters[rpc, code] = (
                self._metrics.rpcs.labels(rpc, code.name),
                self._metrics.rpc_latency.labels(rpc),
            )
        counted[0].inc()
        if not streaming:
            counted[1].observe(elapsed)
        level = logging.ERROR if failure is not None else logging.INFO
        # (the fields cost more than the call's own work: built only for a line written)
        if log.isEnabledFor(level) and (not refusal or self._admit(reason, context)):
            fields = _call_fields(rpc, request, call.state.caller, code, elapsed)
            if reason:
                fields["reason"] = reason
            log.log(level, "rpc %s %s", rpc, code.name, extra=fields, exc_info=failure)

    def _deserializer(self, deserialize: Deserializer | None) -> Deserializer | None:
        """Bytes that are not the request message become an Undecodable, answered below like
        any bad input (grpc.aio would log a traceback and answer UNKNOWN)."""
        if deserialize is None:
            return None
        parse: Deserializer = deserialize

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as error:  # protobuf's DecodeError, or anything a parser raises
                return Undecodable(str(error)[:200])

        return tolerant

    def _wrap(self, rpc: str, behavior: Behavior) -> Behavior:
        async def observed(request: Any, context: Context) -> Any:
            response: Any = None
            with self._observing(rpc, request, context) as call:
                response = await behavior(_decoded(rpc, request), context)
            if call.status is not None:
                # Raises: ends the call with `status` (grpc-stubs lack this grpc.aio method).
                await context.abort_with_status(call.status)  # type: ignore[attr-defined]
            return response

        return observed

    def _wrap_stream(self, rpc: str, behavior: StreamBehavior) -> StreamBehavior:
        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            with self._observing(rpc, request, context, streaming=True) as call:
                async for response in behavior(_decoded(rpc, request), context):
                    yield response
            if call.status is not None:  # after the messages already sent, if any
                await context.abort_with_status(call.status)  # type: ignore[attr-defined]

        return observed

    @contextmanager
    def _observing(
        self, rpc: str, request: Any, context: Context, *, streaming: bool = False
    ) -> Iterator[_Call]:
        """The bookkeeping of one call around its handler: the caller's state and deadline for
        what it calls, every exception mapped once to `call.status` (swallowed: the wrapper
        ends the call with it), one log line and the metrics. A stream's lifetime is no
        latency: streams are counted, not timed."""
        call = _Call(CallState(rpc), time.perf_counter())
        token = _current.set(call.state)
        deadline = deadlines.set_remaining(context.time_remaining())
        code = grpc.StatusCode.OK
        reason, failure, refusal = "", None, False
        try:
            yield call
        except CallRefused as refused:
            call.status, reason, refusal = refused.status, refused.reason, True
        except BillingError as error:
            call.status, reason = status_for(error), error.reason
        except asyncio.CancelledError:
            # The caller left (deadline or cancel) and the runtime cancelled this task: it
            # answers the call itself. Counted and logged, then the cancellation goes on.
            code = grpc.StatusCode.CANCELLED
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            self._observe(rpc, request, call, code, "", None, context, streaming=streaming)
            raise
        except Exception as bug:  # kept: the log line carries its traceback
            call.status, reason, failure = internal_status(), "INTERNAL", bug
        finally:
            deadlines.reset(deadline)
            _current.reset(token)
        if call.status is not None:
            code = call.status.code
        self._observe(rpc, request, call, code, reason, failure, context, refusal=refusal,
                      streaming=streaming)

    def _admit(self, reason: str, context: Context) -> bool:
        return self._refusals is None or self._refusals.admit(reason, _peer_host(context.peer()))


@dataclass(slots=True)
class _Call:
    state: CallState
    started: float
    status: grpc.Status | None = None  # how the call ends, when not OK


def _decoded(rpc: str, request: Any) -> Any:
    """The request, or INVALID_FIELD `request` for bytes that did not decode as one."""
    if isinstance(request, Undecodable):
        raise InvalidField("request", f"not a valid {rpc} request: {request.error}")
    return request


def _peer_host(peer: str) -> str:
    """`ipv4:10.0.0.5:53211` -> `10.0.0.5`, `ipv6:[::1]:53211` -> `::1`; others as they are."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0]
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]")
    return peer


def _call_fields(
    rpc: str, request: Any, caller: str, code: grpc.StatusCode, elapsed: float
) -> dict[str, object]:
    fields: dict[str, object] = {
        "method": rpc,
        "code": code.name,
        "duration_ms": round(elapsed * 1000, 3),
        "caller": caller,
    }
    for name in ("user_id", "request_id", "idempotency_key", "session_id"):
        value = getattr(request, name, "")
        if value:
            fields[name] = value[:128]
    return fields


def server_interceptors(
    metrics: Metrics, callers: Sequence[Caller], refusals: RefusalLog | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors, outermost first; no callers means auth is off."""
    interceptors: list[grpc.aio.ServerInterceptor] = [ObservingInterceptor(metrics, refusals)]
    if callers:
        interceptors.append(AuthInterceptor(Authenticator(callers)))
    return interceptors
