"""Two `billing serve` replicas on one database, the fake Stripe as its own process (issue 6):
the storm's deliveries go to a random replica each, so copies of one event race on both, and
each re-send may land on the other: every paid session credited exactly once, audit passes."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.faults.processes import base_env
from tests.faults.storm import StripeLikeSender, create_sessions, plan_storm, seed, settle_and_check

# A smaller storm than test_webhook_storm's 500 sessions / 2,000 deliveries (same shape), so
# that the whole directory stays within its time budget on a loaded 2-core machine.
SESSIONS = 300
USERS = 75
DELIVERIES = 1200
STORM_TIMEOUT_S = 300.0


def test_two_replicas_receiving_the_same_storm_credit_each_paid_session_once(
    fresh_database: str, serve_factory, fake_stripe_factory, tmp_path: Path
) -> None:
    run_seed = seed()
    rng = random.Random(run_seed)
    fake_env = base_env(tmp_path / "stripe-fake", fresh_database)
    replicas_env = [base_env(tmp_path / name, fresh_database) for name in ("a", "b")]
    # The fake sends its own events (none in this storm) to replica a.
    fake_env["BILLING_FAKE_STRIPE_WEBHOOK_URL"] = (
        f"http://127.0.0.1:{replicas_env[0]['BILLING_HTTP_PORT']}/api/payment/webhook")
    fake = fake_stripe_factory(fake_env)
    fake.start()
    replicas = []
    for name, env in zip(("a", "b"), replicas_env, strict=True):
        env["STRIPE_API_BASE"] = fake.url  # so neither starts a fake of its own
        replica = serve_factory(env, name)
        replica.start()
        replicas.append(replica)

    started = time.monotonic()
    sessions = create_sessions(replicas, SESSIONS, users=USERS, rng=rng,
                               database_url=fresh_database)
    created_s = time.monotonic() - started
    plan = plan_storm(sessions, deliveries=DELIVERIES, rng=rng)
    targets = [replica.webhook_url for replica in replicas]

    def sender() -> StripeLikeSender:
        return StripeLikeSender(lambda: targets, seed=rng.randrange(2**32))

    storm = sender()
    storm.send(plan.slots, STORM_TIMEOUT_S)

    settle_and_check(
        "two replicas, one database", plan=plan, storm=storm, sender_for=sender,
        database_url=fresh_database, env=replicas_env[1], cwd=tmp_path, serve=replicas[1],
        metrics_from=replicas,
        figures={"seed": run_seed, "create_s": round(created_s, 1), "replicas": len(replicas),
                 "restarts": 0},
    )
    for replica in replicas:
        assert replica.stop() == 0, replica.log_tail()
