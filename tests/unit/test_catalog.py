import pytest

from billing.domain.catalog import Catalog, default_catalog, product_description
from billing.domain.errors import CatalogError, UnknownPackage
from billing.domain.money import Money


def toml(**fields: object) -> str:
    body = {"id": "p", "coins": 10, "bonus": 0, "price": "0.99", "currency": "USD"} | fields
    lines = [
        f"{key} = {value!r}".replace("'", '"') for key, value in body.items() if value is not None
    ]
    return "[[package]]\n" + "\n".join(lines) + "\n"


def test_the_default_catalog_sells_the_guides_package_and_smaller_ones():
    catalog = default_catalog()
    guide = catalog.get("coins_1000")
    assert (guide.coins, guide.bonus, guide.price) == (1000, 200, Money("USD", 9999))
    assert guide.total_coins == 1200
    assert len(catalog) >= 3
    assert min(p.price.amount_minor for p in catalog) < guide.price.amount_minor


def test_reads_packages_from_toml_in_declared_order():
    text = toml(id="a") + toml(
        id="b", coins=5, bonus=1, price="500", currency="JPY", display_name="Five"
    )
    catalog = Catalog.from_toml(text)
    assert [p.id for p in catalog] == ["a", "b"]
    assert catalog.get("b").price == Money("JPY", 500)
    assert catalog.get("b").display_name == "Five"
    assert catalog.get("a").display_name == "10 Coins"


def test_an_unknown_package_is_a_typed_error():
    with pytest.raises(UnknownPackage):
        default_catalog().get("coins_1000000")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (toml(id="a") + toml(id="a"), "declared twice"),
        (toml(coins=0), "coins must be positive"),
        (toml(coins=-5), "coins must be positive"),
        (toml(bonus=-1), "bonus must not be negative"),
        (toml(price="0.00"), "price must be positive"),
        (toml(price="-1.00"), "price must be positive"),
        (toml(currency="XYZ"), "unknown currency"),
        (toml(price="0.49"), "below Stripe's minimum"),
        (toml(price="1.235", currency="KWD"), "multiples of 10"),
        (toml(price="0.999"), "decimals"),
        (toml(price=None), "missing 'price'"),
        (toml(coins="ten"), "coins must be an integer"),
        (toml(id=""), "1-128 printable"),
        ("[[package]]\nid = 'p'\ncoins = 1\nprice = 1.5\ncurrency = 'USD'\n", "quoted decimal"),
        (toml(colour="red"), "unknown keys"),
        ("this is = = not toml", "not valid TOML"),
        ("title = 'no packages'", "list of [[package]]"),
        ("package = []", "declares no package"),
        ("package = [1]", "not a table"),
    ],
)
def test_refuses_a_bad_catalog_naming_the_problem(text, problem):
    with pytest.raises(CatalogError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Catalog.from_toml(text)


def test_describes_the_product_as_the_guide_does():
    assert product_description(1000, 200) == "Get 1000 coins + 200 bonus coins"
    assert product_description(100, 0) == "Get 100 coins"
