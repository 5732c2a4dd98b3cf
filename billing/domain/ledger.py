"""Accounts and the ledger: every balance change is a keyed, signed ledger row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing.domain.errors import InsufficientCoins


class TransactionType(StrEnum):
    PURCHASE = "PURCHASE"
    USAGE = "USAGE"
    GRANT = "GRANT"
    REFUND = "REFUND"
    REFUND_REVERSAL = "REFUND_REVERSAL"
    DISPUTE = "DISPUTE"
    DISPUTE_REVERSAL = "DISPUTE_REVERSAL"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One balance change. `key` is unique across the ledger: each credit or debit applies once.

    `seq` is assigned by the store when the row is written (0 before that); it orders a user's
    rows and is the keyset for pagination.

    `position` is the row's place in the one global ledger feed, given after its transaction
    commits (0 until then: not yet in the feed). Once a position is visible, no row is ever given
    a lower one, and per user positions follow seq; cursors of the feed are positions. It says
    where the row stands, not what it is: two entries that differ only in it compare equal (the
    entry `add` returned and the same row read back once it has its position).
    """

    key: str
    user_id: str
    type: TransactionType
    coins: int
    balance_after: int
    created_at: datetime
    description: str = ""
    session_id: str = ""
    payment_id: str = ""
    shortfall: int = 0
    caller: str = ""
    request_id: str = ""
    seq: int = 0
    position: int = field(default=0, compare=False)

    @property
    def transaction_id(self) -> str:
        return f"txn_{self.seq}"


@dataclass(frozen=True, slots=True)
class Posting:
    """What a use case wants written: the account applies it and returns the ledger row."""

    key: str
    type: TransactionType
    coins: int
    description: str = ""
    session_id: str = ""
    payment_id: str = ""
    caller: str = ""
    request_id: str = ""


@dataclass(slots=True)
class Account:
    user_id: str
    balance: int = 0

    def credit(self, posting: Posting, now: datetime) -> LedgerEntry:
        if posting.coins <= 0:
            raise ValueError("a credit adds a positive number of coins")
        return self._apply(posting, posting.coins, 0, now)

    def debit(self, posting: Posting, now: datetime) -> LedgerEntry:
        """Take exactly `posting.coins` (positive) or raise InsufficientCoins."""
        if posting.coins <= 0:
            raise ValueError("a debit takes a positive number of coins")
        if posting.coins > self.balance:
            raise InsufficientCoins(
                f"user {self.user_id!r} has {self.balance} coins, {posting.coins} needed"
            )
        return self._apply(posting, -posting.coins, 0, now)

    def debit_what_is_left(self, posting: Posting, now: datetime) -> LedgerEntry:
        """Take up to `posting.coins`; what cannot be taken is recorded as the shortfall.

        For refunds and disputes decided by the bank: the money is gone whether or not the coins
        were already spent, and a balance never goes below zero.
        """
        taken = min(posting.coins, self.balance)
        return self._apply(posting, -taken, posting.coins - taken, now)

    def _apply(self, posting: Posting, delta: int, shortfall: int, now: datetime) -> LedgerEntry:
        self.balance += delta
        assert self.balance >= 0, "a balance never goes below zero"
        return LedgerEntry(
            key=posting.key,
            user_id=self.user_id,
            type=posting.type,
            coins=delta,
            balance_after=self.balance,
            created_at=now,
            description=posting.description,
            session_id=posting.session_id,
            payment_id=posting.payment_id,
            shortfall=shortfall,
            caller=posting.caller,
            request_id=posting.request_id,
        )


def ledger_key(kind: str, *parts: str) -> str:
    """The unique key of a credit or debit, e.g. ledger_key("purchase", payment_id)."""
    return ":".join((kind, *parts))
