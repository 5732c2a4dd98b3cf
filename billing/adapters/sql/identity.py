"""The identity map of one table within one unit of work (Fowler's Identity Map).

A row the unit loaded or wrote is kept as the database holds it once the unit's pending writes
have been sent: a later lookup through any of its keys is answered from memory, and a save is
compared with it so that only changed columns are written. In a writing unit every read locks
what it returns, so a cached row is a row this unit holds locked until it ends; the map is
emptied when the transaction ends (commit or rollback), with the locks.

Lookups hand out new objects built from the row, never a shared one: a change the caller makes
counts only once it is saved, exactly as in the in-memory store.

A batch read can also record that an identity has no row (`absent`): a later lookup of it then
costs no round trip. Nothing locks a row that does not exist, but nothing has to: a row another
unit adds meanwhile makes this unit's own INSERT of it fail on the unique key, and the unit runs
again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from billing.adapters.sql.statements import Row

Key = Callable[[Row], Hashable]


class RowCache:
    """Rows by their identity (`keys[0]`) and by each other unique key (`keys[1:]`, whose value
    may be None for a row that has none: NULLs are never unique, so never indexed)."""

    __slots__ = ("_keys", "_rows", "_indexes", "_absent")

    def __init__(self, keys: Sequence[Key]) -> None:
        self._keys = keys
        self._rows: dict[Hashable, Row] = {}
        self._indexes: list[dict[Hashable, Hashable]] = [{} for _ in range(len(keys) - 1)]
        self._absent: set[Hashable] = set()

    def absent(self, identity: Hashable) -> None:
        """The database has no row with this identity (as this unit last read it)."""
        if identity not in self._rows:
            self._absent.add(identity)

    def known_absent(self, identity: Hashable) -> bool:
        return identity in self._absent

    def identity(self, row: Row) -> Hashable:
        return self._keys[0](row)

    def find(self, key_number: int, value: Hashable) -> Row | None:
        if key_number == 0:
            return self._rows.get(value)
        identity = self._indexes[key_number - 1].get(value)
        return None if identity is None else self._rows.get(identity)

    def clashes(self, row: Row, *, new: bool) -> bool:
        """Would `row` take a key another cached row holds (or, if `new`, its own identity)?"""
        identity = self._keys[0](row)
        if new and identity in self._rows:
            return True
        for key, index in zip(self._keys[1:], self._indexes, strict=True):
            value = key(row)
            if value is not None and index.get(value, identity) != identity:
                return True
        return False

    def put(self, row: Row) -> None:
        identity = self._keys[0](row)
        self._absent.discard(identity)
        old = self._rows.get(identity)
        self._rows[identity] = row
        for key, index in zip(self._keys[1:], self._indexes, strict=True):
            if old is not None:
                stale = key(old)
                if stale is not None and index.get(stale) == identity:
                    del index[stale]
            value = key(row)
            if value is not None:
                index[value] = identity

    def clear(self) -> None:
        self._rows.clear()
        self._absent.clear()
        for index in self._indexes:
            index.clear()
