import pytest

from billing.domain.errors import (
    CoinsAlreadySpent,
    GatewayRejected,
    GatewayUnavailable,
    IdempotencyKeyReused,
    NotRefundable,
    NotSessionOwner,
    SessionNotFound,
)
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus, RefundStatus
from billing.domain.payment_events import InboxOutcome
from billing.use_cases.refund_payment import RefundCommand
from tests.unit.world import World, dispute_event, paid, refund_event

REFUNDED, COMPLETED = PaymentStatus.REFUNDED, PaymentStatus.COMPLETED


def bought(world: World, user: str = "alice"):
    created = world.checkout(user)
    world.deliver(paid(world, created))
    return created


def only_refund(world: World):
    [refund] = world.store.state.refunds.values()
    return refund


def test_a_refund_debits_the_coins_and_refunds_on_stripe_once(world):
    created = bought(world)
    result = world.refund("alice", created.session_id, request_id="q1")
    assert (result.status, result.coins_debited, result.new_balance) == (REFUNDED, 1200, 0)
    refund = only_refund(world)
    assert refund.status is RefundStatus.SUCCEEDED and refund.stripe_refund_id.startswith("re_")
    [(params, _)] = world.gateway.refunds.values()
    assert params.idempotency_key == f"{refund.refund_key}:refund"
    assert params.payment_intent_id == f"pi_{created.payment_id}"
    status = world.status("alice", created.session_id)
    assert status.session.coins_refunded == 1200 and status.balance == 0
    world.assert_invariants()


def test_a_retried_refund_returns_the_first_response(world):
    created = bought(world)
    first = world.refund("alice", created.session_id, request_id="q1")
    assert world.refund("alice", created.session_id, request_id="q1") == first
    assert world.gateway.refund_count() == 1
    with pytest.raises(IdempotencyKeyReused):
        world.refund_payment(
            RefundCommand(
                user_id="alice", session_id=created.session_id, reason="other", request_id="q1"
            )
        )


def test_spent_coins_block_a_refund(world):
    created = bought(world)
    world.spend("alice", 1)
    with pytest.raises(CoinsAlreadySpent):
        world.refund("alice", created.session_id)
    assert world.session(created.session_id).status is COMPLETED
    assert world.gateway.refund_count() == 0 and world.balance("alice") == 1199


def test_only_a_completed_payment_can_be_refunded(world):
    pending = world.checkout("alice")
    with pytest.raises(NotRefundable):
        world.refund("alice", pending.session_id)
    created = bought(world)
    world.refund("alice", created.session_id)
    with pytest.raises(NotRefundable):
        world.refund("alice", created.session_id)


def test_a_refund_checks_the_owner(world):
    created = bought(world)
    with pytest.raises(NotSessionOwner):
        world.refund("mallory", created.session_id)
    with pytest.raises(SessionNotFound):
        world.refund("alice", "cs_nope")
    assert world.balance("alice") == 1200


def test_stripe_unreachable_leaves_the_refund_pending_and_a_retry_finishes_it_once(world):
    created = bought(world)
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.refund("alice", created.session_id, request_id="q1")
    assert world.balance("alice") == 0  # debited first (rule 6)
    assert only_refund(world).status is RefundStatus.PENDING
    result = world.refund("alice", created.session_id, request_id="q1")
    assert result.coins_debited == 1200 and result.status is REFUNDED
    assert world.gateway.refund_count() == 1
    assert len(world.store.state.refunds) == 1
    world.assert_invariants()


def test_stripe_refusing_the_refund_reverses_the_debit(world):
    created = bought(world)
    world.gateway.refuse_refunds = True
    with pytest.raises(GatewayRejected):
        world.refund("alice", created.session_id)
    assert world.balance("alice") == 1200
    assert world.session(created.session_id).status is COMPLETED
    assert only_refund(world).status is RefundStatus.FAILED
    assert [e.type.value for e in world.ledger()] == ["PURCHASE", "REFUND", "REFUND_REVERSAL"]
    world.gateway.refuse_refunds = False
    assert world.refund("alice", created.session_id).status is REFUNDED
    world.assert_invariants()


def test_refund_failed_reverses_the_debit_once_whatever_the_order(world):
    created = bought(world)
    world.gateway.fail_refunds = True
    world.refund("alice", created.session_id)
    refund = only_refund(world)
    assert refund.status is RefundStatus.PENDING
    failed = refund_event(
        world,
        created,
        "failed",
        refund_id=refund.stripe_refund_id,
        refund_key=refund.refund_key,
        status="failed",
    )
    updated = refund_event(
        world,
        created,
        "updated",
        refund_id=refund.stripe_refund_id,
        refund_key=refund.refund_key,
        status="failed",
    )
    created_event = refund_event(
        world,
        created,
        "created",
        refund_id=refund.stripe_refund_id,
        refund_key=refund.refund_key,
        status="pending",
    )
    for event in (failed, updated, created_event, failed):
        world.deliver(event)
    assert world.balance("alice") == 1200
    assert world.session(created.session_id).status is COMPLETED
    assert [e.type.value for e in world.ledger()] == ["PURCHASE", "REFUND", "REFUND_REVERSAL"]
    world.assert_invariants()


def test_refund_events_confirm_our_refund_without_debiting_again(world):
    created = bought(world)
    world.gateway.fail_refunds = True  # answer "pending", let the events confirm
    world.refund("alice", created.session_id)
    refund = only_refund(world)
    for _ in range(2):
        world.deliver(
            refund_event(
                world,
                created,
                "updated",
                refund_id=refund.stripe_refund_id,
                refund_key=refund.refund_key,
                status="succeeded",
            )
        )
    assert only_refund(world).status is RefundStatus.SUCCEEDED
    assert world.balance("alice") == 0 and len(world.ledger()) == 2


def test_a_refund_event_before_our_refund_exists_is_unmatched(world):
    created = bought(world)
    event = refund_event(world, created, "created", refund_id="re_1", refund_key="rfk_unknown")
    assert world.deliver(event).outcome is InboxOutcome.UNMATCHED
    assert world.balance("alice") == 1200


def test_a_refund_made_on_the_dashboard_debits_in_proportion_keyed_by_its_id(world):
    created = bought(world)
    half = refund_event(world, created, "created", refund_id="re_dash1", amount=Money("USD", 4999))
    world.deliver(half)
    world.deliver(
        refund_event(world, created, "updated", refund_id="re_dash1", amount=Money("USD", 4999))
    )
    assert world.balance("alice") == 1200 - 599
    assert world.session(created.session_id).status is COMPLETED
    world.deliver(
        refund_event(world, created, "created", refund_id="re_dash2", amount=Money("USD", 5000))
    )
    assert world.balance("alice") == 0
    assert world.session(created.session_id).status is REFUNDED
    too_much = refund_event(world, created, "created", refund_id="re_dash3", amount=Money("USD", 1))
    assert world.deliver(too_much).outcome is InboxOutcome.REJECTED
    world.assert_invariants()


def test_a_dashboard_refund_of_spent_coins_records_the_shortfall(world):
    created = bought(world)
    world.spend("alice", 1000)
    world.deliver(refund_event(world, created, "created", refund_id="re_d"))
    [*_, debit] = world.ledger()
    assert (debit.coins, debit.shortfall, debit.balance_after) == (-200, 1000, 0)
    world.assert_invariants()


def test_a_failed_dashboard_refund_we_never_saw_changes_nothing(world):
    created = bought(world)
    event = refund_event(world, created, "failed", refund_id="re_gone", status="failed")
    assert world.deliver(event).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200


def test_a_dispute_debits_what_is_left_and_a_won_dispute_gives_it_back(world):
    created = bought(world)
    world.spend("alice", 200)
    world.deliver(dispute_event(world, created, "created", "dp_1"))
    world.deliver(dispute_event(world, created, "created", "dp_1"))
    assert world.balance("alice") == 0
    assert world.session(created.session_id).status is PaymentStatus.DISPUTED
    dispute_row = world.ledger()[-1]
    assert (dispute_row.coins, dispute_row.shortfall) == (-1000, 200)
    world.deliver(dispute_event(world, created, "closed", "dp_1", status="won"))
    world.deliver(dispute_event(world, created, "closed", "dp_1", status="won"))
    assert world.balance("alice") == 1000
    assert world.session(created.session_id).status is COMPLETED
    world.assert_invariants()


def test_a_lost_dispute_keeps_the_debit(world):
    created = bought(world)
    world.deliver(dispute_event(world, created, "created", "dp_1"))
    world.deliver(dispute_event(world, created, "closed", "dp_1", status="lost"))
    assert world.balance("alice") == 0
    assert world.session(created.session_id).status is PaymentStatus.DISPUTED


def test_a_dispute_before_the_completion_waits_and_applies_once_replayed(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created, payment_status="unpaid"))
    early = dispute_event(world, created, "created", "dp_1")
    assert world.deliver(early).outcome is InboxOutcome.UNMATCHED
    world.deliver(paid(world, created))
    assert world.deliver(early).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 0
    world.assert_invariants()


def test_a_won_dispute_we_never_saw_opened_waits(world):
    created = bought(world)
    event = dispute_event(world, created, "closed", "dp_9", status="won")
    assert world.deliver(event).outcome is InboxOutcome.UNMATCHED
    assert world.balance("alice") == 1200


def test_a_dispute_without_an_id_is_rejected(world):
    created = bought(world)
    event = dispute_event(world, created, "created", "")
    assert world.deliver(event).outcome is InboxOutcome.REJECTED


def test_a_refund_after_a_dashboard_refund_asks_stripe_only_for_what_is_left(world):
    created = bought(world)
    world.deliver(
        refund_event(world, created, "created", refund_id="re_part", amount=Money("USD", 4999))
    )
    result = world.refund("alice", created.session_id)
    params = next(p for p, _ in world.gateway.refunds.values())
    assert params.amount == Money("USD", 5000)
    assert result.coins_debited == 1200 - 599 and result.status is REFUNDED
    world.assert_invariants()


def test_a_dispute_while_our_refund_is_pending_waits_for_the_refund(world):
    created = bought(world)
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.refund("alice", created.session_id)
    early = dispute_event(world, created, "created", "dp_1")
    assert world.deliver(early).outcome is InboxOutcome.UNMATCHED
    assert world.balance("alice") == 0
