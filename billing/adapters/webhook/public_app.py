"""The public port: Stripe's webhook (`POST /api/payment/webhook`) and liveness (`GET /healthz`).

The receiver is thin (STYLE.md 4): read the raw bytes, verify the signature, parse, translate,
hand the event to `apply_event` (in the service: group commit, on the webhook's own thread pool,
a bulkhead: a flood of webhooks queues there, not in front of gRPC calls), map its answer to HTTP.
Rule 7 decides the status codes: 200 for whatever was recorded (applied, duplicate, ignored,
unmatched, rejected), 503 when the store failed (the unit rolled back; Stripe retries), 400 for
what is not provably Stripe's or cannot be read, 403 for a source outside
BILLING_WEBHOOK_ALLOWED_IPS, 408 for a body that does not arrive in time, 413 for one too large,
and nothing is stored for any of those.

Refusals are what anyone on the internet can cause: each is counted, and its log line goes
through the refusal log (a few per reason and minute, then a summary). A verified webhook's
lines are never held back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from billing.adapters.metrics import Metrics
from billing.adapters.refusal_log import RefusalLog
from billing.adapters.stripe_gateway.events import translate_event
from billing.adapters.webhook._http import Handler, json_error, json_errors
from billing.adapters.webhook.signature import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    SignatureError,
    verify_signature,
)
from billing.adapters.webhook.sources import SourcePolicy
from billing.domain.errors import BillingError, ErrorKind
from billing.domain.payment_events import PaymentEvent
from billing.use_cases.apply_payment_event import EventApplied

WEBHOOK_PATH = "/api/payment/webhook"
HEALTHZ_PATH = "/healthz"
DEFAULT_MAX_BODY = 256 * 1024  # Stripe's events are a few KiB
DEFAULT_BODY_TIMEOUT_S = 10.0

# Metric labels for requests whose event type was never read, or is one we do not handle
# (bounded, whatever a sender puts in `type`).
UNREAD_TYPE = "unknown"
OTHER_TYPE = "other"

log = logging.getLogger("billing.webhook")

# Applies one verified event and answers once it is committed (GroupCommit.apply).
ApplyEvent = Callable[[PaymentEvent], Awaitable[EventApplied]]


def create_public_app(
    apply_event: ApplyEvent,
    webhook_secrets: Sequence[str],
    metrics: Metrics,
    *,
    refusals: RefusalLog | None = None,
    sources: SourcePolicy | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    max_body: int = DEFAULT_MAX_BODY,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    now: Callable[[], float] = time.time,
) -> web.Application:
    """The app; `refusals` (default: its own) rate-limits the refusal lines, `sources` (default:
    any) says who may send."""
    secrets = tuple(secret for secret in webhook_secrets if secret)
    if not secrets:
        raise ValueError("the webhook receiver needs at least one webhook secret")
    refuse = _Refusals(metrics, refusals or RefusalLog(log))
    receiver = _WebhookReceiver(
        apply_event, secrets, metrics, refuse, tolerance_s, max_body, body_timeout_s, now
    )
    middlewares: list[Middleware] = [json_errors]
    if sources is not None and sources.inspects_requests:
        middlewares.append(_source_check(sources, refuse))
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app.router.add_post(WEBHOOK_PATH, receiver.handle)
    app.router.add_get(HEALTHZ_PATH, healthz)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. The database is the admin port's /readyz."""
    return web.json_response({"status": "ok"})


class _Refused(Exception):
    """The request ends before the use case: an HTTP status, a safe message, a metric outcome
    (its event type is never read: UNREAD_TYPE)."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome = status, message, outcome


@dataclass(frozen=True, slots=True)
class _Refusals:
    """Every refusal: counted, its line rate-limited per outcome, answered as a JSON error."""

    metrics: Metrics
    log: RefusalLog

    def answer(self, request: web.Request, refused: _Refused) -> web.Response:
        self.metrics.webhook_events.labels(UNREAD_TYPE, refused.outcome).inc()
        if self.log.admit(refused.outcome, request.remote):
            log.warning(
                "webhook refused (%d): %s", refused.status, refused.message,
                extra={"status": refused.status, "outcome": refused.outcome,
                       "remote": request.remote},
            )
        response = json_error(refused.status, refused.message)
        if refused.status in (403, 408):
            response.force_close()  # nothing more from this sender on this connection
        return response


def _source_check(sources: SourcePolicy, refuse: _Refusals) -> Middleware:
    """Resolves the sender (X-Forwarded-For from trusted proxies only) and refuses a source
    outside the allowlist with 403. /healthz is exempt: liveness probes come from the platform
    (kubelet, the balancer), never from Stripe's addresses, and it reveals nothing."""

    @web.middleware
    async def check_source(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == HEALTHZ_PATH:
            return await handler(request)
        sender = sources.sender(request.remote, request.headers.getall("X-Forwarded-For", ()))
        shown = str(sender) if sender is not None else "unknown"
        if shown != request.remote:
            request = request.clone(remote=shown)  # what the logs show as its remote
        if not sources.allows(sender):
            return refuse.answer(
                request, _Refused(403, "this source may not send webhooks", "rejected_source")
            )
        return await handler(request)

    return check_source


@dataclass(frozen=True, slots=True)
class _WebhookReceiver:
    apply_event: ApplyEvent
    secrets: tuple[str, ...]
    metrics: Metrics
    refusals: _Refusals
    tolerance_s: int
    max_body: int
    body_timeout_s: float
    now: Callable[[], float]

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            event = await self._verified_event(request)
            return await self._apply(event)
        except _Refused as refused:
            return self.refusals.answer(request, refused)
        except Exception:  # a bug before the event could be read: still no details out, and
            # its lines rate-limited like a refusal's (anyone may send what triggers it)
            logged = self.refusals.log.admit("failed_permanent", request.remote)
            return self._failed_permanently(UNREAD_TYPE, _log_fields(None), logged=logged)
        finally:
            self.metrics.webhook_latency.observe(time.perf_counter() - started)

    async def _verified_event(self, request: web.Request) -> PaymentEvent:
        body = await self._body(request)
        try:
            verify_signature(
                body, request.headers.get(SIGNATURE_HEADER), self.secrets, self.now(),
                self.tolerance_s,
            )
        except SignatureError as error:
            raise _Refused(400, error.reason, "rejected_signature") from None
        try:
            text = body.decode("utf-8")
            document = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
            raise _Refused(400, "the payload is not JSON", "rejected") from None
        try:
            return translate_event(document, text)
        except ValueError as error:
            raise _Refused(400, str(error), "rejected") from None

    async def _body(self, request: web.Request) -> bytes:
        too_large = _Refused(413, f"the body is larger than {self.max_body} bytes", "rejected")
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large
        try:
            # The app's client_max_size stops a longer chunked body; the deadline a slow one.
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except web.RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not
            raise _Refused(400, "the body cannot be decoded", "rejected") from None
        except ConnectionError:  # nobody will read the answer; aiohttp would log a traceback
            raise _Refused(400, "the sender hung up before its body arrived", "rejected") from None
        except TimeoutError:
            raise _Refused(
                408, f"the body did not arrive within {self.body_timeout_s:g} s", "rejected"
            ) from None

    async def _apply(self, event: PaymentEvent) -> web.Response:
        event_type = event.type if event.kind is not None else OTHER_TYPE
        fields = _log_fields(event)
        try:
            result = await self.apply_event(event)
        except BillingError as error:
            if error.kind is not ErrorKind.UNAVAILABLE:
                return self._failed_permanently(event_type, fields)
            self._count(event_type, "failed_transient")
            log.warning(
                "webhook %s %s: failed_transient, answered 503 for Stripe to retry: %s",
                event.event_id, event.type, error.message,
                extra={**fields, "outcome": "failed_transient"},
            )
            return json_error(503, "temporarily unable to record the event; retry later")
        except Exception:
            return self._failed_permanently(event_type, fields)
        outcome = "duplicate" if result.duplicate else result.outcome.value
        self._count(event_type, outcome)
        log.log(
            logging.WARNING if outcome in ("unmatched", "rejected") else logging.INFO,
            "webhook %s %s: %s%s", event.event_id, event.type, outcome,
            f" ({result.error})" if result.error else "",
            extra={**fields, "outcome": outcome, "error": result.error},
        )
        return web.json_response(
            {"received": True, "outcome": result.outcome.value, "duplicate": result.duplicate}
        )

    def _failed_permanently(
        self, event_type: str, fields: dict[str, str], *, logged: bool = True
    ) -> web.Response:
        self._count(event_type, "failed_permanent")
        if logged:
            log.exception(
                "webhook %s %s: failed_permanent, unexpected error applying the event",
                fields["event_id"] or "(unread)", fields["event_type"],
                extra={**fields, "outcome": "failed_permanent"},
            )
        return json_error(500, "internal error")

    def _count(self, event_type: str, outcome: str) -> None:
        self.metrics.webhook_events.labels(event_type, outcome).inc()


def _log_fields(event: PaymentEvent | None) -> dict[str, str]:
    """What one webhook's log line says about it: ids only, never the payload or signature."""
    if event is None:
        return {"event_id": "", "event_type": "", "session_id": "", "payment_id": ""}
    return {
        "event_id": event.event_id,
        "event_type": event.type,
        "session_id": event.stripe_session_id,
        "payment_id": event.payment_id,
    }
