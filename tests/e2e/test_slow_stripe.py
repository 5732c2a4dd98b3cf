"""A slow Stripe must not stall the service (issue 10), over the real port: while every Stripe
slot is taken, database-only RPCs and health answer; a checkout past the bound is refused at once
with OVERLOADED and writes nothing; a caller whose deadline passes frees its slot, and its retry
with the same request_id gets the one Stripe session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ADMIN_TOKEN,
    ControllableGateway,
    RunningService,
    assert_serving,
    bearer,
    create_request,
    http_get,
    module_service,
    reason_of,
    wait_for,
)

ADMIN = bearer(ADMIN_TOKEN)
LIMIT = 2


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, gateway: ControllableGateway
) -> Iterator[RunningService]:
    yield from module_service(tmp_path_factory, gateway,
                              BILLING_STRIPE_MAX_CONCURRENCY=str(LIMIT))


@pytest.fixture
def stub(service: RunningService) -> Iterator[object]:
    with service.stub() as stub:
        yield stub


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def _payment_of(service: RunningService, user: str, request_id: str) -> object | None:
    with service.container.store()(read_only=True) as unit:
        return unit.payments.by_request(user, request_id)


def _metric(service: RunningService, name: str) -> float:
    status, text = http_get(f"{service.admin_base}/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_past_the_bound_a_checkout_is_overloaded_and_nothing_else_waits(service, gateway, stub):
    user = _user()
    stub.GrantCoins(pb.GrantCoinsRequest(user_id=user, coins=10, reason="seed",
                                         idempotency_key="seed"), metadata=ADMIN, timeout=5)
    gateway.holding = True
    try:
        held = [stub.CreateCheckoutSession.future(create_request(user, request_id=f"held-{n}"),
                                                  metadata=ADMIN, timeout=30)
                for n in range(LIMIT)]
        wait_for(lambda: gateway.waiting == LIMIT, what="both calls to wait on Stripe")

        with pytest.raises(grpc.RpcError) as shed:
            stub.CreateCheckoutSession(create_request(user, request_id="shed"), metadata=ADMIN,
                                       timeout=5)
        code, reason, metadata = reason_of(shed.value)
        assert (code, reason, metadata) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", {"limit": "stripe_calls"})
        assert _payment_of(service, user, "shed") is None
        # Every Stripe slot is taken, and the database-only RPCs and health still answer.
        assert stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=ADMIN,
                               timeout=5).balance == 10
        spent = stub.SpendCoins(pb.SpendCoinsRequest(user_id=user, coins=3, reason="sword",
                                                     idempotency_key="s-1"),
                                metadata=ADMIN, timeout=5)
        assert spent.balance == 7
        assert_serving(service)
        assert _metric(service, "billing_stripe_calls_in_flight") == LIMIT
        assert _metric(service, "billing_stripe_shed_total") >= 1
    finally:
        gateway.release()
    assert all(call.result(timeout=10).session_id for call in held)
    wait_for(lambda: service.container.gateway().in_flight == 0, what="the slots to be freed")
    assert stub.CreateCheckoutSession(create_request(user, request_id="shed"), metadata=ADMIN,
                                      timeout=5).session_id  # the retry goes through


def test_a_caller_past_its_deadline_frees_its_slot_and_its_retry_gets_the_one_session(
    service, gateway, stub
):
    user = _user()
    request = create_request(user, request_id="late")
    gateway.answer_late_s = 2.0  # Stripe makes the session, its answer comes too late
    try:
        with pytest.raises(grpc.RpcError) as late:
            stub.CreateCheckoutSession(request, metadata=ADMIN, timeout=0.1)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: service.container.gateway().in_flight == 0,
                 what="the abandoned call to free its slot")
    finally:
        gateway.answer_late_s = 0.0
    payment = _payment_of(service, user, "late")
    assert payment is not None and not payment.stripe_session_id  # PENDING, kept for the retry

    retried = stub.CreateCheckoutSession(request, metadata=ADMIN, timeout=10)

    sessions = [s for s in gateway.sessions.values()
                if s.params.payment_id == payment.payment_id]
    assert [s.snapshot.session_id for s in sessions] == [retried.session_id]
