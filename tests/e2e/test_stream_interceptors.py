"""The interceptors cover server-streaming BillingService methods as they cover unary ones: auth
before the first message, one log line and the call counted, every error mapped once to a status
with its ErrorInfo (after the messages already sent). A stream method served on a real grpc.aio
port, through the service's own interceptors."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from billing.adapters.grpc_api.interceptors import Caller, current_caller, server_interceptors
from billing.adapters.metrics import Metrics
from billing.domain.errors import InsufficientCoins
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import bearer, free_port, reason_of

METHOD = "/billing.v1.BillingService/TestStream"  # a server-streaming method for this test
TOKEN, NARROW = "stream-token-0123", "narrow-token-0123"
CALLERS = [Caller.of("watcher", TOKEN, frozenset({"TestStream"})),
           Caller.of("narrow", NARROW, frozenset({"GetBalance"}))]


async def stream(request: pb.GetBalanceRequest, context: Any) -> AsyncIterator[Any]:
    """Three balances, named after the caller the interceptors authenticated; or one and then a
    domain error, or a bug."""
    for n in range(1, 4):
        if request.user_id == "bug":
            raise RuntimeError("a bug with a secret: hunter2")
        yield pb.GetBalanceResponse(user_id=current_caller(), balance=n)
        if request.user_id == "short":
            raise InsufficientCoins("user 'short' has 1 coin, 5 needed")


class Served:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        server = grpc.aio.server(interceptors=server_interceptors(self.metrics, CALLERS))
        handler = grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=pb.GetBalanceRequest.FromString,
            response_serializer=pb.GetBalanceResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "billing.v1.BillingService", {"TestStream": handler}),))
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()

    def count(self, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "billing_rpc_total", {"method": "TestStream", "code": code})
        return value or 0.0


@pytest.fixture
def served() -> Iterator[Served]:
    with Served() as running:
        yield running


def call(served: Served, user_id: str, token: str | None) -> tuple[list[Any], grpc.RpcError | None]:
    """The messages received, and the error the stream ended with (None: it ended OK)."""
    received: list[Any] = []
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        method = channel.unary_stream(
            METHOD, request_serializer=pb.GetBalanceRequest.SerializeToString,
            response_deserializer=pb.GetBalanceResponse.FromString)
        try:
            for message in method(pb.GetBalanceRequest(user_id=user_id), timeout=10,
                                  metadata=bearer(token) if token else None):
                received.append(message)
        except grpc.RpcError as error:
            return received, error
    return received, None


def test_a_stream_is_authenticated_observed_and_logged_once(served, caplog):
    with caplog.at_level(logging.INFO, logger="billing.rpc"):
        messages, error = call(served, "alice", TOKEN)

    assert error is None
    assert [(m.user_id, m.balance) for m in messages] == [("watcher", 1), ("watcher", 2),
                                                         ("watcher", 3)]
    assert served.count("OK") == 1
    [line] = [r for r in caplog.records if r.name == "billing.rpc"]
    assert (line.method, line.code, line.caller, line.user_id) == (
        "TestStream", "OK", "watcher", "alice")


def test_a_domain_error_mid_stream_ends_it_with_its_error_info_after_what_was_sent(served):
    messages, error = call(served, "short", TOKEN)

    assert [m.balance for m in messages] == [1]
    assert error is not None
    assert reason_of(error)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
    assert served.count("FAILED_PRECONDITION") == 1


def test_no_token_or_a_token_without_the_method_is_refused_before_any_message(served):
    for token, expected in ((None, (grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")),
                            ("wrong-token-0123", (grpc.StatusCode.UNAUTHENTICATED,
                                                  "INVALID_TOKEN")),
                            (NARROW, (grpc.StatusCode.PERMISSION_DENIED, "RPC_NOT_ALLOWED"))):
        messages, error = call(served, "alice", token)
        assert messages == [] and error is not None
        assert reason_of(error)[:2] == expected
    assert served.count("UNAUTHENTICATED") == 2 and served.count("PERMISSION_DENIED") == 1


def test_a_bug_in_a_stream_is_internal_without_details_and_logged_with_its_traceback(
    served, caplog
):
    with caplog.at_level(logging.INFO, logger="billing.rpc"):
        messages, error = call(served, "bug", TOKEN)

    assert messages == [] and error is not None
    assert reason_of(error)[:2] == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "hunter2" not in (error.details() or "")
    [line] = [r for r in caplog.records if r.name == "billing.rpc"]
    assert line.levelno == logging.ERROR and line.exc_info
