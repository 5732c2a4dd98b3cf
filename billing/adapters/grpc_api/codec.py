"""Domain values to protobuf messages (the only direction the servicer needs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from billing.domain.catalog import CoinPackage
from billing.domain.ledger import LedgerEntry, TransactionType
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus
from billing.v1 import billing_pb2 as pb


def money(value: Money) -> pb.Money:
    return pb.Money(currency=value.currency, amount_minor=value.amount_minor)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime) -> Timestamp:
    """Exact, in integers (a naive time counts as UTC, as Timestamp.FromDatetime has it), and a
    few times cheaper than FromDatetime on every response that carries a time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    micros = (value - _EPOCH) // _MICROSECOND
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


_STATUSES = {s: cast(pb.PaymentStatus, pb.PaymentStatus.Value(f"PAYMENT_STATUS_{s.value}"))
             for s in PaymentStatus}
_TYPES = {t: cast(pb.TransactionType, pb.TransactionType.Value(f"TRANSACTION_TYPE_{t.value}"))
          for t in TransactionType}


def payment_status(status: PaymentStatus) -> pb.PaymentStatus:
    return _STATUSES[status]


def transaction_type(kind: TransactionType) -> pb.TransactionType:
    return _TYPES[kind]


def coin_package(package: CoinPackage) -> pb.CoinPackage:
    return pb.CoinPackage(
        id=package.id,
        coins=package.coins,
        bonus=package.bonus,
        price=money(package.price),
        display_name=package.display_name,
    )


def transaction(entry: LedgerEntry) -> pb.Transaction:
    return pb.Transaction(
        id=entry.transaction_id,
        user_id=entry.user_id,
        type=transaction_type(entry.type),
        coins=entry.coins,
        balance_after=entry.balance_after,
        session_id=entry.session_id,
        description=entry.description,
        create_time=timestamp(entry.created_at),
        caller=entry.caller,
    )
