"""The coin-package catalog: what can be bought, at a price set by the server only."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from billing.domain.errors import CatalogError, UnknownPackage
from billing.domain.money import Money, is_supported, stripe_refusal


@dataclass(frozen=True, slots=True)
class CoinPackage:
    id: str
    coins: int
    bonus: int
    price: Money
    display_name: str

    @property
    def total_coins(self) -> int:
        return self.coins + self.bonus


def product_name(coins: int) -> str:
    """The line item's name on Stripe's page, as in the guide."""
    return f"{coins} Coins"


def product_description(coins: int, bonus: int) -> str:
    return f"Get {coins} coins" + (f" + {bonus} bonus coins" if bonus > 0 else "")


class Catalog:
    """An immutable, validated set of packages, in the order they were declared."""

    def __init__(self, packages: Iterable[CoinPackage]) -> None:
        self._by_id: dict[str, CoinPackage] = {}
        for package in packages:
            _check(package)
            if package.id in self._by_id:
                raise CatalogError(f"package {package.id!r} is declared twice")
            self._by_id[package.id] = package
        if not self._by_id:
            raise CatalogError("the catalog declares no package")

    def __iter__(self) -> Iterator[CoinPackage]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, package_id: str) -> CoinPackage:
        try:
            return self._by_id[package_id]
        except KeyError:
            raise UnknownPackage(f"no coin package {package_id!r}") from None

    @classmethod
    def from_toml(cls, text: str) -> Catalog:
        """Parse `[[package]] id, coins, bonus, price = "99.99", currency, display_name`."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise CatalogError(f"catalog is not valid TOML: {error}") from None
        entries = document.get("package")
        if not isinstance(entries, list):
            raise CatalogError("catalog needs a list of [[package]] tables")
        return cls(_package_from_table(index, entry) for index, entry in enumerate(entries))


def _package_from_table(index: int, table: object) -> CoinPackage:
    if not isinstance(table, dict):
        raise CatalogError(f"package #{index + 1} is not a table")
    name = table.get("id", f"#{index + 1}")
    where = f"package {name!r}"
    unknown = set(table) - {"id", "coins", "bonus", "price", "currency", "display_name"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("id", "coins", "price", "currency"):
        if key not in table:
            raise CatalogError(f"{where}: missing {key!r}")
    package_id, coins, bonus = table["id"], table["coins"], table.get("bonus", 0)
    price, currency = table["price"], table["currency"]
    if not isinstance(package_id, str):
        raise CatalogError(f"{where}: id must be a string")
    for key, value in (("coins", coins), ("bonus", bonus)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise CatalogError(f"{where}: {key} must be an integer")
    if not isinstance(price, str):
        raise CatalogError(f'{where}: price must be a quoted decimal string such as "9.99"')
    if not isinstance(currency, str) or not is_supported(currency.upper()):
        raise CatalogError(f"{where}: unknown currency {currency!r}")
    try:
        money = Money.parse(price, currency)
    except ValueError as error:
        raise CatalogError(f"{where}: {error}") from None
    display_name = table.get("display_name") or product_name(coins)
    if not isinstance(display_name, str):
        raise CatalogError(f"{where}: display_name must be a string")
    return CoinPackage(package_id, coins, bonus, money, display_name)


def _check(package: CoinPackage) -> None:
    where = f"package {package.id!r}"
    if not package.id or len(package.id) > 128 or not package.id.isprintable():
        raise CatalogError(f"{where}: id must be 1-128 printable characters")
    if package.coins <= 0:
        raise CatalogError(f"{where}: coins must be positive, not {package.coins}")
    if package.bonus < 0:
        raise CatalogError(f"{where}: bonus must not be negative, not {package.bonus}")
    if package.price.amount_minor <= 0:
        raise CatalogError(f"{where}: price must be positive, not {package.price.format()}")
    refusal = stripe_refusal(package.price)
    if refusal:
        raise CatalogError(f"{where}: {refusal}")


DEFAULT_CATALOG_TOML = """
[[package]]
id = "coins_100"
coins = 100
bonus = 0
price = "0.99"
currency = "USD"
display_name = "100 Coins"

[[package]]
id = "coins_500"
coins = 500
bonus = 50
price = "4.99"
currency = "USD"
display_name = "500 Coins + 50 bonus"

[[package]]
id = "coins_1000"
coins = 1000
bonus = 200
price = "99.99"
currency = "USD"
display_name = "1000 Coins + 200 bonus"
"""


def default_catalog() -> Catalog:
    """The built-in packages, including the guide's 1000 + 200 coins for 99.99 USD."""
    return Catalog.from_toml(DEFAULT_CATALOG_TOML)
