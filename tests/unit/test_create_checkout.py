from datetime import timedelta

import pytest

from billing.domain.errors import (
    GatewayRejected,
    GatewayUnavailable,
    IdempotencyKeyReused,
    InvalidField,
    UnknownPackage,
)
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus
from billing.use_cases.create_checkout import CreateCheckoutCommand
from tests.unit.world import World


def test_records_the_payment_and_creates_one_stripe_session_at_the_catalog_price(world):
    created = world.checkout("alice", "coins_1000")
    session = world.session(created.session_id)
    assert created.session_id.startswith("cs_") and created.checkout_url
    assert (session.status, session.amount, session.coins, session.bonus) == (
        PaymentStatus.PENDING,
        Money("USD", 9999),
        1000,
        200,
    )
    sent = world.gateway.sessions[created.session_id].params
    assert sent.amount == Money("USD", 9999)
    assert sent.idempotency_key == f"{created.payment_id}:create"
    assert sent.metadata == {
        "user_id": "alice",
        "coins": "1000",
        "bonus": "200",
        "total_coins": "1200",
        "package_id": "coins_1000",
        "payment_id": created.payment_id,
    }
    assert sent.expires_at == created.expires_at > world.clock.now()


def test_a_retry_with_the_same_request_id_returns_the_same_session(world):
    first = world.checkout("alice", request_id="r-1")
    again = world.checkout("alice", request_id="r-1")
    assert again == first
    assert len(world.gateway.sessions) == 1
    assert world.gateway.calls.count("create_checkout") == 1


def test_request_ids_are_scoped_to_the_user(world):
    assert world.checkout("alice", request_id="r-1") != world.checkout("bob", request_id="r-1")


def test_reusing_a_request_id_with_another_package_is_refused(world):
    world.checkout("alice", "coins_100", request_id="r-1")
    with pytest.raises(IdempotencyKeyReused):
        world.checkout("alice", "coins_1000", request_id="r-1")
    assert len(world.gateway.sessions) == 1


def test_a_crash_before_stripe_answered_is_finished_by_a_retry_with_one_stripe_session(world):
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.checkout("alice", request_id="r-1")
    pending = list(world.store.state.payments.values())
    assert len(pending) == 1 and pending[0].stripe_session_id == ""
    created = world.checkout("alice", request_id="r-1")
    assert created.payment_id == pending[0].payment_id
    assert len(world.gateway.sessions) == 1


def test_a_retry_resends_exactly_the_stored_parameters_even_if_the_catalog_changed(world):
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.checkout("alice", "coins_100", request_id="r-1")
    world.clock.advance(timedelta(minutes=5))
    created = world.checkout("alice", "coins_100", request_id="r-1")
    sent = world.gateway.sessions[created.session_id].params
    assert sent.expires_at == world.session(created.session_id).expires_at


def test_a_lost_answer_after_stripe_created_the_session_is_replayed_by_stripe(world):
    """Stripe made the session but we crashed before storing it: the key gives it back."""
    world.gateway.unavailable_calls = 0
    created = world.checkout("alice", request_id="r-1")
    payment = world.store.state.payments[created.payment_id]
    payment.stripe_session_id = ""
    payment.checkout_url = ""
    again = world.checkout("alice", request_id="r-1")
    assert again.session_id == created.session_id
    assert len(world.gateway.sessions) == 1


def test_a_request_that_ended_before_stripe_was_reached_asks_for_a_new_request_id(world):
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.checkout("alice", request_id="r-1")
    payment = next(iter(world.store.state.payments.values()))
    payment.status = PaymentStatus.EXPIRED
    with pytest.raises(GatewayRejected, match="new request_id"):
        world.checkout("alice", request_id="r-1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", ""),
        ("package_id", "x" * 129),
        ("success_url", "ftp://x"),
        ("cancel_url", ""),
        ("request_id", "é"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(world: World, field, value):
    command = dict(
        user_id="alice",
        package_id="coins_100",
        success_url="https://a.example/ok",
        cancel_url="https://a.example/no",
        request_id="r-1",
    ) | {field: value}
    with pytest.raises(InvalidField) as error:
        world.create_checkout(CreateCheckoutCommand(**command))
    assert error.value.field == field
    assert world.store.state.payments == {} and world.gateway.calls == []


def test_an_unknown_package_is_refused_and_changes_nothing(world):
    with pytest.raises(UnknownPackage):
        world.checkout("alice", "coins_free")
    assert world.store.state.payments == {}
