"""Prometheus metrics of the service, on a registry the composition root owns.

One object, passed to whichever adapter observes something; nothing registered at import time.
With BILLING_WORKERS > 1 every worker writes its samples to the supervisor's directory
(prometheus-client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR when the library is
imported), and `exposition()` merges all of them: any worker's /metrics answers for the service.
Each gauge says how its workers' values combine.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhook_events = Counter(
            "billing_webhook_events_total",
            "Webhook requests by event type and outcome (applied, duplicate, ignored, unmatched, "
            "rejected, rejected_signature, rejected_source, failed_permanent, failed_transient).",
            ["type", "outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "billing_webhook_latency_seconds", "Time to verify and apply one webhook.", registry=r
        )
        self.webhook_batch_size = Histogram(
            "billing_webhook_batch_size",
            "Webhook events applied in one transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.webhook_connections = Gauge(
            "billing_webhook_open_connections", "Open connections on the public port.", registry=r
        )
        self.webhook_connections_closed = Counter(
            "billing_webhook_connections_closed_total",
            "Public-port connections the service closed itself: over_limit (refused at once), "
            "header_timeout, bad_http (a malformed request), idle_reclaimed (an idle keep-alive "
            "connection closed to make room at the limit), held_overflow (a connection sent "
            "more than 64 KiB while made to wait).",
            ["reason"],
            registry=r,
        )
        self.webhook_refusals_slowed = Counter(
            "billing_webhook_refusals_slowed_total",
            "Refused public-port requests past BILLING_WEBHOOK_MAX_REFUSALS_PER_S whose "
            "connection was made to wait before its next request was read.",
            registry=r,
        )
        self.sessions_final = Counter(
            "billing_sessions_final_total",
            "Payment sessions reaching a status (the payment success rate is COMPLETED over all).",
            ["status"],
            registry=r,
        )
        self.coins = Counter(
            "billing_coins_total",
            "Coins moved, by direction and transaction type.",
            ["direction", "type"],
            registry=r,
        )
        self.shortfalls = Counter(
            "billing_shortfall_coins_total",
            "Coins a refund or dispute could not take back because they were spent.",
            registry=r,
        )
        self.late_payments = Counter(
            "billing_late_payments_total",
            "Paid completions for sessions that had already ended unpaid (credited).",
            registry=r,
        )
        self.rejected_events = Counter(
            "billing_rejected_events_total", "Provider events that can never apply.", registry=r
        )
        self.rpcs = Counter(
            "billing_rpc_total",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "billing_rpc_latency_seconds", "gRPC call latency by method.", ["method"], registry=r
        )
        self.reconcile_runs = Counter(
            "billing_reconcile_runs_total", "Reconciliation passes.", registry=r
        )
        self.reconcile_fixes = Counter(
            "billing_reconcile_fixes_total",
            "Things reconciliation settled, by kind.",
            ["kind"],
            registry=r,
        )
        self.parked_events = Gauge(
            "billing_parked_events", "Inbox events parked after too many attempts.", registry=r,
            multiprocess_mode="livemax",  # one worker reconciles and counts them
        )
        self.stripe_in_flight = Gauge(
            "billing_stripe_calls_in_flight",
            "Stripe calls in flight (slots held, from before the local write to Stripe's answer).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stripe_latency = Histogram(
            "billing_stripe_call_seconds",
            "Stripe call latency (SDK retries included) by endpoint and outcome (ok, rejected, "
            "unavailable, timeout, cancelled, error).",
            ["endpoint", "outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.stripe_limit = Gauge(
            "billing_stripe_calls_limit",
            "BILLING_STRIPE_MAX_CONCURRENCY: Stripe calls each process lets in flight (summed "
            "over the workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stripe_shed = Counter(
            "billing_stripe_shed_total",
            "Requests refused with OVERLOADED because BILLING_STRIPE_MAX_CONCURRENCY Stripe calls "
            "were in flight.",
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "billing_db_pool_in_use", "Database connections checked out.", registry=r,
            multiprocess_mode="livesum",
        )
        self.db_round_trips = Counter(
            "billing_db_round_trips_total",
            "Round trips to the database (each query sent, BEGIN and COMMIT included).",
            registry=r,
        )

        self.streams_open = Gauge(
            "billing_streams_open",
            "Open streams by RPC (WatchPaymentStatus, StreamTransactions); past "
            "BILLING_MAX_STREAMS per process a new one gets OVERLOADED.",
            ["rpc"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams_refused = Counter(
            "billing_streams_refused_total",
            "Streams refused (overloaded: BILLING_MAX_STREAMS) or ended by the service "
            "(slow_consumer, shutting_down).",
            ["reason"],
            registry=r,
        )
        self.feed_lag = Histogram(
            "billing_feed_lag_seconds",
            "From a ledger row's write to its delivery to the process's streams (the feed tail).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.sequencer_batch = Histogram(
            "billing_feed_sequencer_batch_rows",
            "Ledger rows given feed positions in one sequencer transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.feed_notifications = Counter(
            "billing_feed_notifications_total",
            "Postgres notifications received by the process's listener, by channel "
            "(billing_feed: new positions; billing_status: a status change without a ledger row).",
            ["channel"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text a Prometheus scrape gets: this process's metrics, or every worker's."""
        if not os.environ.get(MULTIPROCESS_DIR_ENV):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
