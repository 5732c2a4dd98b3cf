from decimal import Decimal

import pytest

from billing.domain.money import Money, exponent, stripe_refusal


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("19.99", "USD", 1999),
        ("0.29", "USD", 29),  # float(0.29) * 100 == 28.999999999999996
        ("99.99", "usd", 9999),
        ("500", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("10", "EUR", 1000),
        ("10.5", "EUR", 1050),
    ],
)
def test_parses_decimal_strings_exactly_into_minor_units(text, currency, minor):
    assert Money.parse(text, currency) == Money(currency.upper(), minor)


def test_the_guides_float_arithmetic_loses_a_cent_where_parsing_does_not():
    assert int(19.99 * 100) == 1998
    assert Money.parse("19.99", "USD").amount_minor == 1999


@pytest.mark.parametrize(
    ("text", "currency"), [("0.001", "USD"), ("1.5", "JPY"), ("1.2345", "KWD")]
)
def test_refuses_more_decimals_than_the_currency_has(text, currency):
    with pytest.raises(ValueError, match="decimals"):
        Money.parse(text, currency)


@pytest.mark.parametrize("text", ["abc", "", "NaN", "Infinity", "1,00"])
def test_refuses_text_that_is_not_a_finite_amount(text):
    with pytest.raises(ValueError):
        Money.parse(text, "USD")


def test_knows_each_currencys_exponent_and_refuses_unknown_ones():
    assert (exponent("USD"), exponent("JPY"), exponent("KWD")) == (2, 0, 3)
    with pytest.raises(ValueError, match="unknown"):
        Money("XYZ", 100)
    with pytest.raises(ValueError, match="unknown"):
        Money.parse("1.00", "usdx")


def test_amounts_must_be_integers():
    with pytest.raises(TypeError):
        Money("USD", Decimal("1.5"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money("USD", True)


def test_formats_with_the_currencys_decimals():
    assert Money("USD", 1999).format() == "19.99 USD"
    assert Money("JPY", 500).format() == "500 JPY"
    assert Money("KWD", 1230).format() == "1.230 KWD"


def test_compares_with_stripes_lower_case_currencies():
    assert Money("USD", 1999).same_as("usd", 1999)
    assert not Money("USD", 1999).same_as("eur", 1999)
    assert not Money("USD", 1999).same_as("usd", 1998)


@pytest.mark.parametrize(
    ("money", "refused"),
    [
        (Money("USD", 50), False),
        (Money("USD", 49), True),
        (Money("GBP", 30), False),
        (Money("JPY", 49), True),
        (Money("KWD", 1235), True),  # three decimals: multiples of 10 only
        (Money("KWD", 1230), False),
        (Money("IDR", 40), True),  # no listed minimum: half a major unit
    ],
)
def test_knows_what_stripe_would_refuse_to_charge(money, refused):
    assert (stripe_refusal(money) is not None) == refused
