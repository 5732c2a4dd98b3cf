from __future__ import annotations

from dataclasses import dataclass

from billing.domain.limits import check_id
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner


@dataclass(frozen=True, slots=True)
class GetBalance:
    units: UnitRunner

    def __call__(self, user_id: str) -> int:
        check_id("user_id", user_id)

        def read(unit: UnitOfWork) -> int:
            account = unit.accounts.get(user_id)
            return account.balance if account else 0

        return self.units.run(read, read_only=True)
