"""Money in integer minor units, by each currency's ISO 4217 exponent."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# ISO 4217 exponents of the currencies Stripe Checkout settles that this service accepts.
# Zero-decimal and three-decimal currencies are listed explicitly; the rest use two.
_ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
_THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())
_TWO_DECIMAL = frozenset(
    "AED AUD BGN BRL CAD CHF CNY CZK DKK EUR GBP HKD HUF IDR ILS INR MXN MYR NOK NZD PHP PLN "
    "RON SAR SEK SGD THB TRY TWD USD ZAR".split()
)

# Stripe's minimum charge per currency, in minor units. Unlisted currencies fall back to the
# equivalent of 0.50 USD in their own major unit, which errs on the side of refusing.
_STRIPE_MINIMUM_MINOR = {
    "USD": 50,
    "AED": 200,
    "AUD": 50,
    "BGN": 100,
    "BRL": 50,
    "CAD": 50,
    "CHF": 50,
    "CZK": 1500,
    "DKK": 250,
    "EUR": 50,
    "GBP": 30,
    "HKD": 400,
    "HUF": 17500,
    "INR": 50,
    "JPY": 50,
    "MXN": 1000,
    "MYR": 200,
    "NOK": 300,
    "NZD": 50,
    "PLN": 200,
    "RON": 200,
    "SEK": 300,
    "SGD": 50,
    "THB": 1000,
    "BHD": 200,
    "JOD": 400,
    "KWD": 200,
    "OMR": 200,
    "TND": 1500,
}


def exponent(currency: str) -> int:
    """The number of decimals of `currency` (upper case ISO 4217); ValueError if unknown."""
    if currency in _TWO_DECIMAL:
        return 2
    if currency in _ZERO_DECIMAL:
        return 0
    if currency in _THREE_DECIMAL:
        return 3
    raise ValueError(f"unknown or unsupported currency {currency!r}")


def is_supported(currency: str) -> bool:
    return currency in _TWO_DECIMAL or currency in _ZERO_DECIMAL or currency in _THREE_DECIMAL


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in the currency's minor unit: Money("USD", 1999) is 19.99 USD."""

    currency: str
    amount_minor: int

    def __post_init__(self) -> None:
        exponent(self.currency)  # refuses unknown currencies
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError("amount_minor must be an int")

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Parse a decimal string exactly: parse("19.99", "USD") == Money("USD", 1999).

        More decimals than the currency has ("0.001" USD, "1.5" JPY) is a ValueError, never a
        silent rounding.
        """
        currency = currency.upper()
        places = exponent(currency)
        try:
            value = Decimal(text.strip())
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a decimal amount") from None
        if not value.is_finite():
            raise ValueError(f"{text!r} is not a finite amount")
        minor = value.scaleb(places)
        if minor != minor.to_integral_value():
            raise ValueError(f"{text!r} has more than {places} decimals for {currency}")
        return cls(currency, int(minor))

    def format(self) -> str:
        """The amount as a plain decimal string with the currency: "19.99 USD"."""
        places = exponent(self.currency)
        value = Decimal(self.amount_minor).scaleb(-places)
        return f"{value:.{places}f} {self.currency}"

    def same_as(self, currency: str, amount_minor: int) -> bool:
        """Compare with an amount reported by Stripe (lower-case currency)."""
        return self.currency == currency.upper() and self.amount_minor == amount_minor


def stripe_refusal(price: Money) -> str | None:
    """Why Stripe would refuse to charge `price`, or None if it would accept it."""
    minimum = _STRIPE_MINIMUM_MINOR.get(price.currency)
    if minimum is None:
        minimum = 10 ** exponent(price.currency) // 2
    if price.amount_minor < minimum:
        floor = Money(price.currency, minimum).format()
        return f"{price.format()} is below Stripe's minimum charge of {floor}"
    if exponent(price.currency) == 3 and price.amount_minor % 10:
        return f"{price.format()}: Stripe needs three-decimal amounts in multiples of 10"
    return None
