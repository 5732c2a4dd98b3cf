"""The hosted checkout page a session's URL opens: plain HTML forms, no JavaScript.

    GET  /c/pay/{id}             the page: card number, or bank debit
    POST /c/pay/{id}             method=card&card_number=4242424242424242 | method=bank_debit
    POST /c/pay/{id}/3ds         result=approve | fail           (after card 4000002760003184)
    POST /c/pay/{id}/bank-debit  outcome=succeeded | failed      (after method=bank_debit)

Answers: 200 with the page showing the outcome, 402 when the card was declined (the form is
shown again, the session stays open), 400 for a number that is not a test card, 404 for an
unknown session, 409 when the session cannot take that step (paid, expired, not waiting).
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web

from billing.devtools.stripe_fake.engine import TEST_CARDS, CardOutcome
from billing.devtools.stripe_fake.errors import StripeApiError
from billing.devtools.stripe_fake.runtime import RUNTIME, FakeStripeRuntime
from billing.domain.money import exponent

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 34rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a1f36; }
.banner { background: #ffde92; padding: .4rem .8rem; border-radius: 4px; font-weight: 600; }
.amount { font-size: 1.6rem; margin: .2rem 0 1rem; }
.error { color: #b3093c; font-weight: 600; }
.done { color: #0a7d3e; font-weight: 600; }
fieldset { border: 1px solid #d5dbe1; border-radius: 6px; margin-bottom: 1rem; }
label { display: block; margin: .4rem 0; }
input[type=text] { font-size: 1.1rem; padding: .3rem; width: 16rem; }
button { font-size: 1rem; padding: .5rem 1rem; margin-right: .5rem; }
table { border-collapse: collapse; } td { padding: .15rem .6rem .15rem 0; }
"""


def add_page_routes(app: web.Application) -> None:
    app.router.add_get("/c/pay/{id}", _show)
    app.router.add_post("/c/pay/{id}", _pay)
    app.router.add_post("/c/pay/{id}/3ds", _three_d_secure)
    app.router.add_post("/c/pay/{id}/bank-debit", _bank_debit)


async def _show(request: web.Request) -> web.Response:
    return _render(request.app[RUNTIME], request.match_info["id"])


async def _pay(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    session_id = request.match_info["id"]
    form = await request.post()
    method = str(form.get("method") or "card")
    try:
        with runtime.store.transaction():
            if method == "bank_debit":
                runtime.engine.start_bank_debit(session_id)
                outcome = CardOutcome("processing")
            elif method == "card":
                outcome = runtime.engine.pay_with_card(session_id, str(form.get("card_number", "")))
            else:
                raise StripeApiError(400, f"Unknown payment method {method!r}.")
    except StripeApiError as error:
        return _render(runtime, session_id, error=error)
    runtime.sender.wake()
    if outcome.status == "declined":
        return _render(runtime, session_id, status=402, notice=outcome.message)
    return _render(runtime, session_id)


async def _three_d_secure(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    session_id = request.match_info["id"]
    form = await request.post()
    try:
        with runtime.store.transaction():
            outcome = runtime.engine.answer_3ds(session_id, approve=form.get("result") == "approve")
    except StripeApiError as error:
        return _render(runtime, session_id, error=error)
    runtime.sender.wake()
    if outcome.status == "declined":
        return _render(runtime, session_id, status=402, notice=outcome.message)
    return _render(runtime, session_id)


async def _bank_debit(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    session_id = request.match_info["id"]
    form = await request.post()
    try:
        with runtime.store.transaction():
            runtime.engine.settle_bank_debit(session_id, form.get("outcome") == "succeeded")
    except StripeApiError as error:
        return _render(runtime, session_id, error=error)
    runtime.sender.wake()
    return _render(runtime, session_id)


# -- rendering ------------------------------------------------------------------------------
def _render(runtime: FakeStripeRuntime, session_id: str, *, status: int = 200,
            notice: str = "", error: StripeApiError | None = None) -> web.Response:
    try:
        session, private = runtime.engine.session_view(session_id)
    except StripeApiError:
        return _page("Checkout session not found",
                     f"<p class=error>No checkout session {escape(session_id)}.</p>", 404)
    if error is not None:
        status = 409 if error.replayable else error.status
        notice = error.message
    items = private.get("line_items") or [{"name": "Checkout", "description": None}]
    title = str(items[0]["name"])
    head = f"<h1>{escape(title)}</h1>"
    if items[0].get("description"):
        head += f"<p>{escape(str(items[0]['description']))}</p>"
    head += f"<p class=amount>{escape(_amount(session))}</p>"
    if notice:
        head += f"<p class=error role=alert>{escape(notice)}</p>"
    return _page(title, head + _step(session, private), status)


def _step(session: dict[str, Any], private: dict[str, Any]) -> str:
    action = f"/c/pay/{escape(session['id'])}"
    step = private.get("step")
    if session["status"] == "expired":
        return "<p class=error>This checkout session has expired.</p>"
    if step == "3ds":
        return (
            "<h2>3-D Secure authentication</h2>"
            "<p>Your bank asks you to confirm this payment.</p>"
            f"<form method=post action='{action}/3ds'>"
            "<button name=result value=approve>Complete authentication</button>"
            "<button name=result value=fail>Fail authentication</button></form>"
        )
    if step == "bank_debit":
        return (
            "<h2>Bank debit processing</h2>"
            "<p>The checkout is complete; the money arrives later. Answer as the bank:</p>"
            f"<form method=post action='{action}/bank-debit'>"
            "<button name=outcome value=succeeded>Debit succeeds</button>"
            "<button name=outcome value=failed>Debit fails</button></form>"
        )
    if session["status"] == "complete":
        if session["payment_status"] != "paid":
            return "<p class=error>The bank debit failed; nothing was paid.</p>"
        url = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session["id"])
        return (f"<p class=done>Payment succeeded.</p>"
                f"<p><a href='{escape(url)}'>Return to the merchant</a></p>")
    cancel = session.get("cancel_url")
    cards = "".join(f"<tr><td><code>{n[:4]} {n[4:8]} {n[8:12]} {n[12:]}</code></td>"
                    f"<td>{escape(what)}</td></tr>" for n, what in TEST_CARDS.items())
    return (
        f"<form method=post action='{action}'>"
        "<fieldset><legend>Pay with</legend>"
        "<label><input type=radio name=method value=card checked> Card</label>"
        "<label>Card number <input type=text name=card_number inputmode=numeric"
        " autocomplete=cc-number placeholder='4242 4242 4242 4242'></label>"
        "<label><input type=radio name=method value=bank_debit> Bank debit"
        " (completes now, settles later)</label>"
        "</fieldset>"
        f"<button type=submit>Pay {escape(_amount(session))}</button></form>"
        + (f"<p><a href='{escape(str(cancel))}'>Cancel and go back</a></p>" if cancel else "")
        + f"<h2>Test cards</h2><table>{cards}</table>"
    )


def _amount(session: dict[str, Any]) -> str:
    code = str(session["currency"]).upper()
    try:
        places = exponent(code)
    except ValueError:
        places = 2
    value = int(session["amount_total"])
    if places == 0:
        return f"{value} {code}"
    return f"{value // 10**places}.{value % 10**places:0{places}d} {code}"


def _page(title: str, body: str, status: int) -> web.Response:
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)} · fake Stripe Checkout</title><style>{_STYLE}</style></head>"
        "<body><p class=banner>Test mode: the local fake Stripe. No real money moves.</p>"
        f"{body}</body></html>"
    )
    return web.Response(status=status, text=html, content_type="text/html")
