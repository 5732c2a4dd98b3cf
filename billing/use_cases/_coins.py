"""Spending and granting coins: one keyed ledger row, idempotent by (RPC, user, key)."""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.ledger import LedgerEntry, Posting, TransactionType, ledger_key
from billing.domain.limits import check_coins, check_id, check_key, check_reason
from billing.ports import UnitOfWork
from billing.use_cases import _postings
from billing.use_cases._idempotency import (
    entry_from_json,
    entry_to_json,
    params_hash,
    remember,
    replay,
)
from billing.use_cases._unit import UnitRunner


@dataclass(frozen=True, slots=True, kw_only=True)
class CoinsCommand:
    user_id: str
    coins: int
    reason: str
    idempotency_key: str
    caller: str = ""


def post_coins(
    units: UnitRunner, rpc: str, command: CoinsCommand, max_coins: int, *, debit: bool
) -> LedgerEntry:
    """The returned entry's `balance_after` is the balance the response reports."""
    check_id("user_id", command.user_id)
    check_coins("coins", command.coins, max_coins)
    check_reason("reason", command.reason)
    check_key("idempotency_key", command.idempotency_key)
    fingerprint = params_hash(coins=command.coins, reason=command.reason)

    def work(unit: UnitOfWork) -> LedgerEntry:
        stored = replay(unit, rpc, command.user_id, command.idempotency_key, fingerprint)
        if stored is not None:
            return entry_from_json(stored)
        posting = Posting(
            key=ledger_key(rpc, command.user_id, command.idempotency_key),
            type=TransactionType.USAGE if debit else TransactionType.GRANT,
            coins=command.coins,
            description=command.reason,
            caller=command.caller,
            request_id=command.idempotency_key,
        )
        now = units.now()
        post = _postings.debit if debit else _postings.credit
        entry = post(unit, command.user_id, posting, now)
        remember(
            unit,
            rpc,
            command.user_id,
            command.idempotency_key,
            fingerprint,
            entry_to_json(entry),
            now,
        )
        return entry

    return units.run(work)
