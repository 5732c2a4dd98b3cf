"""WatchPaymentStatus and StreamTransactions over the real port, one process on SQLite (where
positions are given at commit); the cross-replica behaviour on Postgres is in test_feed_replicas.

Streams are read on a thread of the test; every wait has a deadline (the call's own timeout)."""

from __future__ import annotations

import queue
import threading
import time
import uuid

import grpc
import pytest

from billing.client import BillingClient
from billing.domain.feed import encode_cursor
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.harness import (
    ADMIN_TOKEN,
    API_TOKENS,
    SHOP_TOKEN,
    ControllableGateway,
    bearer,
    create_request,
    http_post,
    module_service,
    reason_of,
    service_env,
    signed_checkout_completed,
    start_service,
    wait_for,
)

ADMIN = bearer(ADMIN_TOKEN)
SHOP = bearer(SHOP_TOKEN)
# A per-user feed reader, and one with the scope for every user's feed (which implies it).
USER_FEED = bearer("user-feed-token-0123")
ALL_FEEDS = bearer("all-feeds-token-0123")
TOKENS = (f"{API_TOKENS},user-feed:user-feed-token-0123:StreamTransactions,"
          "all-feeds:all-feeds-token-0123:StreamAllTransactions")


@pytest.fixture(scope="module")
def service(tmp_path_factory, gateway):
    yield from module_service(tmp_path_factory, gateway, BILLING_STREAM_CHECKPOINT_S="0.3",
                              BILLING_FEED_POLL_S="0.2", BILLING_API_TOKENS=TOKENS)


@pytest.fixture(scope="module")
def channel(service):
    with grpc.insecure_channel(service.grpc_target) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return billing_pb2_grpc.BillingServiceStub(channel)


def _key() -> str:
    return uuid.uuid4().hex


def _grant(stub, user, coins):
    return stub.GrantCoins(pb.GrantCoinsRequest(
        user_id=user, coins=coins, reason="welcome", idempotency_key=_key()),
        metadata=ADMIN, timeout=5)


class Reader:
    """Reads a stream on its own thread into a queue: (message) items, then ("end", error)."""

    def __init__(self, call) -> None:
        self.call = call
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self.call:
                self.items.put(message)
            self.items.put(("end", None))
        except grpc.RpcError as error:
            self.items.put(("end", error))

    def next(self, timeout: float = 10.0):
        return self.items.get(timeout=timeout)

    def until(self, condition, timeout: float = 10.0) -> list:
        seen = []
        while True:
            item = self.next(timeout)
            seen.append(item)
            if condition(item):
                return seen


def _pay(service, gateway, session_id):
    paid = gateway.pay(session_id)
    secret = service.settings.stripe_webhook_secrets[0].reveal()
    body, headers = signed_checkout_completed(secret, paid, event_id=f"evt_{_key()}")
    status, text = http_post(f"{service.http_base}/api/payment/webhook", body, headers)
    assert status == 200, text


# -- WatchPaymentStatus --------------------------------------------------------------------------
def test_a_watch_sends_pending_then_completed_with_the_coins_and_ends_ok(
    service, gateway: ControllableGateway, stub, user
):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    watch = Reader(stub.WatchPaymentStatus(
        pb.WatchPaymentStatusRequest(user_id=user, session_id=created.session_id),
        metadata=ADMIN, timeout=20))
    first = watch.next()
    assert first.status == pb.PAYMENT_STATUS_PENDING and first.coins_added == 0
    _pay(service, gateway, created.session_id)
    last = watch.next()
    assert last.status == pb.PAYMENT_STATUS_COMPLETED
    assert last.coins_added == 550 and last.new_balance == 550
    assert watch.next() == ("end", None)  # the stream closed OK
    assert watch.call.code() == grpc.StatusCode.OK


def test_a_watch_of_a_settled_session_sends_it_once_and_ends(service, gateway, stub, user):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    stub.CancelCheckoutSession(pb.CancelCheckoutSessionRequest(
        user_id=user, session_id=created.session_id), metadata=ADMIN, timeout=5)
    messages = list(stub.WatchPaymentStatus(
        pb.WatchPaymentStatusRequest(user_id=user, session_id=created.session_id),
        metadata=ADMIN, timeout=10))
    assert [m.status for m in messages] == [pb.PAYMENT_STATUS_CANCELLED]


def test_a_watch_sees_a_cancel_made_while_it_waits(service, gateway, stub, user):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    watch = Reader(stub.WatchPaymentStatus(
        pb.WatchPaymentStatusRequest(user_id=user, session_id=created.session_id),
        metadata=ADMIN, timeout=20))
    assert watch.next().status == pb.PAYMENT_STATUS_PENDING
    stub.CancelCheckoutSession(pb.CancelCheckoutSessionRequest(
        user_id=user, session_id=created.session_id), metadata=ADMIN, timeout=5)
    assert watch.next().status == pb.PAYMENT_STATUS_CANCELLED
    assert watch.next() == ("end", None)


# -- StreamTransactions --------------------------------------------------------------------------
def test_a_user_stream_starts_with_a_checkpoint_then_history_then_live_rows(stub, user):
    before = [_grant(stub, user, coins).transaction for coins in (5, 7)]
    stream = Reader(stub.StreamTransactions(
        pb.StreamTransactionsRequest(user_id=user), metadata=ADMIN, timeout=20))
    checkpoint = stream.next()
    assert not checkpoint.HasField("transaction") and checkpoint.cursor
    history = [stream.next(), stream.next()]
    assert [e.transaction.id for e in history] == [t.id for t in before]
    live = _grant(stub, user, 11).transaction
    event = stream.next()
    assert event.transaction.id == live.id and event.transaction.balance_after == 23
    assert len({checkpoint.cursor, *(e.cursor for e in history), event.cursor}) == 4
    stream.call.cancel()


def test_resuming_after_a_cursor_sends_exactly_the_rows_after_it(stub, user):
    ids = [_grant(stub, user, coins).transaction.id for coins in (1, 2, 3, 4)]
    first = list(_take(stub.StreamTransactions(
        pb.StreamTransactionsRequest(user_id=user), metadata=ADMIN, timeout=10), 3))
    resumed = _take(stub.StreamTransactions(
        pb.StreamTransactionsRequest(user_id=user, after_cursor=first[-1].cursor),
        metadata=ADMIN, timeout=10), 3)
    assert resumed[0].cursor == first[-1].cursor and not resumed[0].HasField("transaction")
    assert [e.transaction.id for e in resumed[1:]] == ids[2:]


def test_from_now_skips_history_and_an_idle_stream_sends_checkpoints(stub, user):
    _grant(stub, user, 3)
    stream = Reader(stub.StreamTransactions(
        pb.StreamTransactionsRequest(user_id=user, from_now=True), metadata=ADMIN, timeout=20))
    start = stream.next()
    assert not start.HasField("transaction")
    idle = stream.next()  # BILLING_STREAM_CHECKPOINT_S is 0.3 here
    assert not idle.HasField("transaction") and idle.cursor
    live = _grant(stub, user, 4).transaction
    assert stream.until(lambda e: e.HasField("transaction"))[-1].transaction.id == live.id
    stream.call.cancel()


def test_every_user_feed_sees_rows_of_all_users_in_one_order(stub):
    users = [f"u-{_key()[:10]}" for _ in range(3)]
    stream = Reader(stub.StreamTransactions(
        pb.StreamTransactionsRequest(from_now=True), metadata=ADMIN, timeout=20))
    stream.next()
    granted = [_grant(stub, u, 2).transaction.id for u in users]
    seen = stream.until(lambda e: e.HasField("transaction") and e.transaction.id == granted[-1])
    ids = [e.transaction.id for e in seen if e.HasField("transaction")]
    assert [i for i in ids if i in granted] == granted
    stream.call.cancel()


def test_every_user_feed_needs_its_scope_which_implies_a_user_feed(stub, user):
    for metadata, request in ((USER_FEED, pb.StreamTransactionsRequest(user_id=user)),
                              (ALL_FEEDS, pb.StreamTransactionsRequest(user_id=user)),
                              (ALL_FEEDS, pb.StreamTransactionsRequest(from_now=True)),
                              (ADMIN, pb.StreamTransactionsRequest(from_now=True))):
        call = stub.StreamTransactions(request, metadata=metadata, timeout=10)
        assert next(call).cursor  # its first checkpoint
        call.cancel()


# -- bad input: a clear error, and nothing changes ---------------------------------------------
def _refused(call, request, metadata=ADMIN):
    with pytest.raises(grpc.RpcError) as failure:
        list(call(request, metadata=metadata, timeout=5))
    return reason_of(failure.value)


def test_streams_refuse_bad_input_with_the_designed_reasons(service, gateway, stub, user):
    assert _refused(stub.StreamTransactions, pb.StreamTransactionsRequest(
        user_id=user, after_cursor="not-a-cursor"))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR")
    assert _refused(stub.StreamTransactions, pb.StreamTransactionsRequest(
        user_id=user, after_cursor=encode_cursor(1), from_now=True))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR")
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    assert _refused(stub.WatchPaymentStatus, pb.WatchPaymentStatusRequest(
        user_id="someone-else", session_id=created.session_id))[:2] == (
        grpc.StatusCode.PERMISSION_DENIED, "NOT_SESSION_OWNER")
    assert _refused(stub.WatchPaymentStatus, pb.WatchPaymentStatusRequest(
        user_id=user, session_id="cs_missing"))[:2] == (
        grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    assert _refused(stub.StreamTransactions, pb.StreamTransactionsRequest(user_id=user),
                    metadata=())[:2] == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
    assert _refused(stub.StreamTransactions, pb.StreamTransactionsRequest(user_id=user),
                    metadata=SHOP)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "RPC_NOT_ALLOWED")
    assert _refused(stub.StreamTransactions, pb.StreamTransactionsRequest(),
                    metadata=USER_FEED)[:2] == (
        grpc.StatusCode.PERMISSION_DENIED, "RPC_NOT_ALLOWED")
    assert _refused(stub.WatchPaymentStatus, pb.WatchPaymentStatusRequest(
        user_id="", session_id=created.session_id))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    status = stub.GetPaymentStatus(pb.GetPaymentStatusRequest(
        user_id=user, session_id=created.session_id), metadata=ADMIN, timeout=5)
    assert status.status == pb.PAYMENT_STATUS_PENDING  # nothing changed
    assert stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=ADMIN,
                           timeout=5).balance == 0
    wait_for(lambda: service.container.live()._open == 0, 5, "the refused streams to close")


def _take(call, n):
    taken = []
    for message in call:
        taken.append(message)
        if len(taken) == n:
            call.cancel()
            break
    return taken


# -- shutdown ------------------------------------------------------------------------------------
def test_a_stopping_server_ends_open_streams_with_shutting_down_at_once(tmp_path_factory):
    own = ControllableGateway()
    service = next(module_service(tmp_path_factory, own, BILLING_SHUTDOWN_GRACE_S="30"))
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        user = f"u-{_key()[:10]}"
        created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
        feed = Reader(stub.StreamTransactions(pb.StreamTransactionsRequest(from_now=True),
                                              metadata=ADMIN, timeout=60))
        watch = Reader(stub.WatchPaymentStatus(
            pb.WatchPaymentStatusRequest(user_id=user, session_id=created.session_id),
            metadata=ADMIN, timeout=60))
        feed.next()
        watch.next()
        started = time.monotonic()
        service.server.request_stop()
        for reader in (feed, watch):
            end, error = reader.until(lambda item: isinstance(item, tuple))[-1]
            assert end == "end" and error is not None
            assert reason_of(error)[:2] == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        service.thread.join(30)
        assert service.outcome["code"] == 0
        assert time.monotonic() - started < 10  # not the 30 s grace


def test_the_client_iterator_resumes_by_itself_after_shutting_down(tmp_path):
    """billing.client.stream_transactions() across a restart of the service (same database,
    same port): SHUTTING_DOWN, then UNAVAILABLE while nothing listens, then the new process;
    the caller sees every row once and nothing else."""
    env = service_env(tmp_path, BILLING_API_TOKENS=API_TOKENS,
                      STRIPE_API_BASE="http://127.0.0.1:9")
    service = start_service(env, gateway=ControllableGateway())
    user = f"u-{_key()[:10]}"
    seen: list = []
    with BillingClient(service.grpc_target, token=ADMIN_TOKEN) as billing:
        events = billing.stream_transactions(user)
        first = [billing.grant_coins(user, n).transaction.id for n in (1, 2)]
        while len([e for e in seen if e.transaction]) < 2:
            seen.append(next(events))
        assert service.stop() == 0  # the open stream ends with SHUTTING_DOWN
        service = start_service(env, gateway=ControllableGateway())
        try:
            later = billing.grant_coins(user, 3).transaction.id
            while len([e for e in seen if e.transaction]) < 3:
                seen.append(next(events))  # resumed by the iterator, after its last cursor
            events.close()
        finally:
            assert service.stop() == 0
    assert [e.transaction.id for e in seen if e.transaction] == [*first, later]
