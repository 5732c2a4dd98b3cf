from __future__ import annotations

from dataclasses import dataclass

from billing.domain.ledger import LedgerEntry
from billing.domain.limits import check_id, page_size
from billing.domain.pagination import decode_page_token, encode_page_token
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionsPage:
    entries: list[LedgerEntry]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ListTransactions:
    units: UnitRunner

    def __call__(self, user_id: str, size: int = 0, token: str = "") -> TransactionsPage:
        """A page of the user's ledger, newest first, by keyset (constant cost at any depth)."""
        check_id("user_id", user_id)
        limit = page_size(size)
        before = decode_page_token(user_id, token)

        def read(unit: UnitOfWork) -> list[LedgerEntry]:
            return list(unit.ledger.page(user_id, before, limit + 1))

        rows = self.units.run(read, read_only=True)
        if len(rows) <= limit:
            return TransactionsPage(entries=rows, next_page_token="")
        page = rows[:limit]
        return TransactionsPage(
            entries=page, next_page_token=encode_page_token(user_id, page[-1].seq)
        )
