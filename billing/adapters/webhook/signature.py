"""Stripe's webhook signature: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`.

v1 is HMAC-SHA256, keyed by the endpoint's secret, over `"<t>." + raw body`. Every v1 value is
tried against every configured secret (Stripe sends several during a secret roll; we accept
several while ours rolls); other schemes (v0 is Stripe's test scheme) are ignored. The
timestamp must be within the tolerance either way: an old request is a replay, and a request
from the future is a forgery or a broken clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

SIGNATURE_HEADER = "Stripe-Signature"
DEFAULT_TOLERANCE_S = 300
_MAX_TIMESTAMP_DIGITS = 12  # unix seconds until the year 33658


class SignatureError(Exception):
    """The request is not provably from Stripe; `reason` says why (it never holds a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Return if `header` signs `payload` with one of `secrets` at a time near `now`."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp, candidates = _parse(header)
    expected = [
        _digest(secret, timestamp, payload).encode("ascii") for secret in secrets if secret
    ]
    # Every comparison runs, whatever matched, so the time taken says nothing about which.
    matched = False
    for candidate in candidates:
        for digest in expected:
            matched |= hmac.compare_digest(digest, candidate)
    if not matched:
        raise SignatureError("no v1 signature matches the payload with any webhook secret")
    if abs(now - int(timestamp)) > tolerance_s:
        raise SignatureError(f"timestamp is more than {tolerance_s} s away from the server's time")


def _digest(secret: str, timestamp: str, payload: bytes) -> str:
    signed = timestamp.encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def _parse(header: str) -> tuple[str, list[bytes]]:
    timestamps: list[str] = []
    candidates: list[bytes] = []
    for item in header.split(","):
        scheme, sep, value = item.strip().partition("=")
        if not sep or not scheme:
            raise SignatureError(f"garbled {SIGNATURE_HEADER} header")
        if scheme == "t":
            timestamps.append(value.strip())
        elif scheme == "v1":
            candidates.append(value.strip().encode("utf-8", "surrogateescape"))
    if len(timestamps) != 1:
        raise SignatureError(f"{SIGNATURE_HEADER} header needs exactly one timestamp")
    timestamp = timestamps[0]
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > (
        _MAX_TIMESTAMP_DIGITS
    ):
        raise SignatureError(f"{SIGNATURE_HEADER} timestamp is not a unix time")
    if not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} header has no v1 signature")
    return timestamp, candidates
