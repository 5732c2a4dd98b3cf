"""The gRPC limits: a bare grpcio server of the same flavour as `billing serve` (a synchronous
thread-pool server, as billing/adapters/grpc_api/server.py builds it, with as many workers) that
implements GetBalance and SpendCoins on the generated stubs, each with the least database work the
RPC needs, through psycopg2 and a pool sized to the workers:

- GetBalance: one `SELECT balance FROM accounts WHERE user_id = %s` (autocommit: one round trip);
- SpendCoins: one transaction: the conditional `UPDATE accounts SET balance = balance - %s WHERE
  user_id = %s AND balance >= %s RETURNING balance`, then one ledger INSERT, then COMMIT.

No interceptors, no logging, no idempotency record, no health or reflection.

    python -m bench.grpc_bare PORT DSN sync|aio WORKERS

The `streams` flavour is the reference for idle streams (bench/streams.py): a grpc.aio server with
the service's server options whose WatchPaymentStatus sends one PENDING message and then waits,
holding the stream open until the client goes (no database; DSN and WORKERS are ignored):

    python -m bench.grpc_bare PORT - streams 0

The flavour and the worker count are read from billing/adapters/grpc_api/server.py by
`service_flavour()`, so the limit follows the service if it changes flavour.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import psycopg2
from psycopg2.pool import ThreadedConnectionPool

from billing.v1 import billing_pb2, billing_pb2_grpc

WORKERS = 16  # create_grpc_server's default max_workers

_SELECT = "SELECT balance FROM accounts WHERE user_id = %s"
_UPDATE = ("UPDATE accounts SET balance = balance - %s WHERE user_id = %s AND balance >= %s"
           " RETURNING balance")
_INSERT = ("INSERT INTO ledger (key, user_id, type, coins, balance_after, shortfall, description,"
           " session_id, payment_id, caller, request_id, created_at)"
           " VALUES (%s, %s, 'USAGE', %s, %s, 0, %s, '', '', 'bench', %s, now())"
           " RETURNING seq")


class BareServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, pool: ThreadedConnectionPool) -> None:
        self._pool = pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg2.extensions.connection]:
        connection = self._pool.getconn()
        try:
            yield connection
        finally:
            self._pool.putconn(connection)

    def balance(self, request: billing_pb2.GetBalanceRequest) -> billing_pb2.GetBalanceResponse:
        with self._connection() as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(_SELECT, (request.user_id,))
                row = cursor.fetchone()
        return billing_pb2.GetBalanceResponse(user_id=request.user_id,
                                              balance=row[0] if row else 0)

    def spend(self, request: billing_pb2.SpendCoinsRequest
              ) -> billing_pb2.SpendCoinsResponse | None:
        """The response, or None when the balance is short (nothing changed)."""
        with self._connection() as connection:
            connection.autocommit = False
            try:
                with connection.cursor() as cursor:
                    cursor.execute(_UPDATE, (request.coins, request.user_id, request.coins))
                    row = cursor.fetchone()
                    if row is None:
                        connection.rollback()
                        return None
                    balance = row[0]
                    cursor.execute(_INSERT, (
                        f"SpendCoins:{request.user_id}:{request.idempotency_key}",
                        request.user_id, -request.coins, balance, request.reason,
                        request.idempotency_key,
                    ))
                    (seq,) = cursor.fetchone()
                connection.commit()
            except psycopg2.Error:
                connection.rollback()
                raise
        return billing_pb2.SpendCoinsResponse(
            transaction=billing_pb2.Transaction(
                id=f"txn_{seq}", user_id=request.user_id,
                type=billing_pb2.TRANSACTION_TYPE_USAGE, coins=-request.coins,
                balance_after=balance, description=request.reason, caller="bench"),
            balance=balance,
        )

    def GetBalance(self, request, context):  # noqa: N802 (the stub's name)
        return self.balance(request)

    def SpendCoins(self, request, context):  # noqa: N802
        response = self.spend(request)
        if response is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "insufficient coins")
        return response


class AioBareServicer(billing_pb2_grpc.BillingServiceServicer):
    """The grpc.aio flavour: the same blocking psycopg2 work, run on a thread pool."""

    def __init__(self, sync: BareServicer, executor: futures.ThreadPoolExecutor) -> None:
        self._sync, self._executor = sync, executor

    async def GetBalance(self, request, context):  # noqa: N802
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sync.balance, request)

    async def SpendCoins(self, request, context):  # noqa: N802
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._executor, self._sync.spend, request)
        if response is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "insufficient coins")
        return response


class IdleStreamServicer(billing_pb2_grpc.BillingServiceServicer):
    """WatchPaymentStatus: one message, then nothing until the client cancels."""

    async def WatchPaymentStatus(self, request, context):  # noqa: N802
        yield billing_pb2.GetPaymentStatusResponse(
            session_id=request.session_id, status=billing_pb2.PAYMENT_STATUS_PENDING)
        await asyncio.get_running_loop().create_future()  # cancelled with the call


def service_flavour() -> tuple[str, int]:
    """("sync" or "aio", worker threads) as billing/adapters/grpc_api/server.py builds it."""
    from billing.adapters.grpc_api import server as billing_server

    source = inspect.getsource(billing_server)
    flavour = "aio" if "grpc.aio" in source else "sync"
    workers = WORKERS
    factory = getattr(billing_server, "create_grpc_server", None)
    if factory is not None:
        default = inspect.signature(factory).parameters.get("max_workers")
        if default is not None and isinstance(default.default, int):
            workers = default.default
    return flavour, workers


def serve_sync(port: int, pool: ThreadedConnectionPool, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.so_reuseport", 0)])
    billing_pb2_grpc.add_BillingServiceServicer_to_server(BareServicer(pool), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on {port}")
    server.start()
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    server.stop(1).wait()


async def serve_aio(port: int, pool: ThreadedConnectionPool, workers: int) -> None:
    executor = futures.ThreadPoolExecutor(max_workers=workers)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    billing_pb2_grpc.add_BillingServiceServicer_to_server(
        AioBareServicer(BareServicer(pool), executor), server)
    await _serve_until_signalled(server, port, grace_s=1)
    executor.shutdown(wait=False)


async def serve_streams(port: int) -> None:
    from billing.adapters.grpc_api.server import MAX_REQUEST_BYTES

    # The options billing/adapters/grpc_api/server.py gives the service's server.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                                      ("grpc.so_reuseport", 0)])
    billing_pb2_grpc.add_BillingServiceServicer_to_server(IdleStreamServicer(), server)
    await _serve_until_signalled(server, port, grace_s=0)


async def _serve_until_signalled(server: grpc.aio.Server, port: int, grace_s: float) -> None:
    """Listen on `port` until SIGTERM or SIGINT, then stop within `grace_s`."""
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on {port}")
    await server.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    await done.wait()
    await server.stop(grace_s)


def main() -> None:
    port, dsn, flavour = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    workers = int(sys.argv[4])
    if flavour == "streams":
        asyncio.run(serve_streams(port))
        return
    pool = ThreadedConnectionPool(workers, workers, dsn)
    try:
        if flavour == "aio":
            asyncio.run(serve_aio(port, pool, workers))
        else:
            serve_sync(port, pool, workers)
    finally:
        pool.closeall()


if __name__ == "__main__":
    main()
