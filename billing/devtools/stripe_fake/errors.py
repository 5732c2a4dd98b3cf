"""Stripe-shaped errors: `{"error": {"type": ..., "message": ..., "param": ..., "code": ...}}`."""

from __future__ import annotations

from typing import Any


class StripeApiError(Exception):
    """An error answer of the fake API.

    `replayable` follows Stripe's idempotency rule: an error found while validating the request
    is not stored under its Idempotency-Key (a corrected retry may run), one found while
    executing it is (the retry gets the same answer).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        replayable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.replayable = replayable

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        return {"error": error}


def missing(kind: str, object_id: str, param: str) -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )


def invalid_state(
    message: str, code: str | None = None, param: str | None = None
) -> StripeApiError:
    """The request was valid but the object's state refuses it (stored for replay)."""
    return StripeApiError(400, message, code=code, param=param, replayable=True)
