"""The admin port: readiness and Prometheus metrics, never exposed on the public port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from billing.adapters.metrics import Metrics
from billing.adapters.webhook._http import json_errors
from billing.ports import Offload

log = logging.getLogger("billing.webhook")


def create_admin_app(
    ready: Callable[[], bool],
    metrics: Metrics,
    *,
    timeout_s: float = 5.0,
    offload: Offload = asyncio.to_thread,
) -> web.Application:
    """GET /readyz (200 while `ready()` is true, else 503) and GET /metrics.

    `ready` may block on the database, so it runs through `offload` (a thread pool); one that
    raises or takes longer than `timeout_s` counts as not ready.
    """

    async def readyz(request: web.Request) -> web.Response:
        try:
            is_ready = await asyncio.wait_for(offload(ready), timeout_s)
        except Exception as error:  # whatever went wrong, the service is not ready
            log.warning("readiness check failed: %s", type(error).__name__)
            is_ready = False
        if is_ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "unavailable"}, status=503)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app
