"""Check every money invariant of DESIGN.md on the live store (`billing audit`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from billing.domain.ledger import TransactionType, ledger_key
from billing.domain.payment import PAID_STATES
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner

MAX_REPORTED = 100


@dataclass(slots=True)
class AuditReport:
    accounts: int = 0
    ledger_rows: int = 0
    sessions: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def flag(self, violation: str) -> None:
        if len(self.violations) < MAX_REPORTED:
            self.violations.append(violation)
        elif len(self.violations) == MAX_REPORTED:
            self.violations.append("... more violations not shown")


@dataclass(frozen=True, slots=True)
class Audit:
    units: UnitRunner

    def __call__(self) -> AuditReport:
        return self.units.run(self._audit, snapshot=True)

    def _audit(self, unit: UnitOfWork) -> AuditReport:
        report = AuditReport()
        totals: dict[str, int] = {}
        purchases: dict[str, int] = {}
        keys: set[str] = set()
        user, running = None, 0
        for entry in unit.ledger.scan():  # ordered by user, then seq
            report.ledger_rows += 1
            if entry.user_id != user:
                user, running = entry.user_id, 0
            running += entry.coins
            if entry.balance_after != running:
                report.flag(
                    f"ledger {entry.transaction_id} of {user!r}: balance_after "
                    f"{entry.balance_after}, but the rows before it sum to {running}"
                )
            totals[user] = running
            if entry.key in keys:
                report.flag(f"ledger key {entry.key!r} used twice")
            keys.add(entry.key)
            if entry.type is TransactionType.PURCHASE:
                purchases[entry.payment_id] = purchases.get(entry.payment_id, 0) + 1
        for account in unit.accounts.scan():
            report.accounts += 1
            if account.balance < 0:
                report.flag(f"account {account.user_id!r} is below zero: {account.balance}")
            expected = totals.pop(account.user_id, 0)
            if account.balance != expected:
                report.flag(
                    f"account {account.user_id!r} holds {account.balance}, "
                    f"its ledger sums to {expected}"
                )
        for orphan, total in totals.items():
            if total:
                report.flag(f"ledger rows of {orphan!r} sum to {total} with no account")
        for payment_id, count in purchases.items():
            if count > 1:
                report.flag(f"payment {payment_id} credited {count} times")
        for session in unit.payments.scan():
            report.sessions += 1
            credited = purchases.get(session.payment_id, 0) > 0
            if credited != (ledger_key("purchase", session.payment_id) in keys):
                report.flag(f"payment {session.payment_id}: purchase row under another key")
            if session.status in PAID_STATES and not credited:
                report.flag(
                    f"payment {session.payment_id} is {session.status.value} but was never credited"
                )
            if credited and session.status not in PAID_STATES:
                report.flag(
                    f"payment {session.payment_id} was credited but is {session.status.value}"
                )
            if credited != session.is_credited:
                report.flag(
                    f"payment {session.payment_id}: coins_credited disagrees with the ledger"
                )
        return report
