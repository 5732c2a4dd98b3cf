"""Prometheus metrics of the service, on a registry the composition root owns.

One object, passed to whichever adapter observes something; nothing registered at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhook_events = Counter(
            "billing_webhook_events_total",
            "Webhook requests by event type and outcome (applied, duplicate, ignored, unmatched, "
            "rejected, rejected_signature, failed_permanent, failed_transient).",
            ["type", "outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "billing_webhook_latency_seconds", "Time to verify and apply one webhook.", registry=r
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
            "billing_parked_events", "Inbox events parked after too many attempts.", registry=r
        )
        self.db_pool_in_use = Gauge(
            "billing_db_pool_in_use", "Database connections checked out.", registry=r
        )
        self.db_round_trips = Counter(
            "billing_db_round_trips_total",
            "Round trips to the database (each query sent, BEGIN and COMMIT included).",
            registry=r,
        )
