"""The composition root: configuration -> adapters -> use cases -> edges.

The only module that knows which adapter serves which port. Nothing is built at import time:
each provider runs when first asked for, and the adapters of a technology are imported inside
their provider, so a deployment that does not select a piece never imports it. Tests swap a
provider with `with container.store.override(...)` instead of patching modules.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from dependency_injector import containers, providers

from billing.adapters.bounded_gateway import BoundedPaymentGateway
from billing.adapters.bulkheads import Bulkhead
from billing.adapters.grpc_api.interceptors import Caller, server_interceptors
from billing.adapters.grpc_api.servicer import BillingServicer, BillingUseCases, DatabaseLanes
from billing.adapters.live import LiveHub, LiveNotifier
from billing.adapters.metrics import Metrics
from billing.adapters.notifier import LoggingNotifier, Notifiers
from billing.adapters.refusal_log import RefusalLog
from billing.adapters.system_clock import SystemClock
from billing.domain.catalog import Catalog, default_catalog
from billing.settings import Settings, SettingsError
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.audit import Audit
from billing.use_cases.cancel_checkout import CancelCheckout
from billing.use_cases.create_checkout import CreateCheckout
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.get_payment_status import GetPaymentStatus
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.inbox_events import ListInboxEvents, ReplayInboxEvent
from billing.use_cases.list_coin_packages import ListCoinPackages
from billing.use_cases.list_transactions import ListTransactions
from billing.use_cases.reconcile import Reconcile
from billing.use_cases.refund_payment import RefundPayment
from billing.use_cases.spend_coins import SpendCoins
from billing.use_cases.stream_transactions import StreamTransactions
from billing.use_cases.watch_payment_status import WatchPaymentStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp import web

    from billing.adapters.sql import SqlStore
    from billing.adapters.sql.listener import FeedListener
    from billing.adapters.sql.sequencer import FeedSequencer
    from billing.adapters.stripe_gateway import StripeEventParser, StripePaymentGateway
    from billing.adapters.webhook import ConnectionGuard


class StartupError(Exception):
    """The service cannot start as configured; the message says why and what to do."""


# -- provider functions: each imports its technology only when called ---------------------------
def load_catalog(settings: Settings) -> Catalog:
    if settings.catalog_path is None:
        return default_catalog()
    from billing.domain.errors import CatalogError

    try:
        return Catalog.from_toml(settings.catalog_path.read_text(encoding="utf-8"))
    except (CatalogError, OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"BILLING_CATALOG: {error}") from None


# Threads per bulkhead (billing/adapters/bulkheads.py). Database work is short and one process is
# bound by the GIL: a few threads per kind overlap its round trips; more only add switching.
# The writers' pool serves writes + webhook + checkout + background, the readers' pool reads:
# both stay within BILLING_DB_POOL_SIZE (16) connections, so no thread waits for one.
READ_THREADS = 4
WRITE_THREADS = 4
WEBHOOK_THREADS = 4
CHECKOUT_THREADS = 4  # the database steps of the use cases that call Stripe
BACKGROUND_THREADS = 2  # health probes, readiness, reconciliation, start-up


def build_sql_store(settings: Settings, metrics: Metrics) -> SqlStore:
    """Connections per pool (writers and readers each have one): BILLING_DB_POOL_SIZE."""
    from billing.adapters.sql import SqlStore

    return SqlStore(settings.database_url, pool_size=settings.db_pool_size,
                    on_round_trip=metrics.db_round_trips.inc)


def prepare_database(settings: Settings, store: SqlStore) -> None:
    """SQLite (the embedded default) is migrated in place; any other database must already be
    at the head revision, else SchemaError says to run `billing migrate`."""
    if settings.is_sqlite:
        migrate_database(settings)
        return
    from billing.adapters.sql import SchemaError
    from billing.domain.errors import StoreUnavailable

    try:
        store.check_schema()
    except (SchemaError, StoreUnavailable) as error:
        raise StartupError(str(error)) from None


def migrate_database(settings: Settings) -> None:
    from billing.adapters.sql import migrate

    if settings.is_sqlite:
        from sqlalchemy.engine import make_url

        database = make_url(settings.database_url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)


def _postgres_engine(store: object) -> Any:
    """The store's engine when it is Postgres (where positions are given after commit, and
    wake-ups cross replicas through LISTEN/NOTIFY); None for SQLite and memory."""
    engine = getattr(store, "engine", None)
    return engine if engine is not None and engine.dialect.name == "postgresql" else None


def build_sequencer(
    settings: Settings, store: object, metrics: Metrics, live: LiveHub
) -> FeedSequencer | None:
    """The feed sequencer on Postgres (the server starts it); None elsewhere."""
    engine = _postgres_engine(store)
    if engine is None:
        return None
    from billing.adapters.sql.sequencer import FeedSequencer

    def sequenced(count: int, top: int) -> None:
        metrics.sequencer_batch.observe(count)
        live.feed_moved()

    return FeedSequencer(engine, poll_s=settings.feed_poll_s, on_sequenced=sequenced)


def build_feed_listener(store: object, metrics: Metrics, live: LiveHub) -> FeedListener | None:
    """The process's LISTEN connection on Postgres (the server runs it); None elsewhere."""
    engine = _postgres_engine(store)
    if engine is None:
        return None
    from billing.adapters.sql.listener import FeedListener

    return FeedListener(
        engine, on_feed=live.feed_moved, on_sessions=live.wake_sessions,
        on_connected=live.wake_everything,
        on_notification=lambda channel: metrics.feed_notifications.labels(channel).inc(),
    )


def build_notifier(
    logging_notifier: LoggingNotifier, live: LiveHub, sequencer: FeedSequencer | None
) -> Notifiers:
    """Every commit's events are logged, then wake the streams: on Postgres through the
    sequencer (positions come after commit), elsewhere directly."""
    live_notifier = LiveNotifier(live, sequencer.wake if sequencer is not None else None)
    return Notifiers(logging_notifier, live_notifier)


def build_stripe_gateway(settings: Settings) -> StripePaymentGateway:
    from billing.adapters.stripe_gateway import StripePaymentGateway

    return StripePaymentGateway(
        settings.stripe_key.reveal(),
        api_base=settings.effective_stripe_api_base,
        timeout_s=settings.stripe_timeout_s,
        max_connections=settings.stripe_max_concurrency,
    )


async def close_stripe(container: Container) -> None:
    """Close the Stripe client's HTTP session and loop (the in-memory gateway has neither)."""
    close: Callable[[], Awaitable[None]] | None = getattr(container.stripe(), "close", None)
    if close is not None:
        await close()


def build_event_parser() -> StripeEventParser:
    from billing.adapters.stripe_gateway import StripeEventParser

    return StripeEventParser()


def reconcile_age(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.reconcile_after_s)


def build_fake_stripe_config(settings: Settings) -> Any:
    from billing.devtools.stripe_fake import FakeStripeConfig

    public_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    if ":" in public_host:
        public_host = f"[{public_host}]"
    return FakeStripeConfig(
        state_path=str(settings.fake_stripe_state),
        webhook_url=settings.effective_fake_webhook_url,
        webhook_secret=settings.stripe_webhook_secrets[0].reveal(),
        drop_rate=settings.fake_stripe_drop_rate,
        latency_s=settings.fake_stripe_latency_ms / 1000,
        public_url=f"http://{public_host}:{settings.fake_stripe_port}",
    )


def build_refusal_log(logger_name: str) -> RefusalLog:
    return RefusalLog(logging.getLogger(logger_name))


def build_public_app(
    apply_event: ApplyPaymentEvent,
    settings: Settings,
    metrics: Metrics,
    lane: Bulkhead,
    refusals: RefusalLog,
) -> web.Application:
    from billing.adapters.webhook import GroupCommit, SourcePolicy, create_public_app

    secrets = [secret.reveal() for secret in settings.stripe_webhook_secrets]
    sources = SourcePolicy(settings.webhook_allowed_ips, settings.webhook_trusted_proxies)
    group_commit = GroupCommit(apply_event.apply_all, lane, metrics)
    app: web.Application = create_public_app(
        group_commit.apply, secrets, metrics, refusals=refusals, sources=sources,
        body_timeout_s=settings.webhook_body_timeout_s,
    )
    return app


def build_public_connections(
    settings: Settings, metrics: Metrics, refusals: RefusalLog
) -> ConnectionGuard:
    from billing.adapters.webhook import ConnectionGuard, ConnectionLimits

    limits = ConnectionLimits(
        max_connections=settings.webhook_max_connections,
        header_timeout_s=settings.webhook_header_timeout_s,
        keepalive_s=settings.webhook_keepalive_s,
        linger_s=settings.webhook_body_timeout_s,  # an unread body: drained as long as read
        refusals_per_s=settings.webhook_max_refusals_per_s,
    )
    return ConnectionGuard(limits, metrics, refusals)


def build_admin_app(
    ready: Callable[[], bool], metrics: Metrics, lane: Bulkhead
) -> web.Application:
    from billing.adapters.webhook import create_admin_app

    app: web.Application = create_admin_app(ready, metrics, offload=lane)
    return app


def callers_of(settings: Settings) -> list[Caller]:
    return [Caller.of(t.name, t.token.reveal(), t.rpcs) for t in settings.api_tokens]


def build_grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from BILLING_TLS_CERT/_KEY; mutual TLS when BILLING_TLS_CLIENT_CA is set too."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class Container(containers.DeclarativeContainer):
    # -- Configuration ------------------------------------------------------------------------
    settings = providers.Singleton(Settings.from_env)

    # -- Observability ------------------------------------------------------------------------
    metrics = providers.Singleton(Metrics)
    logging_notifier = providers.Singleton(LoggingNotifier, metrics=metrics)
    clock = providers.Singleton(SystemClock)
    # Refusals anyone can cause (forged webhooks, wrong tokens): counted always, logged a few
    # per minute; the server ticks them so a last summary is written.
    webhook_refusals = providers.Singleton(build_refusal_log, "billing.webhook")
    rpc_refusals = providers.Singleton(build_refusal_log, "billing.rpc")
    refusal_logs = providers.List(webhook_refusals, rpc_refusals)

    # -- Bulkheads: one thread pool per kind of blocking work ---------------------------------
    read_lane = providers.Singleton(Bulkhead, "db-reads", READ_THREADS)
    write_lane = providers.Singleton(Bulkhead, "db-writes", WRITE_THREADS)
    webhook_lane = providers.Singleton(Bulkhead, "db-webhook", WEBHOOK_THREADS)
    checkout_lane = providers.Singleton(Bulkhead, "db-checkout", CHECKOUT_THREADS)
    background_lane = providers.Singleton(Bulkhead, "background", BACKGROUND_THREADS)
    # The request lanes, shut down together once the listeners have drained (the background
    # lane goes last: it closes the database pool).
    request_lanes = providers.List(read_lane, write_lane, webhook_lane, checkout_lane)

    # -- Storage ------------------------------------------------------------------------------
    store = providers.Singleton(build_sql_store, settings, metrics)
    prepare_store = providers.Callable(prepare_database, settings, store)
    # -- Live updates: one hub per process fans the feed and wake-ups out to its streams -------
    # (its units only read, on the read lane, and publish nothing)
    live_units = providers.Singleton(
        UnitRunner, uow=store, clock=clock, notifier=logging_notifier, offload=read_lane
    )
    live = providers.Singleton(
        LiveHub,
        live_units,
        max_streams=settings.provided.max_streams,
        buffer=settings.provided.stream_buffer,
        poll_s=settings.provided.feed_poll_s,
        metrics=metrics,
    )
    sequencer = providers.Singleton(build_sequencer, settings, store, metrics, live)
    feed_listener = providers.Singleton(build_feed_listener, store, metrics, live)
    notifier = providers.Singleton(build_notifier, logging_notifier, live, sequencer)
    units = providers.Singleton(UnitRunner, uow=store, clock=clock, notifier=notifier)
    # The units of the use cases that also wait on Stripe, run from the event loop.
    checkout_units = providers.Singleton(
        UnitRunner, uow=store, clock=clock, notifier=notifier, offload=checkout_lane
    )
    background_units = providers.Singleton(
        UnitRunner, uow=store, clock=clock, notifier=notifier, offload=background_lane
    )

    # -- Payment provider ---------------------------------------------------------------------
    catalog = providers.Singleton(load_catalog, settings)
    stripe = providers.Singleton(build_stripe_gateway, settings)  # tests swap in memory's
    gateway = providers.Singleton(
        BoundedPaymentGateway,
        stripe,
        limit=settings.provided.stripe_max_concurrency,
        timeout_s=settings.provided.stripe_timeout_s,
        metrics=metrics,
    )
    fake_stripe_config = providers.Singleton(build_fake_stripe_config, settings)
    event_parser = providers.Singleton(build_event_parser)

    # -- Use cases ----------------------------------------------------------------------------
    list_coin_packages = providers.Singleton(ListCoinPackages, catalog)
    create_checkout = providers.Singleton(CreateCheckout, checkout_units, gateway, catalog)
    get_payment_status = providers.Singleton(GetPaymentStatus, units)
    cancel_checkout = providers.Singleton(CancelCheckout, checkout_units, gateway)
    refund_payment = providers.Singleton(RefundPayment, checkout_units, gateway)
    get_balance = providers.Singleton(GetBalance, units)
    spend_coins = providers.Singleton(
        SpendCoins, units, settings.provided.max_coins
    )
    grant_coins = providers.Singleton(
        GrantCoins, units, settings.provided.max_coins
    )
    list_transactions = providers.Singleton(ListTransactions, units)
    watch_payment_status = providers.Singleton(
        WatchPaymentStatus, get_payment_status, live, read_lane,
        max_s=settings.provided.max_watch_s,
    )
    stream_transactions = providers.Singleton(
        StreamTransactions, live_units, live,
        idle_checkpoint_s=settings.provided.stream_checkpoint_s,
    )
    apply_payment_event = providers.Singleton(
        ApplyPaymentEvent, units, settings.provided.event_max_attempts
    )
    reconcile = providers.Singleton(
        Reconcile, background_units, gateway, event_parser, apply_payment_event,
        providers.Callable(reconcile_age, settings),
    )
    audit = providers.Singleton(Audit, units)
    list_inbox_events = providers.Singleton(ListInboxEvents, units)
    replay_inbox_event = providers.Singleton(
        ReplayInboxEvent, units, event_parser, apply_payment_event
    )

    # -- gRPC edge ----------------------------------------------------------------------------
    servicer = providers.Singleton(
        BillingServicer,
        providers.Singleton(
            BillingUseCases,
            list_coin_packages=list_coin_packages,
            create_checkout=create_checkout,
            get_payment_status=get_payment_status,
            cancel_checkout=cancel_checkout,
            refund_payment=refund_payment,
            get_balance=get_balance,
            spend_coins=spend_coins,
            grant_coins=grant_coins,
            list_transactions=list_transactions,
            watch_payment_status=watch_payment_status,
            stream_transactions=stream_transactions,
        ),
        providers.Singleton(DatabaseLanes, reads=read_lane, writes=write_lane),
    )
    api_callers = providers.Singleton(callers_of, settings)
    interceptors = providers.Singleton(server_interceptors, metrics, api_callers, rpc_refusals)
    grpc_credentials = providers.Singleton(build_grpc_credentials, settings)

    # -- HTTP edge (the admin app is given its readiness probe by the server) ----------------
    public_app = providers.Factory(
        build_public_app, apply_payment_event, settings, metrics, webhook_lane,
        webhook_refusals,
    )
    public_connections = providers.Factory(
        build_public_connections, settings, metrics, webhook_refusals
    )
    admin_app = providers.Factory(build_admin_app, metrics=metrics, lane=background_lane)


def build_container(settings: Settings | None = None) -> Container:
    """A container for `settings` (default: read from the environment when first needed)."""
    container = Container()
    if settings is not None:
        container.settings.override(providers.Object(settings))
    return container
