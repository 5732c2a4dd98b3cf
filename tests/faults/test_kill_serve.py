"""`kill -9` of `billing serve` in the middle of the webhook storm (issue 6), twice, each time
restarted on the same database and ports while the sender keeps re-sending like Stripe (refused
connections, resets, requests whose answer never came): nothing lost, nothing doubled, `billing
audit` passes."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.faults.processes import base_env
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
KILL_AT = (0.25, 0.6)  # of the deliveries acknowledged
STORM_TIMEOUT_S = 300.0


def test_kill_9_of_billing_serve_mid_storm_loses_and_doubles_nothing(
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

    storm = sender().start(plan.slots)
    killed_at = []
    for fraction in KILL_AT:
        wait_until_acknowledged(storm, int(plan.deliveries * fraction), STORM_TIMEOUT_S)
        killed_at.append(storm.stats.deliveries)
        serve.kill()
        serve.start()  # same ports, same database, same fake Stripe state
    storm.join(STORM_TIMEOUT_S)

    text = settle_and_check(
        "kill -9 of billing serve mid-storm", plan=plan, storm=storm, sender_for=sender,
        database_url=fresh_database, env=env, cwd=tmp_path, serve=serve,
        figures={"seed": run_seed, "create_s": round(created_s, 1),
                 "restarts": f"billing {serve.starts - 1} (kill -9)",
                 "killed_after_acknowledged": killed_at},
    )
    assert serve.starts == 1 + len(KILL_AT), text
    assert storm.stats.connection_errors > 0, f"the sender never saw the service gone\n{text}"
    assert serve.stop() == 0, serve.log_tail()
