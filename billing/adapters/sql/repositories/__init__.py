"""The repositories of SqlUnitOfWork, one module per aggregate pair, and their SQL."""

from __future__ import annotations

from dataclasses import dataclass

from billing.adapters.sql.repositories.accounts import AccountSql, LedgerSql
from billing.adapters.sql.repositories.inbox import IdempotencySql, InboxSql
from billing.adapters.sql.repositories.payments import PaymentSql, RefundSql
from billing.adapters.sql.statements import Dialect


@dataclass(frozen=True, slots=True)
class RepositorySql:
    """Every statement the repositories run, rendered for one database (once per store)."""

    dialect: Dialect
    accounts: AccountSql
    ledger: LedgerSql
    payments: PaymentSql
    refunds: RefundSql
    inbox: InboxSql
    idempotency: IdempotencySql

    @classmethod
    def for_database(cls, name: str) -> RepositorySql:
        dialect = Dialect(name)
        return cls(dialect, AccountSql(dialect), LedgerSql(dialect), PaymentSql(dialect),
                   RefundSql(dialect), InboxSql(dialect), IdempotencySql(dialect))
