import pytest

from billing.domain.errors import (
    AlreadyPaid,
    GatewayUnavailable,
    InvalidField,
    InvalidPageToken,
    NotSessionOwner,
    SessionNotFound,
)
from billing.domain.payment import PaymentStatus
from billing.use_cases.list_coin_packages import ListCoinPackages
from tests.unit.world import checkout_event, paid


def test_payment_status_shows_the_coins_added_and_the_balance(world):
    created = world.checkout("alice")
    view = world.status("alice", created.session_id)
    assert view.session.status is PaymentStatus.PENDING and view.balance == 0
    world.deliver(paid(world, created))
    view = world.status("alice", created.session_id)
    assert (view.session.status, view.session.coins_credited, view.balance) == (
        PaymentStatus.COMPLETED,
        1200,
        1200,
    )
    assert view.session.package_id == "coins_1000"


def test_only_the_owner_sees_a_session(world):
    created = world.checkout("alice")
    with pytest.raises(NotSessionOwner):
        world.status("bob", created.session_id)
    with pytest.raises(SessionNotFound):
        world.status("alice", "cs_missing")
    with pytest.raises(InvalidField):
        world.status("alice", "")


def test_cancel_expires_the_session_on_stripe_and_marks_it_cancelled(world):
    created = world.checkout("alice")
    assert world.cancel("alice", created.session_id) is PaymentStatus.CANCELLED
    assert world.gateway.sessions[created.session_id].snapshot.status == "expired"
    assert world.cancel("alice", created.session_id) is PaymentStatus.CANCELLED
    assert world.gateway.calls.count("expire_checkout") == 1


def test_cancel_of_a_paid_session_is_refused(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    with pytest.raises(AlreadyPaid):
        world.cancel("alice", created.session_id)
    assert world.session(created.session_id).status is PaymentStatus.COMPLETED


def test_a_payment_that_beat_the_cancel_is_credited_and_the_cancel_refused(world):
    created = world.checkout("alice")
    world.gateway.pay(created.session_id)  # Stripe took the money; the webhook is not here yet
    with pytest.raises(AlreadyPaid):
        world.cancel("alice", created.session_id)
    assert world.balance("alice") == 1200
    world.deliver(paid(world, created))
    assert world.balance("alice") == 1200
    world.assert_invariants()


def test_cancel_of_an_ended_session_reports_its_status(world):
    created = world.checkout("alice")
    world.deliver(checkout_event(world, "expired", created, payment_status="unpaid"))
    assert world.cancel("alice", created.session_id) is PaymentStatus.EXPIRED
    assert "expire_checkout" not in world.gateway.calls


def test_cancel_checks_the_owner_and_survives_stripe_being_down(world):
    created = world.checkout("alice")
    with pytest.raises(NotSessionOwner):
        world.cancel("bob", created.session_id)
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.cancel("alice", created.session_id)
    assert world.session(created.session_id).status is PaymentStatus.PENDING


def test_the_ledger_pages_newest_first_with_opaque_tokens(world):
    for index in range(7):
        world.grant("alice", index + 1, key=f"g{index}")
    world.grant("bob", 1)
    first = world.list_transactions("alice", 3)
    assert [e.coins for e in first.entries] == [7, 6, 5]
    second = world.list_transactions("alice", 3, first.next_page_token)
    third = world.list_transactions("alice", 3, second.next_page_token)
    assert [e.coins for e in second.entries] == [4, 3, 2]
    assert [e.coins for e in third.entries] == [1] and third.next_page_token == ""
    with pytest.raises(InvalidPageToken):
        world.list_transactions("bob", 3, first.next_page_token)
    assert len(world.list_transactions("alice").entries) == 7  # page_size 0 means 50


def test_an_exactly_full_last_page_has_no_next_token(world):
    for index in range(4):
        world.grant("alice", 1, key=f"g{index}")
    page = world.list_transactions("alice", 2)
    last = world.list_transactions("alice", 2, page.next_page_token)
    assert len(last.entries) == 2 and last.next_page_token == ""


def test_list_packages_returns_the_catalog(world):
    assert [p.id for p in ListCoinPackages(world.catalog)()] == [p.id for p in world.catalog]
