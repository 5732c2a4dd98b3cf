"""Opaque keyset page tokens for a user's ledger, newest first (never OFFSET)."""

from __future__ import annotations

import base64
import hashlib

from billing.domain.errors import InvalidPageToken

_VERSION = "1"


def _scope(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


def encode_page_token(user_id: str, before_seq: int) -> str:
    raw = f"{_VERSION}.{_scope(user_id)}.{before_seq}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(user_id: str, token: str) -> int | None:
    """The sequence number to continue before, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        version, scope, seq = base64.urlsafe_b64decode(padded.encode()).decode().split(".")
        before = int(seq)
    except (ValueError, UnicodeError):
        raise InvalidPageToken("page_token is malformed") from None
    if version != _VERSION or not 0 < before < 2**63:  # a seq is a signed 64-bit integer
        raise InvalidPageToken("page_token is malformed")
    if scope != _scope(user_id):
        raise InvalidPageToken("page_token belongs to another query")
    return before
