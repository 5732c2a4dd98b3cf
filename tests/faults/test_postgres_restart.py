"""Postgres restarted in the middle of the webhook storm (issue 6), on a throwaway cluster of
this test's own: the receiver answers 503 while the database is away, the sender re-sends like
Stripe, gRPC health goes NOT_SERVING and back, and the service heals without a restart: nothing
lost, nothing doubled, `billing audit` passes."""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc

from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import reason_of, wait_for
from tests.faults.processes import (
    ADMIN,
    HealthWatcher,
    PostgresCluster,
    ServeProcess,
    base_env,
    migrate,
)
from tests.faults.storm import (
    StripeLikeSender,
    create_sessions,
    plan_storm,
    seed,
    settle_and_check,
    wait_until_acknowledged,
)

# A smaller storm than test_webhook_storm's 500 sessions / 2,000 deliveries (same shape), so
# that the whole directory stays within its time budget on a loaded 2-core machine.
SESSIONS = 300
USERS = 75
DELIVERIES = 1200
RESTART_AT = 0.3  # of the deliveries acknowledged
STORM_TIMEOUT_S = 300.0


def test_postgres_restarted_mid_storm_loses_and_doubles_nothing(
    throwaway_cluster: PostgresCluster, serve_factory, tmp_path: Path
) -> None:
    cluster = throwaway_cluster
    run_seed = seed()
    rng = random.Random(run_seed)
    database_url = cluster.create_database("billing_faults")
    env = base_env(tmp_path / "serve", database_url)
    migrate(env, tmp_path)
    serve = serve_factory(env, "serve")
    serve.start()

    started = time.monotonic()
    sessions = create_sessions([serve], SESSIONS, users=USERS, rng=rng, database_url=database_url)
    created_s = time.monotonic() - started
    plan = plan_storm(sessions, deliveries=DELIVERIES, rng=rng)

    def sender() -> StripeLikeSender:
        return StripeLikeSender(lambda: [serve.webhook_url], seed=rng.randrange(2**32))

    # Health is watched from before the storm, so the restart follows the trigger at once.
    with HealthWatcher(serve, deadline_s=2 * STORM_TIMEOUT_S) as watcher:
        wait_for(lambda: watcher.saw("SERVING"), 30, "health SERVING before the storm")
        storm = sender().start(plan.slots)
        wait_until_acknowledged(storm, int(plan.deliveries * RESTART_AT), STORM_TIMEOUT_S)
        before = storm.stats.summary()
        down_at = time.monotonic()
        cluster.stop("immediate")  # a crash of Postgres: every connection dropped at once
        wait_for(lambda: watcher.saw_after("NOT_SERVING", down_at)
                 and 503 in watcher.readyz_codes(), 60,
                 "gRPC health to go NOT_SERVING and /readyz 503 with Postgres down")
        wait_for(lambda: storm.stats.status_503 > before["503s"], 60,
                 "the webhook to answer 503 with Postgres down")
        acknowledged_down = storm.stats.deliveries
        rpc_while_down = _get_balance_error(serve, plan.sessions[0].user_id)
        cluster.start()
        cluster.restarts += 1
        up_at = time.monotonic()
        outage_s = up_at - down_at
        wait_for(lambda: watcher.saw_after("SERVING", up_at), 60,
                 "gRPC health to be SERVING again, without restarting billing")
        healed_s = time.monotonic() - up_at
        storm.join(STORM_TIMEOUT_S)
    transitions = watcher.transitions()
    readyz = sorted(watcher.readyz_codes())

    text = settle_and_check(
        "postgres restarted mid-storm", plan=plan, storm=storm, sender_for=sender,
        database_url=database_url, env=env, cwd=tmp_path, serve=serve,
        metrics_from=[serve],
        figures={"seed": run_seed, "create_s": round(created_s, 1),
                 "restarts": f"postgres {cluster.restarts}, billing 0",
                 "acknowledged_before_restart": before["acknowledged"],
                 "acknowledged_when_503_seen": acknowledged_down,
                 "outage_s": round(outage_s, 1), "healed_after_s": round(healed_s, 1),
                 "health_transitions": " -> ".join(transitions), "readyz_codes": readyz,
                 "GetBalance_while_down": rpc_while_down},
    )
    assert rpc_while_down == ("UNAVAILABLE", "STORE_UNAVAILABLE"), text
    assert storm.stats.status_503 > 0, text
    assert transitions[0] == "SERVING" and "NOT_SERVING" in transitions, text
    assert transitions[-1] == "SERVING", text
    assert 503 in readyz and 200 in readyz, text
    assert serve.starts == 1 and serve.running, f"billing was restarted or died\n{text}"
    assert serve.stop() == 0, serve.log_tail()


def _get_balance_error(serve: ServeProcess, user_id: str) -> tuple[str, str]:
    """(status code, ErrorInfo reason) of a GetBalance while the database is down."""
    with serve.stub() as stub:
        try:
            stub.GetBalance(pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN, timeout=30)
        except grpc.RpcError as error:
            code, reason, _ = reason_of(error)
            return code.name, reason
    return "OK", ""
