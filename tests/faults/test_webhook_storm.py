"""Webhook storm (issue 6): 2,000 signed deliveries about 500 sessions made through the real
gRPC API, each event delivered 2–4 times, concurrently and shuffled, with expiries and dashboard
refunds mixed in, against `billing serve` on Postgres: every paid session is credited exactly
once and `billing audit` passes."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.faults.processes import base_env
from tests.faults.storm import StripeLikeSender, create_sessions, plan_storm, seed, settle_and_check

SESSIONS = 500
USERS = 125  # four sessions a user: credits contend for the same account rows
DELIVERIES = 2000
STORM_TIMEOUT_S = 300.0


def test_a_storm_of_duplicated_shuffled_events_credits_every_paid_session_once(
    fresh_database: str, serve_factory, tmp_path: Path
) -> None:
    run_seed = seed()
    rng = random.Random(run_seed)
    env = base_env(tmp_path / "serve", fresh_database)
    serve = serve_factory(env, "serve")
    serve.start()

    started = time.monotonic()
    sessions = create_sessions([serve], SESSIONS, users=USERS, rng=rng,
                               database_url=fresh_database)
    created_s = time.monotonic() - started
    plan = plan_storm(sessions, deliveries=DELIVERIES, rng=rng)

    def sender() -> StripeLikeSender:
        return StripeLikeSender(lambda: [serve.webhook_url], seed=rng.randrange(2**32))

    storm = sender()
    storm.send(plan.slots, STORM_TIMEOUT_S)

    settle_and_check(
        "webhook storm", plan=plan, storm=storm, sender_for=sender,
        database_url=fresh_database, env=env, cwd=tmp_path, serve=serve,
        metrics_from=[serve],
        figures={"seed": run_seed, "restarts": 0, "create_s": round(created_s, 1)},
    )
    assert serve.stop() == 0, serve.log_tail()
