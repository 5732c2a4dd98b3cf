"""The ledger feed across a Postgres crash and restart (issue 12), on a throwaway cluster: feed
consumers that drop and resume at random moments keep reading while grants and spends go on;
the sequencer and the listener reconnect by themselves, and every consumer still sees every
ledger row exactly once, in order, with each user's balance chain unbroken."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

from billing.client import BillingClient, BillingClientError
from tests.e2e.harness import ADMIN_TOKEN, wait_for
from tests.faults.processes import HealthWatcher, PostgresCluster, base_env, migrate
from tests.faults.test_feed_replicas import STREAM_ENV, Consumer, check_consumers


def test_feed_consumers_see_every_row_once_across_a_postgres_restart(
    throwaway_cluster: PostgresCluster, serve_factory, tmp_path: Path
) -> None:
    cluster = throwaway_cluster
    database_url = cluster.create_database("billing_feed")
    env = base_env(tmp_path / "serve", database_url, **STREAM_ENV)
    migrate(env, tmp_path)
    serve = serve_factory(env, "serve")
    serve.start()
    targets = [serve.grpc_target]
    run = uuid.uuid4().hex[:6]
    users = [f"pgr-{run}-{n}" for n in range(4)]
    consumers = [Consumer("all", "", targets, 11), Consumer("user-0", users[0], targets, 12)]
    threads = [threading.Thread(target=c.run, name=c.name) for c in consumers]
    for thread in threads:
        thread.start()
    stop_writing = threading.Event()
    written = [0]

    def write() -> None:
        """Grants and spends until told to stop; a call the outage refused is retried with
        the same idempotency key, so it applies once."""
        rng = random.Random(7)
        with BillingClient(serve.grpc_target, token=ADMIN_TOKEN, timeout=3) as billing:
            while not stop_writing.is_set():
                user, key = rng.choice(users), uuid.uuid4().hex
                spend = rng.random() < 0.4
                while True:
                    try:
                        if spend:
                            billing.spend_coins(user, rng.randint(1, 20), "load",
                                                idempotency_key=key)
                        else:
                            billing.grant_coins(user, rng.randint(1, 30), "load",
                                                idempotency_key=key)
                        written[0] += 1
                        break
                    except BillingClientError as error:
                        if error.reason == "INSUFFICIENT_COINS":
                            break
                        stop_writing.wait(0.2)  # the database is away: try again

    writer = threading.Thread(target=write, name="writer")
    writer.start()
    with HealthWatcher(serve, deadline_s=300) as watcher:
        wait_for(lambda: written[0] >= 40, 60, "writes before the crash")
        down_at = time.monotonic()
        cluster.stop("immediate")
        wait_for(lambda: watcher.saw_after("NOT_SERVING", down_at), 60, "health NOT_SERVING")
        at_crash = written[0]
        cluster.start()
        cluster.restarts += 1
        wait_for(lambda: watcher.saw_after("SERVING", down_at), 60, "health SERVING again")
        wait_for(lambda: written[0] >= at_crash + 40, 60, "writes after the restart")
    stop_writing.set()
    writer.join(60)
    check_consumers(consumers, threads, users, serve.grpc_target)
