import base64

import pytest

from billing.domain import limits
from billing.domain.errors import InvalidField, InvalidPageToken
from billing.domain.pagination import decode_page_token, encode_page_token


@pytest.mark.parametrize("value", ["", "x" * 129, "bad\nid", "tab\there"])
def test_ids_are_1_to_128_printable_characters(value):
    with pytest.raises(InvalidField) as error:
        limits.check_id("user_id", value)
    assert error.value.field == "user_id"
    assert error.value.metadata == {"field": "user_id"}


def test_ids_may_be_unicode():
    assert limits.check_id("user_id", "usuário-7") == "usuário-7"
    assert limits.check_id("user_id", "x" * 128)


@pytest.mark.parametrize("value", ["", "k" * 65, "clé", "new\nline"])
def test_keys_are_1_to_64_printable_ascii(value):
    with pytest.raises(InvalidField, match="idempotency_key"):
        limits.check_key("idempotency_key", value)


@pytest.mark.parametrize("coins", [0, -1, 101])
def test_coins_are_between_1_and_the_maximum(coins):
    with pytest.raises(InvalidField, match="between 1 and 100"):
        limits.check_coins("coins", coins, 100)


def test_reasons_are_at_most_500_printable_characters():
    assert limits.check_reason("reason", "") == ""
    with pytest.raises(InvalidField):
        limits.check_reason("reason", "r" * 501)
    with pytest.raises(InvalidField):
        limits.check_reason("reason", "bell\x07")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x/y",
        "javascript:alert(1)",
        "https://",
        "/relative",
        "https://x/" + "a" * 2048,
        "https://exämple.com/",
        "http://[::1",
    ],
)
def test_urls_are_absolute_http_and_short(url):
    with pytest.raises(InvalidField):
        limits.check_url("success_url", url)


def test_page_size_zero_means_fifty_and_the_most_is_five_hundred():
    assert limits.page_size(0) == 50
    assert limits.page_size(500) == 500
    for bad in (-1, 501):
        with pytest.raises(InvalidField, match="page_size"):
            limits.page_size(bad)


def test_page_tokens_round_trip_for_their_own_user_only():
    token = encode_page_token("alice", 42)
    assert decode_page_token("alice", token) == 42
    assert decode_page_token("alice", "") is None
    with pytest.raises(InvalidPageToken, match="another query"):
        decode_page_token("bob", token)


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "bm90LWEtdG9rZW4",
        base64.urlsafe_b64encode(b"2.abc.5").decode(),
        base64.urlsafe_b64encode(b"1.abc.-5").decode(),
        "\u00e9\u00e9",
        "////",
    ],
)
def test_malformed_page_tokens_are_refused(token):
    with pytest.raises(InvalidPageToken):
        decode_page_token("alice", token)


def test_a_forged_token_past_a_64_bit_sequence_is_malformed():
    forged = encode_page_token("alice", 2**63)
    with pytest.raises(InvalidPageToken):
        decode_page_token("alice", forged)
