"""Grant coins (support, promotions): a keyed credit, idempotent by key."""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.ledger import LedgerEntry
from billing.domain.limits import DEFAULT_MAX_COINS
from billing.use_cases._coins import CoinsCommand, post_coins
from billing.use_cases._unit import UnitRunner

__all__ = ["CoinsCommand", "GrantCoins"]


@dataclass(frozen=True, slots=True)
class GrantCoins:
    units: UnitRunner
    max_coins: int = DEFAULT_MAX_COINS
    rpc = "GrantCoins"

    def __call__(self, command: CoinsCommand) -> LedgerEntry:
        return post_coins(self.units, self.rpc, command, self.max_coins, debit=False)
