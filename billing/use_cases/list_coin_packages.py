from __future__ import annotations

from dataclasses import dataclass

from billing.domain.catalog import Catalog, CoinPackage


@dataclass(frozen=True, slots=True)
class ListCoinPackages:
    catalog: Catalog

    def __call__(self) -> list[CoinPackage]:
        return list(self.catalog)
