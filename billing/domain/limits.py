"""The input limits of DESIGN.md, shared by every entry point.

Rule 8: bad input gets a clear error naming the field, and changes nothing.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from billing.domain.errors import InvalidField

MAX_ID_LENGTH = 128
MAX_KEY_LENGTH = 64
MAX_REASON_LENGTH = 500
MAX_URL_LENGTH = 2048
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_MAX_COINS = 10_000_000
DEFAULT_EVENT_MAX_ATTEMPTS = 10


def check_id(field: str, value: str) -> str:
    if not value:
        raise InvalidField(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidField(field, f"must be at most {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidField(field, "must be printable characters")
    return value


def check_key(field: str, value: str) -> str:
    """request_id and idempotency_key: required, 1-64 printable ASCII."""
    if not value:
        raise InvalidField(field, "is required")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidField(field, f"must be at most {MAX_KEY_LENGTH} characters")
    if not (value.isascii() and value.isprintable()):
        raise InvalidField(field, "must be printable ASCII")
    return value


def check_coins(field: str, value: int, max_coins: int) -> int:
    if not 1 <= value <= max_coins:
        raise InvalidField(field, f"must be between 1 and {max_coins}")
    return value


def check_reason(field: str, value: str) -> str:
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidField(field, f"must be at most {MAX_REASON_LENGTH} characters")
    if not value.isprintable():
        raise InvalidField(field, "must be printable characters")
    return value


def check_url(field: str, value: str) -> str:
    if not value:
        raise InvalidField(field, "is required")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidField(field, f"must be at most {MAX_URL_LENGTH} characters")
    if not (value.isascii() and value.isprintable()):
        raise InvalidField(field, "must be printable ASCII (percent-encode the rest)")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise InvalidField(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidField(field, "must be an absolute http(s) URL")
    return value


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidField("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return value
