"""The webhook inbox and idempotency records (implement EventInbox and IdempotencyStore)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import RowMapping, or_, select

from billing.adapters.sql.repositories.base import SqlRepository
from billing.adapters.sql.tables import idempotency_records, webhook_inbox
from billing.domain.payment_events import FAILED_OUTCOMES, InboxEvent, InboxOutcome
from billing.ports import IdempotencyRecord


class SqlEventInbox(SqlRepository):
    def get(self, event_id: str) -> InboxEvent | None:
        row = self._first(select(webhook_inbox).where(webhook_inbox.c.event_id == event_id))
        return _event(row) if row else None

    def add(self, event: InboxEvent) -> None:
        self._insert(webhook_inbox, {"event_id": event.event_id, **_event_values(event)})

    def save(self, event: InboxEvent) -> None:
        self._save(webhook_inbox, {"event_id": event.event_id}, _event_values(event))

    def recent(self, failed_only: bool, limit: int) -> Sequence[InboxEvent]:
        query = select(webhook_inbox)
        if failed_only:
            query = query.where(
                webhook_inbox.c.outcome.in_(sorted(outcome.value for outcome in FAILED_OUTCOMES))
            )
        query = query.order_by(
            webhook_inbox.c.received_at.desc(), webhook_inbox.c.event_id.desc()
        ).limit(limit)
        return [_event(row) for row in self._all(query)]

    def due(self, now: datetime, limit: int) -> Sequence[InboxEvent]:
        query = (
            select(webhook_inbox)
            .where(
                webhook_inbox.c.outcome == InboxOutcome.UNMATCHED.value,
                or_(webhook_inbox.c.next_attempt_at.is_(None),
                    webhook_inbox.c.next_attempt_at <= now),
            )
            .order_by(webhook_inbox.c.received_at, webhook_inbox.c.event_id)
            .limit(limit)
        )
        return [_event(row) for row in self._all(query)]


def _event_values(event: InboxEvent) -> dict[str, object]:
    return {
        "type": event.type,
        "payload": event.payload,
        "received_at": event.received_at,
        "processed_at": event.processed_at,
        "attempts": event.attempts,
        "outcome": event.outcome.value,
        "error": event.error,
        "next_attempt_at": event.next_attempt_at,
    }


def _event(row: RowMapping) -> InboxEvent:
    return InboxEvent(
        event_id=row["event_id"],
        type=row["type"],
        payload=row["payload"],
        received_at=row["received_at"],
        outcome=InboxOutcome(row["outcome"]),
        processed_at=row["processed_at"],
        attempts=row["attempts"],
        error=row["error"],
        next_attempt_at=row["next_attempt_at"],
    )


class SqlIdempotencyStore(SqlRepository):
    def get(self, rpc: str, user_id: str, key: str) -> IdempotencyRecord | None:
        table = idempotency_records
        row = self._first(
            select(table).where(table.c.rpc == rpc, table.c.user_id == user_id, table.c.key == key)
        )
        if row is None:
            return None
        return IdempotencyRecord(
            rpc=row["rpc"],
            user_id=row["user_id"],
            key=row["key"],
            params_hash=row["params_hash"],
            response=json.loads(row["response"]),
            created_at=row["created_at"],
        )

    def add(self, record: IdempotencyRecord) -> None:
        self._insert(idempotency_records, {
            "rpc": record.rpc,
            "user_id": record.user_id,
            "key": record.key,
            "params_hash": record.params_hash,
            "response": json.dumps(dict(record.response), sort_keys=True),
            "created_at": record.created_at,
        })
