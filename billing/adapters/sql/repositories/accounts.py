"""Accounts and the ledger (implement AccountRepository and LedgerRepository)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from sqlalchemy import RowMapping, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from billing.adapters.sql.repositories.base import SqlRepository
from billing.adapters.sql.tables import accounts, ledger
from billing.domain.ledger import Account, LedgerEntry, TransactionType


class SqlAccountRepository(SqlRepository):
    def get(self, user_id: str) -> Account | None:
        row = self._first(select(accounts).where(accounts.c.user_id == user_id))
        return Account(row["user_id"], row["balance"]) if row else None

    def lock(self, user_id: str) -> Account:
        # One statement creates the row if missing and locks it either way (ON CONFLICT DO
        # UPDATE takes the row lock): two units crediting a new user meet on that row instead of
        # both inserting it, and there is no separate SELECT ... FOR UPDATE round trip.
        dialect = postgresql if self._unit.dialect_name == "postgresql" else sqlite
        upsert = dialect.insert(accounts).values(user_id=user_id, balance=0)
        statement = upsert.on_conflict_do_update(
            index_elements=[accounts.c.user_id], set_={"balance": accounts.c.balance}
        ).returning(accounts.c.balance)
        (balance,) = self._unit.execute(statement).one()
        return Account(user_id, balance)

    def save(self, account: Account) -> None:
        self._save(accounts, {"user_id": account.user_id}, {"balance": account.balance})

    def scan(self) -> Iterator[Account]:
        for row in self._stream(select(accounts).order_by(accounts.c.user_id)):
            yield Account(row["user_id"], row["balance"])


class SqlLedgerRepository(SqlRepository):
    def add(self, entry: LedgerEntry) -> LedgerEntry:
        result = self._unit.execute(insert(ledger).values(
            key=entry.key,
            user_id=entry.user_id,
            type=entry.type.value,
            coins=entry.coins,
            balance_after=entry.balance_after,
            shortfall=entry.shortfall,
            description=entry.description,
            session_id=entry.session_id,
            payment_id=entry.payment_id,
            caller=entry.caller,
            request_id=entry.request_id,
            created_at=entry.created_at,
        ))
        (seq,) = result.inserted_primary_key or (None,)
        assert isinstance(seq, int), "the database assigns every ledger row its seq"
        return replace(entry, seq=seq)

    def get(self, key: str) -> LedgerEntry | None:
        row = self._first(select(ledger).where(ledger.c.key == key))
        return _entry(row) if row else None

    def page(self, user_id: str, before_seq: int | None, limit: int) -> Sequence[LedgerEntry]:
        query = select(ledger).where(ledger.c.user_id == user_id)
        if before_seq is not None:
            query = query.where(ledger.c.seq < before_seq)
        # Keyset pagination on (user_id, seq DESC): the same cost on the first page and the last.
        rows = self._all(query.order_by(ledger.c.seq.desc()).limit(limit))
        return [_entry(row) for row in rows]

    def scan(self) -> Iterator[LedgerEntry]:
        # In the order of ix_ledger_user_id_seq: no sort of the whole ledger.
        for row in self._stream(select(ledger).order_by(ledger.c.user_id, ledger.c.seq)):
            yield _entry(row)


def _entry(row: RowMapping) -> LedgerEntry:
    return LedgerEntry(
        key=row["key"],
        user_id=row["user_id"],
        type=TransactionType(row["type"]),
        coins=row["coins"],
        balance_after=row["balance_after"],
        created_at=row["created_at"],
        description=row["description"],
        session_id=row["session_id"],
        payment_id=row["payment_id"],
        shortfall=row["shortfall"],
        caller=row["caller"],
        request_id=row["request_id"],
        seq=row["seq"],
    )
