"""`billing serve`: the gRPC server, the public and admin HTTP apps and, in fake mode, the fake
Stripe, in one asyncio process.

Everything listens on one event loop (grpc.aio and aiohttp); database work runs on the
bulkheads the container sizes, and Stripe calls are awaited on the loop, holding no thread.
SIGTERM/SIGINT: health turns NOT_SERVING, every listener stops accepting, in-flight calls get
BILLING_SHUTDOWN_GRACE_S to finish, the thread pools and the database pool are closed, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billing.adapters.grpc_api.server import GrpcEndpoint, create_grpc_server
from billing.container import Container, StartupError, close_stripe
from billing.settings import Settings, SettingsError, check_startup_safety

if TYPE_CHECKING:
    from billing.adapters.live import LiveHub
    from billing.adapters.webhook import ConnectionGuard

log = logging.getLogger("billing.server")

HEALTH_INTERVAL_S = 1.0
EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CONFIG = 2


class BillingServer:
    """One run of the service. `run()` returns the exit code; `request_stop()` is thread-safe.

    `worker` is this process's index among a supervisor's workers (billing/supervisor.py), or
    None when it serves alone: a worker shares its ports (SO_REUSEPORT), and only worker 0 runs
    the in-process fake Stripe and the reconcile loop.
    """

    def __init__(self, container: Container, worker: int | None = None) -> None:
        self._container = container
        self._reuse_port = worker is not None
        self._runs_singletons = worker in (None, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grpc: GrpcEndpoint | None = None
        self._runners: list[tuple[str, web.BaseRunner]] = []
        self._store: Any = None  # built by _start; disposed on the way out
        self._live: LiveHub | None = None  # started by _start; ends the streams on the way out
        self._store_ok = True
        self.started = threading.Event()  # set once every listener accepts connections
        self.stopped = threading.Event()

    # -- control ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    @property
    def grpc_port(self) -> int:
        assert self._grpc is not None, "the server has not started"
        return self._grpc.port

    def ready(self) -> bool:
        """Readiness for /readyz: the database answered the last probe (cheap, never blocks)."""
        return self._store_ok

    # -- the run ---------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            try:
                await self._start()
            except (StartupError, SettingsError) as error:
                log.error("billing cannot start: %s", error)
                await self._shutdown(grace=0)
                return EXIT_CONFIG if isinstance(error, SettingsError) else EXIT_START_FAILED
            except Exception:
                log.exception("billing cannot start: unexpected error")
                await self._shutdown(grace=0)
                return EXIT_START_FAILED
            self.started.set()
            background = [
                asyncio.create_task(self._watch_store(), name="store-health"),
                asyncio.create_task(self._warm_up(), name="warm-up"),
            ]
            listener = self._container.feed_listener()
            if listener is not None:
                background.append(asyncio.create_task(listener.run(), name="feed-listener"))
            if self._runs_singletons:
                background.append(
                    asyncio.create_task(self._reconcile_forever(), name="reconcile"))
            await self._stop.wait()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown(grace=self._settings.shutdown_grace_s)
            return EXIT_OK
        finally:
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(signum)
            self.stopped.set()

    @property
    def _settings(self) -> Settings:
        settings: Settings = self._container.settings()
        return settings

    def _on_signal(self, signum: int) -> None:
        assert self._stop is not None
        if not self._stop.is_set():
            log.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    async def _start(self) -> None:
        container, settings = self._container, self._settings
        for warning in check_startup_safety(settings):
            log.warning(warning)
        background = container.background_lane()
        self._store = container.store()
        await background(container.prepare_store)
        self._store_ok = await background(self._ping)
        if not self._store_ok:
            log.warning("the database does not answer: serving NOT_SERVING until it does")
        # Build everything first, so a configuration error leaves no port half-open.
        self._live = container.live()
        self._live.start()
        sequencer = container.sequencer()
        if sequencer is not None:
            sequencer.start()
        servicer, interceptors = container.servicer(), container.interceptors()
        public_app, public_connections = container.public_app(), container.public_connections()
        admin_app = container.admin_app(ready=self.ready)
        try:
            grpc_endpoint = await create_grpc_server(
                servicer, interceptors, container.grpc_credentials(), settings.host,
                settings.grpc_port, reuse_port=self._reuse_port,
            )
        except RuntimeError as error:
            raise StartupError(str(error)) from None
        self._grpc = grpc_endpoint
        await grpc_endpoint.set_serving(self._store_ok)
        await grpc_endpoint.server.start()
        grpc_mode = ("mutual TLS" if settings.tls_client_ca else "TLS") if settings.tls_enabled \
            else "plaintext"
        log.info("gRPC listening on %s (%s)", _address(settings.host, grpc_endpoint.port),
                 grpc_mode, extra={"port": grpc_endpoint.port})
        await self._serve_app("public", public_app, settings.host, settings.http_port,
                              public_connections)
        log.info("webhook listening on http://%s/api/payment/webhook (and /healthz)",
                 _address(settings.host, settings.http_port), extra={"port": settings.http_port})
        await self._serve_app("admin", admin_app, settings.host, settings.admin_port)
        log.info("admin listening on http://%s (/readyz, /metrics)",
                 _address(settings.host, settings.admin_port), extra={"port": settings.admin_port})
        if settings.runs_fake_in_process and self._runs_singletons:
            await self._start_fake_stripe(settings)
        log.info(
            "billing listening: gRPC %s, HTTP %s, admin %s (database %s, %s)",
            settings.grpc_port, settings.http_port, settings.admin_port,
            settings.database_url_redacted,
            f"fake Stripe at {settings.effective_stripe_api_base}" if settings.fake_mode else
            ("Stripe LIVE mode" if settings.live_mode else "Stripe test mode"),
        )

    async def _serve_app(self, name: str, app: web.Application, host: str, port: int,
                         guard: ConnectionGuard | None = None) -> None:
        """Serve `app`; through `guard` (the connection limits) on the public port only: the
        admin port is internal."""
        grace = self._settings.shutdown_grace_s
        runner = (guard.runner(app, shutdown_timeout=grace) if guard is not None
                  else web.AppRunner(app, shutdown_timeout=grace))
        await runner.setup()
        self._runners.append((name, runner))
        site = (guard.site(runner, host, port, reuse_port=self._reuse_port) if guard is not None
                else web.TCPSite(runner, host, port, reuse_port=self._reuse_port))
        await self._bind(name, site.start(), port)

    async def _start_fake_stripe(self, settings: Settings) -> None:
        from billing.devtools.stripe_fake import run_fake

        config = self._container.fake_stripe_config()
        settings.fake_stripe_state.parent.mkdir(parents=True, exist_ok=True)
        runner: web.BaseRunner = await self._bind(
            "fake Stripe", run_fake(config, settings.host, settings.fake_stripe_port),
            settings.fake_stripe_port,
        )
        self._runners.append(("fake Stripe", runner))
        log.info(
            "fake Stripe listening on %s (state %s), sending webhooks to %s",
            settings.fake_stripe_url, settings.fake_stripe_state,
            settings.effective_fake_webhook_url, extra={"port": settings.fake_stripe_port},
        )

    @staticmethod
    async def _bind(name: str, starting: Awaitable[Any], port: int) -> Any:
        try:
            return await starting
        except OSError as error:
            raise StartupError(f"cannot listen for {name} on port {port}: {error.strerror}") \
                from None

    # -- health ----------------------------------------------------------------------------------
    def _ping(self) -> bool:
        ping: Callable[[], bool] | None = getattr(self._store, "ping", None)
        try:
            return bool(ping()) if ping is not None else True
        except Exception:
            log.exception("database probe failed")
            return False

    async def _warm_up(self) -> None:
        """Pay now, in the background, what the first Stripe call would pay (the SDK import)."""
        warm_up: Callable[[], Awaitable[None]] | None = getattr(
            self._container.stripe(), "warm_up", None)
        if warm_up is not None:
            try:
                await warm_up()
            except Exception:  # the first real call will try again, and say what is wrong
                log.warning("warming up the Stripe client failed", exc_info=True)

    async def _watch_store(self) -> None:
        """Health follows the database: NOT_SERVING while it does not answer."""
        background = self._container.background_lane()
        metrics = self._container.metrics()
        in_use: Callable[[], int] | None = getattr(self._store, "pool_in_use", None)
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            ok = await background(self._ping)
            if ok != self._store_ok:
                if ok:
                    log.info("the database answers again: SERVING")
                else:
                    log.warning("the database does not answer: NOT_SERVING")
                self._store_ok = ok
                if self._grpc is not None:
                    await self._grpc.set_serving(ok)
            if in_use is not None:
                with contextlib.suppress(Exception):
                    metrics.db_pool_in_use.set(in_use())
            self._summarize_refusals(final=False)

    def _summarize_refusals(self, *, final: bool) -> None:
        """Rate-limited refusal lines: the summary of each minute that has ended (every second,
        from the loop above), and on the way out the last ones, whatever their age."""
        for refusals in self._container.refusal_logs():
            with contextlib.suppress(Exception):
                if final:
                    refusals.flush()
                else:
                    refusals.tick()

    # -- reconciliation ------------------------------------------------------------------------
    async def _reconcile_forever(self) -> None:
        """A reconciliation pass every BILLING_RECONCILE_INTERVAL_S (safe on every replica)."""
        interval = self._settings.reconcile_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reconcile_once()
            except Exception:
                log.exception("reconciliation pass failed")

    async def _reconcile_once(self) -> None:
        from billing.domain.payment_events import InboxOutcome

        container = self._container
        metrics = container.metrics()
        report = await container.reconcile()()
        metrics.reconcile_runs.inc()
        for kind, count in report.fixes.items():
            metrics.reconcile_fixes.labels(kind).inc(count)
        if report.total or report.errors:
            log.info("reconciliation pass", extra={"fixes": dict(report.fixes),
                                                    "errors": report.errors})
        failed = await container.background_lane()(
            partial(container.list_inbox_events(), failed_only=True, limit=1000))
        metrics.parked_events.set(sum(e.outcome is InboxOutcome.PARKED for e in failed))

    # -- shutdown --------------------------------------------------------------------------------
    async def _shutdown(self, grace: float) -> None:
        """Stop accepting everywhere at once, let in-flight work finish within `grace`."""
        stopping: list[Awaitable[Any]] = []
        if self._live is not None:  # open streams end now (SHUTTING_DOWN), not at the grace
            await self._live.close()
        if self._grpc is not None:
            stopping.append(self._grpc.stop(grace))
        # The fake Stripe (last started) stops first, so it sends nothing to a closed webhook.
        fake = [runner for name, runner in self._runners if name == "fake Stripe"]
        for runner in fake:
            await runner.cleanup()
        stopping.extend(runner.cleanup() for name, runner in self._runners if runner not in fake)
        results = await asyncio.gather(*stopping, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("error while stopping: %s", result)
        self._runners.clear()
        self._summarize_refusals(final=True)
        container = self._container
        with contextlib.suppress(Exception):
            await close_stripe(container)
        if self._live is not None:
            sequencer = container.sequencer()
            if sequencer is not None:
                # A pass cut short loses nothing: its rows wait for the next sequencer.
                stopped = await container.background_lane()(partial(sequencer.stop, 2.0))
                if not stopped:
                    log.warning("the feed sequencer did not stop within 2 s; leaving it")
        for lane in container.request_lanes():
            lane.shutdown()
        dispose = getattr(self._store, "dispose", None)
        if dispose is not None:
            await container.background_lane()(dispose)
        container.background_lane().shutdown()
        log.info("billing stopped")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(container: Container) -> int:
    """Run until SIGTERM/SIGINT; the exit code of `billing serve`. With BILLING_WORKERS > 1 this
    process supervises that many workers (billing/supervisor.py), each of which comes back here."""
    from billing import supervisor

    settings: Settings = container.settings()
    worker = supervisor.worker_index()
    if worker is None and settings.workers > 1:
        return supervisor.supervise(settings)
    if worker is not None:
        supervisor.die_with_supervisor()
    server = BillingServer(container, worker)
    return asyncio.run(server.run())
