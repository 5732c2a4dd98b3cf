"""Accounts and the ledger (implement AccountRepository and LedgerRepository).

A ledger row's `seq` orders a user's rows and is its public id (txn_<seq>). On Postgres it is
drawn from the ledger's sequence (CACHE 1, never in blocks) inside the writer's transaction and
after the user's account row is locked, so that per user, seq order is commit order (the ledger
feed relies on it). The lock is one statement that also draws the value (`nextval` in its
RETURNING, evaluated once the row is locked); the unit keeps it for that user's next ledger row,
which is then written with an explicit seq in the flush: `add` returns the entry with its seq
without a round trip of its own. A second row for the same user in one unit (rare) draws another
value with a round trip, still after the lock. SQLite assigns seq at INSERT (AUTOINCREMENT).

A row's feed position is given after its transaction commits. On Postgres a row is written with
none (NULL) and the sequencer (sequencer.py) numbers committed rows in seq order; Postgres makes
a commit visible before it releases the transaction's row locks, so a snapshot that sees a user's
row sees all the user's earlier rows too, and a user's positions follow seq. On SQLite a writing
unit holds the database's write lock from its first statement to COMMIT, so seq order is commit
order: just before COMMIT, in the same transaction, the unit's new rows get their seq as their
position (`number`, sent by the unit).
Feed reads take no locks, in any unit: a row's position never changes once given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from billing.adapters.sql.notifications import STATUS_CHANNEL
from billing.adapters.sql.repositories.base import SqlRepository, key_of
from billing.adapters.sql.statements import Dialect, Read, Row, Statement, TableSql
from billing.adapters.sql.tables import LEDGER_SEQUENCE, accounts, ledger
from billing.domain.errors import TransientConflict
from billing.domain.ledger import Account, LedgerEntry, TransactionType

if TYPE_CHECKING:
    from billing.adapters.sql.unit_of_work import SqlUnitOfWork

ACCOUNT_COLUMNS = ("user_id", "balance")
LEDGER_COLUMNS = (
    "seq", "key", "user_id", "type", "coins", "balance_after", "shortfall", "description",
    "session_id", "payment_id", "caller", "request_id", "created_at", "feed_position",
)


class AccountSql:
    def __init__(self, dialect: Dialect) -> None:
        self.table = t = TableSql(dialect, accounts, ACCOUNT_COLUMNS, ["user_id"])
        self.keys = (key_of(t, "user_id"),)
        self.by_user = t.read("by_user", "user_id = ?")
        # One statement creates the row if missing and locks it either way (ON CONFLICT DO
        # UPDATE takes the row lock): two units crediting a new user meet on that row instead of
        # both inserting it. On Postgres its RETURNING also draws the user's next ledger seq.
        draw = f", nextval('{LEDGER_SEQUENCE}')" if dialect.is_postgres else ""
        lock = t.statement("lock", (
            "INSERT INTO accounts (user_id, balance) VALUES (?, 0) ON CONFLICT (user_id)"
            f" DO UPDATE SET balance = accounts.balance RETURNING balance{draw}"
        ))
        self.lock = Read(lock, lock)
        if dialect.is_postgres:  # several at once, in the order given (ON CONFLICT: each once)
            many = t.statement("lock_many", (
                "INSERT INTO accounts (user_id, balance)"
                " SELECT user_id, 0 FROM unnest(?::text[]) WITH ORDINALITY AS u(user_id, n)"
                " ORDER BY n ON CONFLICT (user_id) DO UPDATE SET balance = accounts.balance"
                f" RETURNING user_id, balance{draw}"
            ))
            self.lock_many = Read(many, many)
        self.scan = t.statement("scan", f"{t.select} ORDER BY user_id")


class SqlAccountRepository(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.accounts
        super().__init__(unit, self._sql.table, self._sql.keys)

    def get(self, user_id: str) -> Account | None:
        row = self._find(self._sql.by_user, 0, user_id, (user_id,))
        return Account(row[0], row[1]) if row else None

    def lock(self, user_id: str) -> Account:
        cache = self._cache
        row = cache.find(0, user_id) if cache is not None else None
        if row is None:  # in a writing unit every cached row is a locked one
            ((balance, *seq),) = self._unit.query(self._sql.lock, (user_id,))
            if seq:
                self._unit.reserved_seqs[user_id] = seq[0]
            row = (user_id, balance)
            if cache is not None:
                cache.put(row)
        return Account(row[0], row[1])

    def lock_many(self, user_ids: Sequence[str]) -> Sequence[Account]:
        cache = self._cache
        wanted = [user_id for user_id in dict.fromkeys(user_ids)
                  if cache is None or cache.find(0, user_id) is None]
        if wanted and self._sql.table.dialect.is_postgres:
            for user_id, balance, *seq in self._unit.query(self._sql.lock_many, (wanted,)):
                if seq:
                    self._unit.reserved_seqs[user_id] = seq[0]
                if cache is not None:
                    cache.put((user_id, balance))
        return [self.lock(user_id) for user_id in user_ids]  # from the map, or one by one

    def save(self, account: Account) -> None:
        self._save((account.user_id, account.balance), "account")

    def scan(self) -> Iterator[Account]:
        for user_id, balance in self._stream(self._sql.scan):
            yield Account(user_id, balance)


class LedgerSql:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.table = t = TableSql(dialect, ledger, LEDGER_COLUMNS, ["seq"])
        self.keys = (key_of(t, "key"),)
        # Postgres: the seq comes with the row (drawn after the account lock); SQLite: assigned.
        self.insert = t.insert if dialect.is_postgres else t.statement(
            "insert_assigning_seq", t.insert_sql(LEDGER_COLUMNS[1:]))
        next_seq = t.statement("next_seq", f"SELECT nextval('{LEDGER_SEQUENCE}')")
        self.next_seq = Read(next_seq, next_seq)
        self.by_key = t.read("by_key", "key = ?")
        # Keyset pagination on (user_id, seq DESC): the same cost on the first page and the last.
        self.newest = t.read("newest", "user_id = ? ORDER BY seq DESC LIMIT ?")
        self.older = t.read("older", "user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?")
        # In the order of ix_ledger_user_id_seq: no sort of the whole ledger.
        self.scan = t.statement("scan", f"{t.select} ORDER BY user_id, seq")
        # The feed by keyset on position, every user's (ix_ledger_feed_position) or one user's
        # (ix_ledger_user_id_feed_position), with or without an upper bound; NULL is never > ?.
        self.feed = {
            (per_user, bounded): _unlocked(t.statement(
                f"feed{'_user' if per_user else ''}{'_upto' if bounded else ''}",
                f"{t.select} WHERE {'user_id = ? AND ' if per_user else ''}feed_position > ?"
                f"{' AND feed_position <= ?' if bounded else ''}"
                " ORDER BY feed_position LIMIT ?",
            ))
            for per_user in (False, True) for bounded in (False, True)
        }
        self.feed_end = _unlocked(t.statement(
            "feed_end", "SELECT COALESCE(MAX(feed_position), 0) FROM ledger"))
        # SQLite: a writing unit's new rows, numbered just before its COMMIT. It holds the write
        # lock, so the seqs from its first new row to its last are all its own.
        self.number = t.statement(
            "number", "UPDATE ledger SET feed_position = seq WHERE seq BETWEEN ? AND ?")
        # Postgres: a status change with no ledger row of its own wakes the watchers of its
        # session, with the commit (the sequencer's notification covers changes with a row).
        self.notify_status = dialect.statement(
            "billing_notify_status", f"SELECT pg_notify('{STATUS_CHANNEL}', ?)")


class SqlLedgerRepository(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.ledger
        super().__init__(unit, self._sql.table, self._sql.keys)

    def add(self, entry: LedgerEntry) -> LedgerEntry:
        sql, unit = self._sql, self._unit
        values = _values(entry, sql.dialect)
        if self._cache is not None and self._cache.find(0, entry.key) is not None:
            raise TransientConflict(f"duplicate ledger key {entry.key!r}")
        if sql.dialect.is_postgres:
            seq = unit.reserved_seqs.pop(entry.user_id, None)
            if seq is None:  # not locked in this unit, or its second row: draw one now
                ((seq,),) = unit.query(sql.next_seq, ())
            unit.write(sql.insert, (seq, *values))
        else:
            seq = unit.insert_rowid(sql.insert, values)
            unit.unnumbered_seqs.append(seq)
        if self._cache is not None:
            self._cache.put((seq, *values))
        return replace(entry, seq=seq)

    def get(self, key: str) -> LedgerEntry | None:
        row = self._find(self._sql.by_key, 0, key, (key,))
        return _entry(row, self._sql.dialect) if row else None

    def page(self, user_id: str, before_seq: int | None, limit: int) -> Sequence[LedgerEntry]:
        if before_seq is None:
            rows = self._all(self._sql.newest, (user_id, limit))
        else:
            rows = self._all(self._sql.older, (user_id, before_seq, limit))
        return [_entry(row, self._sql.dialect) for row in rows]

    def scan(self) -> Iterator[LedgerEntry]:
        for row in self._stream(self._sql.scan):
            yield _entry(row, self._sql.dialect)

    def feed(
        self, after: int, user_id: str | None, limit: int, upto: int | None = None
    ) -> Sequence[LedgerEntry]:
        read = self._sql.feed[user_id is not None, upto is not None]
        params = [*([user_id] if user_id is not None else ()), after,
                  *([upto] if upto is not None else ()), limit]
        return [_entry(row, self._sql.dialect) for row in self._unit.query(read, params)]

    def feed_end(self) -> int:
        ((end,),) = self._unit.query(self._sql.feed_end, ())
        return int(end)


def _values(entry: LedgerEntry, dialect: Dialect) -> Row:
    """The new row without its seq (and, still, without a feed position)."""
    return (
        entry.key, entry.user_id, entry.type.value, entry.coins, entry.balance_after,
        entry.shortfall, entry.description, entry.session_id, entry.payment_id, entry.caller,
        entry.request_id, dialect.time_to_db(entry.created_at), None,
    )


def _unlocked(statement: Statement) -> Read:
    """A read that locks nothing even in a writing unit."""
    return Read(statement, statement)


def _entry(row: Row, dialect: Dialect) -> LedgerEntry:
    (seq, key, user_id, type_, coins, balance_after, shortfall, description, session_id,
     payment_id, caller, request_id, created_at, position) = row
    return LedgerEntry(
        key=key,
        user_id=user_id,
        type=TransactionType(type_),
        coins=coins,
        balance_after=balance_after,
        created_at=dialect.time_from_db(created_at),
        description=description,
        session_id=session_id,
        payment_id=payment_id,
        shortfall=shortfall,
        caller=caller,
        request_id=request_id,
        seq=seq,
        position=position or 0,
    )
