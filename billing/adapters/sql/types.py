"""Timestamps that behave the same on Postgres and SQLite: timezone-aware UTC in and out.

Postgres keeps `timestamptz` but hands values back in the session's time zone; SQLite has no time
zones at all, so there the value is stored as naive UTC, as text (in the form SQLAlchemy's SQLite
DATETIME writes: it sorts by time), and given its zone back when read. A naive datetime is
refused: it would be a guess. The units of work convert with the functions below (statements.py
picks them per database); SQLAlchemy Core (migrations, tests) through UtcDateTime, which uses the
same ones.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def aware(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} refused: pass an aware UTC time")
    return value


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one (from SQLite) already is."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def naive_utc(value: datetime) -> datetime:
    return aware(value).astimezone(UTC).replace(tzinfo=None)


def to_sqlite_text(value: datetime) -> str:
    return naive_utc(value).isoformat(" ", "microseconds")


def from_sqlite_text(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """The column type of every timestamp (tables.py), for SQLAlchemy Core."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return naive_utc(value) if dialect.name == "sqlite" else aware(value).astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)
