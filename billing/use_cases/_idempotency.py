"""Idempotent retries (DESIGN.md): a key is scoped to (RPC, user); same parameters replay the
first successful response, other parameters are refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime

from billing.domain.errors import IdempotencyKeyReused
from billing.domain.ledger import LedgerEntry, TransactionType
from billing.ports import IdempotencyRecord, UnitOfWork


def params_hash(**params: object) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(
    unit: UnitOfWork, rpc: str, user_id: str, key: str, fingerprint: str
) -> Mapping[str, object] | None:
    """The stored response for this key, or None when the key is new."""
    record = unit.idempotency.get(rpc, user_id, key)
    if record is None:
        return None
    if record.params_hash != fingerprint:
        raise IdempotencyKeyReused(
            f"{key!r} was already used for {rpc} by this user with other parameters"
        )
    return record.response


def remember(
    unit: UnitOfWork,
    rpc: str,
    user_id: str,
    key: str,
    fingerprint: str,
    response: Mapping[str, object],
    now: datetime,
) -> None:
    unit.idempotency.add(IdempotencyRecord(rpc, user_id, key, fingerprint, dict(response), now))


def entry_to_json(entry: LedgerEntry) -> dict[str, object]:
    return {
        "key": entry.key,
        "user_id": entry.user_id,
        "type": entry.type.value,
        "coins": entry.coins,
        "balance_after": entry.balance_after,
        "created_at": entry.created_at.isoformat(),
        "description": entry.description,
        "session_id": entry.session_id,
        "payment_id": entry.payment_id,
        "shortfall": entry.shortfall,
        "caller": entry.caller,
        "request_id": entry.request_id,
        "seq": entry.seq,
    }


def entry_from_json(data: Mapping[str, object]) -> LedgerEntry:
    def text(name: str) -> str:
        return str(data[name])

    def number(name: str) -> int:
        value = data[name]
        assert isinstance(value, int)
        return value

    return LedgerEntry(
        key=text("key"),
        user_id=text("user_id"),
        type=TransactionType(text("type")),
        coins=number("coins"),
        balance_after=number("balance_after"),
        created_at=datetime.fromisoformat(text("created_at")),
        description=text("description"),
        session_id=text("session_id"),
        payment_id=text("payment_id"),
        shortfall=number("shortfall"),
        caller=text("caller"),
        request_id=text("request_id"),
        seq=number("seq"),
    )
