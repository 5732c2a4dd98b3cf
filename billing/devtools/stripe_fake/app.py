"""The fake Stripe as one aiohttp application: API, developer endpoints, checkout page, webhooks.

The state file is opened and the webhook sender started when the app starts, and both are
closed when it is cleaned up; creating the app touches nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from billing.devtools.stripe_fake.api import add_api_routes
from billing.devtools.stripe_fake.checkout_page import add_page_routes
from billing.devtools.stripe_fake.config import FakeStripeConfig
from billing.devtools.stripe_fake.dev import add_dev_routes
from billing.devtools.stripe_fake.runtime import RUNTIME, FakeStripeRuntime

_MAX_BODY = 256 * 1024  # Stripe's requests are small


def create_fake_app(config: FakeStripeConfig) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    runtime = FakeStripeRuntime(config)
    app[RUNTIME] = runtime
    add_api_routes(app)
    add_dev_routes(app)
    add_page_routes(app)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        runtime.open()
        sender = asyncio.create_task(runtime.sender.run(), name="fake-stripe-webhooks")
        try:
            yield
        finally:
            runtime.sender.stop()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            runtime.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def run_fake(config: FakeStripeConfig, host: str, port: int) -> web.AppRunner:
    """Start the fake on host:port; the caller awaits `runner.cleanup()` to stop it."""
    runner = web.AppRunner(create_fake_app(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
