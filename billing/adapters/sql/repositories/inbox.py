"""The webhook inbox and idempotency records (implement EventInbox and IdempotencyStore)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from billing.adapters.sql.repositories.base import SqlRepository, key_of
from billing.adapters.sql.statements import Dialect, Row, TableSql
from billing.adapters.sql.tables import idempotency_records, webhook_inbox
from billing.domain.payment_events import FAILED_OUTCOMES, InboxEvent, InboxOutcome
from billing.ports import IdempotencyRecord

if TYPE_CHECKING:
    from billing.adapters.sql.unit_of_work import SqlUnitOfWork

INBOX_COLUMNS = (
    "event_id", "type", "payload", "received_at", "processed_at", "attempts", "outcome", "error",
    "next_attempt_at",
)
IDEMPOTENCY_COLUMNS = ("rpc", "user_id", "key", "params_hash", "response", "created_at")


class InboxSql:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.table = t = TableSql(dialect, webhook_inbox, INBOX_COLUMNS, ["event_id"])
        self.keys = (key_of(t, "event_id"),)
        self.by_id = t.read("by_id", "event_id = ?")
        self.by_ids = t.read("by_ids", "event_id = ANY(?) ORDER BY event_id")  # Postgres only
        newest_first = "ORDER BY received_at DESC, event_id DESC LIMIT ?"
        self.recent = t.read("recent", f"TRUE {newest_first}")
        failed = ", ".join(f"'{outcome.value}'" for outcome in sorted(FAILED_OUTCOMES))
        self.recent_failed = t.read("recent_failed", f"outcome IN ({failed}) {newest_first}")
        self.due = t.read("due", (
            f"outcome = '{InboxOutcome.UNMATCHED.value}'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            " ORDER BY received_at, event_id LIMIT ?"
        ))


class SqlEventInbox(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.inbox
        super().__init__(unit, self._sql.table, self._sql.keys)

    def get(self, event_id: str) -> InboxEvent | None:
        row = self._find(self._sql.by_id, 0, event_id, (event_id,))
        return _event(row, self._sql.dialect) if row else None

    def get_many(self, event_ids: Sequence[str]) -> Mapping[str, InboxEvent]:
        if not self._sql.dialect.is_postgres:  # in-process: one at a time costs nothing more
            found = ((event_id, self.get(event_id)) for event_id in event_ids)
            return {event_id: event for event_id, event in found if event is not None}
        rows = self._all_by(self._sql.by_ids, 0, event_ids) if event_ids else []
        return {row[0]: _event(row, self._sql.dialect) for row in rows}

    def add(self, event: InboxEvent) -> None:
        self._add(_event_row(event, self._sql.dialect), f"event {event.event_id!r}")

    def save(self, event: InboxEvent) -> None:
        self._save(_event_row(event, self._sql.dialect), f"event {event.event_id!r}")

    def recent(self, failed_only: bool, limit: int) -> Sequence[InboxEvent]:
        rows = self._all(self._sql.recent_failed if failed_only else self._sql.recent, (limit,))
        return [_event(row, self._sql.dialect) for row in rows]

    def due(self, now: datetime, limit: int) -> Sequence[InboxEvent]:
        rows = self._all(self._sql.due, (self._sql.dialect.time_to_db(now), limit))
        return [_event(row, self._sql.dialect) for row in rows]


def _event_row(event: InboxEvent, dialect: Dialect) -> Row:
    return (
        event.event_id, event.type, event.payload, dialect.time_to_db(event.received_at),
        dialect.time_or_none_to_db(event.processed_at), event.attempts, event.outcome.value,
        event.error, dialect.time_or_none_to_db(event.next_attempt_at),
    )


def _event(row: Row, dialect: Dialect) -> InboxEvent:
    (event_id, type_, payload, received_at, processed_at, attempts, outcome, error,
     next_attempt_at) = row
    return InboxEvent(
        event_id=event_id,
        type=type_,
        payload=payload,
        received_at=dialect.time_from_db(received_at),
        outcome=InboxOutcome(outcome),
        processed_at=dialect.time_or_none_from_db(processed_at),
        attempts=attempts,
        error=error,
        next_attempt_at=dialect.time_or_none_from_db(next_attempt_at),
    )


class IdempotencySql:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.table = t = TableSql(dialect, idempotency_records, IDEMPOTENCY_COLUMNS,
                                  ["rpc", "user_id", "key"])
        self.keys = (key_of(t, "rpc", "user_id", "key"),)
        self.by_scope = t.read("by_scope", "rpc = ? AND user_id = ? AND key = ?")


class SqlIdempotencyStore(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.idempotency
        super().__init__(unit, self._sql.table, self._sql.keys)

    def get(self, rpc: str, user_id: str, key: str) -> IdempotencyRecord | None:
        scope = (rpc, user_id, key)
        row = self._find(self._sql.by_scope, 0, scope, scope)
        if row is None:
            return None
        rpc, user_id, key, params_hash, response, created_at = row
        return IdempotencyRecord(rpc, user_id, key, params_hash, json.loads(response),
                                 self._sql.dialect.time_from_db(created_at))

    def add(self, record: IdempotencyRecord) -> None:
        self._add((
            record.rpc, record.user_id, record.key, record.params_hash,
            json.dumps(dict(record.response), sort_keys=True),
            self._sql.dialect.time_to_db(record.created_at),
        ), "idempotency key")
