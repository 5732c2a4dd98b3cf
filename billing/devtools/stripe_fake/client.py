"""The CLI's side of the fake: `billing stripe-fake pay|...` and `billing trigger`, over HTTP."""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

FakeAction = Literal["pay", "decline", "expire", "refund", "dispute"]
_ACTIONS = ("pay", "decline", "expire", "refund", "dispute")
_TIMEOUT_S = 10.0


class FakeStripeError(Exception):
    """The fake refused the request (status set) or could not be reached (status None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def fake_action(api_base: str, action: FakeAction, session_id: str) -> dict[str, Any]:
    """Do what a customer or the dashboard would to a session; returns the session and events."""
    if action not in _ACTIONS:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(_ACTIONS)}")
    path = f"/_fake/sessions/{quote(session_id, safe='')}/{action}"
    return _post(api_base, path, {})


def trigger_event(api_base: str, event_type: str, session_id: str) -> dict[str, Any]:
    """Make the session go through what sends `event_type` (like `stripe trigger`)."""
    return _post(api_base, "/_fake/trigger", {"type": event_type, "session": session_id})


def _post(api_base: str, path: str, form: dict[str, str]) -> dict[str, Any]:
    base = api_base.rstrip("/")
    if urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"the fake Stripe's address must be http(s): {api_base!r}")
    request = Request(
        base + path,
        data=urlencode(form).encode(),
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urlopen(request, timeout=_TIMEOUT_S) as response:  # scheme checked above
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except HTTPError as error:
        raise FakeStripeError(_message(error), error.code) from None
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FakeStripeError(f"cannot reach the fake Stripe at {base}: {reason}") from None


def _message(error: HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"the fake Stripe answered HTTP {error.code}"
