import threading

import pytest

from billing.domain.errors import IdempotencyKeyReused, InsufficientCoins, InvalidField
from billing.use_cases.spend_coins import CoinsCommand


def test_grant_then_spend_moves_the_balance_through_the_ledger(world):
    granted = world.grant("alice", 100, reason="welcome")
    spent = world.spend("alice", 30, reason="sword")
    assert (granted.coins, granted.balance_after, granted.type.value) == (100, 100, "GRANT")
    assert (spent.coins, spent.balance_after, spent.type.value) == (-30, 70, "USAGE")
    assert spent.transaction_id.startswith("txn_") and spent.description == "sword"
    assert world.balance("alice") == 70
    world.assert_invariants()


def test_a_spend_larger_than_the_balance_is_refused_and_changes_nothing(world):
    world.grant("alice", 10)
    with pytest.raises(InsufficientCoins):
        world.spend("alice", 11, key="k1")
    assert world.balance("alice") == 10 and len(world.ledger()) == 1


def test_an_unknown_user_has_a_balance_of_zero_and_cannot_spend(world):
    assert world.balance("nobody") == 0
    with pytest.raises(InsufficientCoins):
        world.spend("nobody", 1)


def test_a_retry_with_the_same_key_returns_the_first_response_and_changes_nothing(world):
    world.grant("alice", 100)
    first = world.spend("alice", 30, key="k1")
    world.grant("alice", 5)
    again = world.spend("alice", 30, key="k1")
    assert again == first and again.balance_after == 70
    assert world.balance("alice") == 75


def test_the_same_key_with_other_parameters_is_refused(world):
    world.grant("alice", 100)
    world.spend("alice", 30, key="k1")
    with pytest.raises(IdempotencyKeyReused):
        world.spend("alice", 31, key="k1")
    with pytest.raises(IdempotencyKeyReused):
        world.spend("alice", 30, key="k1", reason="shield")
    assert world.balance("alice") == 70


def test_keys_are_scoped_to_the_rpc_and_the_user(world):
    world.grant("alice", 100, key="k1")
    world.grant("bob", 100, key="k1")
    world.spend("alice", 10, key="k1")
    assert (world.balance("alice"), world.balance("bob")) == (90, 100)


def test_a_failed_spend_is_not_remembered_so_a_retry_runs_again(world):
    with pytest.raises(InsufficientCoins):
        world.spend("alice", 5, key="k1")
    world.grant("alice", 5)
    assert world.spend("alice", 5, key="k1").balance_after == 0


@pytest.mark.parametrize(
    ("field", "command"),
    [
        ("coins", dict(coins=0)),
        ("coins", dict(coins=-5)),
        ("coins", dict(coins=1_000_001)),
        ("user_id", dict(user_id="")),
        ("reason", dict(reason="r" * 501)),
        ("idempotency_key", dict(idempotency_key="")),
        ("idempotency_key", dict(idempotency_key="k" * 65)),
    ],
)
def test_limits_are_typed_errors_that_change_nothing(world, field, command):
    world.grant("alice", 10)
    base = dict(user_id="alice", coins=1, reason="", idempotency_key="k") | command
    for use_case in (world.spend_coins, world.grant_coins):
        with pytest.raises(InvalidField) as error:
            use_case(CoinsCommand(**base))
        assert error.value.field == field
    assert world.balance("alice") == 10 and len(world.ledger()) == 1


def test_concurrent_spends_never_overdraw(world):
    world.grant("alice", 50)
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def spend(index: int) -> None:
        barrier.wait()
        for attempt in range(5):
            try:
                world.spend("alice", 1, key=f"t{index}-{attempt}")
                outcomes.append("ok")
            except InsufficientCoins:
                outcomes.append("short")

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 50 and outcomes.count("short") == 50
    assert world.balance("alice") == 0
    world.assert_invariants()


def test_the_caller_is_kept_on_the_ledger_row(world):
    entry = world.grant_coins(
        CoinsCommand(user_id="alice", coins=5, reason="", idempotency_key="k", caller="admin")
    )
    assert entry.caller == "admin" and entry.request_id == "k"
