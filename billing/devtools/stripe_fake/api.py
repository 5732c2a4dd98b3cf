"""The Stripe API subset, over HTTP the way Stripe speaks it.

Bearer (or basic) auth with a test key, form-encoded bracket parameters, Stripe-shaped JSON and
errors, and Idempotency-Key replay: the same key, path and parameters get the first answer again
with `Idempotent-Replayed: true`; the same key elsewhere or with other parameters is a 400
`idempotency_error`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from billing.devtools.stripe_fake.engine import FakeStripe
from billing.devtools.stripe_fake.errors import StripeApiError
from billing.devtools.stripe_fake.forms import parse_form
from billing.devtools.stripe_fake.objects import API_VERSION, new_id, refuse_unknown
from billing.devtools.stripe_fake.runtime import RUNTIME, FakeStripeRuntime
from billing.devtools.stripe_fake.store import StoredReply

Operation = Callable[[FakeStripe, web.Request, dict[str, Any]], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization"
    " header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See"
    " https://stripe.com/docs/api#authentication for details, or we can help at"
    " https://support.stripe.com/."
)
_RETRIEVE_PARAMS = frozenset({"expand"})


def add_api_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/checkout/sessions", _api(_create_session))
    router.add_get("/v1/checkout/sessions/{id}", _api(_retrieve_session))
    router.add_post("/v1/checkout/sessions/{id}/expire", _api(_expire_session))
    router.add_post("/v1/refunds", _api(_create_refund))
    router.add_get("/v1/refunds/{id}", _api(_retrieve_refund))
    router.add_get("/v1/events", _api(_list_events))
    router.add_get("/v1/events/{id}", _api(_retrieve_event))
    router.add_route("*", "/v1/{tail:.*}", _api(_unrecognized))


# -- operations -----------------------------------------------------------------------------
def _create_session(engine: FakeStripe, _: web.Request, params: dict[str, Any]) -> dict[str, Any]:
    return engine.create_session(params)


def _retrieve_session(engine: FakeStripe, request: web.Request,
                      params: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(params, _RETRIEVE_PARAMS)
    return engine.session(request.match_info["id"])


def _expire_session(engine: FakeStripe, request: web.Request,
                    params: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(params, _RETRIEVE_PARAMS)
    return engine.expire_session(request.match_info["id"])


def _create_refund(engine: FakeStripe, _: web.Request, params: dict[str, Any]) -> dict[str, Any]:
    return engine.create_refund(params)


def _retrieve_refund(engine: FakeStripe, request: web.Request,
                     params: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(params, _RETRIEVE_PARAMS)
    return engine.refund(request.match_info["id"])


def _list_events(engine: FakeStripe, _: web.Request, params: dict[str, Any]) -> dict[str, Any]:
    return engine.list_events(params)


def _retrieve_event(engine: FakeStripe, request: web.Request,
                    params: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(params, _RETRIEVE_PARAMS)
    return engine.event(request.match_info["id"])


def _unrecognized(_: FakeStripe, request: web.Request, __: dict[str, Any]) -> dict[str, Any]:
    raise StripeApiError(
        404, f"Unrecognized request URL ({request.method}: {request.path}). Please see"
        " https://stripe.com/docs or we can help at https://support.stripe.com/."
    )


# -- the HTTP side --------------------------------------------------------------------------
def _api(operation: Operation) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        runtime.stats.started()
        try:
            if runtime.config.latency_s:  # before the work: the answer shows the state after it
                await asyncio.sleep(runtime.config.latency_s)
            return await answer(request, runtime)
        finally:
            runtime.stats.finished()

    async def answer(request: web.Request, runtime: FakeStripeRuntime) -> web.StreamResponse:
        headers = {
            "Request-Id": new_id("req_", 14),
            "Stripe-Version": request.headers.get("Stripe-Version") or API_VERSION,
        }
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        try:
            authenticate(request, runtime.config.api_key_prefix)
            params = await request_params(request)
            if key is not None:
                _check_key(key)
                headers["Idempotency-Key"] = key
        except StripeApiError as error:
            return _json(error.status, _dumps(error.body()), headers)
        status, body, replayed = _run(
            runtime, request.path, params, key, lambda: operation(runtime.engine, request, params)
        )
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        runtime.sender.wake()
        return _json(status, body, headers)

    return handle


def _run(runtime: FakeStripeRuntime, path: str, params: dict[str, Any], key: str | None,
         call: Callable[[], dict[str, Any]]) -> tuple[int, str, bool]:
    """Run one API call in one transaction, replaying (or refusing) a reused key."""
    store = runtime.store
    canonical = json.dumps(params, sort_keys=True)
    with store.transaction():
        if key is not None:
            earlier = store.reply(key)
            if earlier is not None:
                refusal = _reuse_refusal(key, earlier, path, canonical)
                if refusal is not None:
                    return refusal.status, _dumps(refusal.body()), False
                return earlier.status, earlier.body, True
        try:
            with store.savepoint():
                status, body = 200, _dumps(call())
        except StripeApiError as error:
            status, body = error.status, _dumps(error.body())
            if not error.replayable:
                key = None  # a request refused before it ran is not stored under its key
        if key is not None:
            store.save_reply(key, StoredReply(path, canonical, status, body), time.time())
    return status, body, False


def _reuse_refusal(key: str, earlier: StoredReply, path: str,
                   canonical: str) -> StripeApiError | None:
    if earlier.path != path:
        return StripeApiError(
            400, "Keys for idempotent requests can only be used for the same endpoint they were"
            f" first used for ('{earlier.path}' vs '{path}'). Try using a key other than"
            f" '{key}' if you meant to execute a different request.",
            type="idempotency_error")
    if earlier.params != canonical:
        return StripeApiError(
            400, "Keys for idempotent requests can only be used with the same parameters they"
            f" were first used with. Try using a key other than '{key}' if you meant to execute"
            " a different request.",
            type="idempotency_error")
    return None


def _check_key(key: str) -> None:
    if not key or len(key) > 255:
        raise StripeApiError(400, "Invalid idempotency key: it must be 1 to 255 characters.",
                             param="Idempotency-Key")


def api_key(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            user = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user.partition(":")[0] or None
    return None


def mask_key(key: str) -> str:
    """What Stripe shows of a refused key: its prefix and last four characters."""
    prefix = key[: key.find("_", 3) + 1] if key.count("_") >= 2 else ""
    return f"{prefix}{'*' * max(4, len(key) - len(prefix) - 4)}{key[-4:] if len(key) > 12 else ''}"


def authenticate(request: web.Request, prefix: str) -> None:
    key = api_key(request)
    if key is None:
        raise StripeApiError(401, _NO_KEY)
    if not key.startswith(prefix) or len(key) <= len(prefix):
        raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")


async def request_params(request: web.Request) -> dict[str, Any]:
    pairs = parse_qsl(request.query_string, keep_blank_values=True)
    if request.method == "POST":
        pairs += parse_qsl(await request.text(), keep_blank_values=True)
    return parse_form(pairs)


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2)


def _json(status: int, body: str, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/json",
                        headers=headers)
