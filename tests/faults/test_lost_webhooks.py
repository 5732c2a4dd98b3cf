"""Lost webhooks (issue 6): the fake Stripe drops 10 % of its deliveries
(BILLING_FAKE_STRIPE_DROP_RATE=0.1) while customers pay, abandon and let sessions expire through
it; once it has attempted every delivery, `billing reconcile` settles what the webhook never
heard: every paid session credited exactly once. Then refunds made over gRPC lose some of their
events the same way, and a second pass changes nothing twice."""

from __future__ import annotations

import json
import random
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import http_post, wait_for
from tests.faults.processes import ADMIN, FAKE_API_KEY, ServeProcess, base_env, run_billing
from tests.faults.storm import (
    Fate,
    StormPlan,
    check_ledger,
    create_sessions,
    inbox_outcomes,
    payment_rows,
    report,
    seed,
)

SESSIONS = 120
USERS = 40
PAID, EXPIRED = 90, 15  # the rest stays open (PENDING, still payable on Stripe)
REFUNDED = 15  # of the paid, over gRPC, after the first reconciliation
DROP_RATE = "0.1"
CARD = "4242424242424242"
DELIVERY_TIMEOUT_S = 180.0


def fake_events(fake_url: str, **params: str) -> list[dict[str, Any]]:
    """Every event the fake Stripe holds (GET /v1/events, all pages), newest first."""
    events: list[dict[str, Any]] = []
    query = {"limit": "100", **params}
    for _ in range(10_000):  # bounded: 1,000,000 events
        request = urllib.request.Request(
            f"{fake_url}/v1/events?{urllib.parse.urlencode(query)}",
            headers={"Authorization": f"Bearer {FAKE_API_KEY}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.load(response)
        events += page["data"]
        if not page["has_more"]:
            return events
        query["starting_after"] = page["data"][-1]["id"]
    raise AssertionError("too many pages of events")


def every_delivery_attempted(fake_url: str) -> bool:
    """No event is waiting for a (first or repeated) delivery: each was delivered or dropped."""
    return not any(e["pending_webhooks"] for e in fake_events(fake_url,
                                                              delivery_success="false"))


def reconcile(serve: ServeProcess, cwd: Path, *, processes: int = 1) -> list[dict[str, Any]]:
    """`billing reconcile`, in `processes` processes at once (as replicas would); their reports.
    """
    # Every PENDING session is stale.
    env = {**serve.env, "BILLING_RECONCILE_AFTER_S": "0"}
    with ThreadPoolExecutor(processes) as pool:
        results = list(pool.map(lambda _: run_billing(env, "reconcile", cwd=cwd),
                                range(processes)))
    reports = []
    for result in results:
        assert result.returncode == 0, (
            f"billing reconcile failed:\n{result.stdout}{result.stderr}")
        reports.append(json.loads(result.stdout))
    return reports


def fixed(reports: list[dict[str, Any]], kind: str) -> int:
    return sum(report["fixes"].get(kind, 0) for report in reports)


def test_lost_webhooks_are_settled_by_reconcile_exactly_once(
    fresh_database: str, serve_factory, tmp_path: Path
) -> None:
    run_seed = seed()
    rng = random.Random(run_seed)
    env = base_env(tmp_path / "serve", fresh_database, BILLING_FAKE_STRIPE_DROP_RATE=DROP_RATE)
    serve = serve_factory(env, "serve")
    serve.start()
    fake = serve.fake_stripe_url

    sessions = create_sessions([serve], SESSIONS, users=USERS, rng=rng,
                               database_url=fresh_database)
    rng.shuffle(sessions)
    fates = [Fate.PAID] * PAID + [Fate.EXPIRED] * EXPIRED
    sessions = [replace(s, fate=fates[i] if i < len(fates) else Fate.UNTOUCHED)
                for i, s in enumerate(sessions)]

    def act(session) -> None:
        if session.fate is Fate.PAID:  # the customer pays on the checkout page
            status, body = http_post(f"{fake}/c/pay/{session.session_id}",
                                     urllib.parse.urlencode({"card_number": CARD}).encode(),
                                     {"Content-Type": "application/x-www-form-urlencoded"},
                                     timeout=30)
        elif session.fate is Fate.EXPIRED:  # Stripe expires it
            status, body = http_post(f"{fake}/_fake/sessions/{session.session_id}/expire",
                                     b"", {}, timeout=30)
        else:
            return
        assert status == 200, body

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(act, sessions))
    acted_s = time.monotonic() - started
    wait_for(lambda: every_delivery_attempted(fake), DELIVERY_TIMEOUT_S,
             "the fake Stripe to attempt every delivery")
    delivered_s = time.monotonic() - started - acted_s
    dropped_first = len(fake_events(fake, delivery_success="false"))
    rows = {row["payment_id"]: row for row in payment_rows(fresh_database).values()}
    lost_payments = sum(rows[s.payment_id]["status"] == "PENDING" for s in sessions
                        if s.fate is Fate.PAID)
    lost_expiries = sum(rows[s.payment_id]["status"] == "PENDING" for s in sessions
                        if s.fate is Fate.EXPIRED)
    # Two passes at once, as two replicas' loops would run them: rows are claimed, so each
    # lost payment is credited by exactly one of them.
    first = reconcile(serve, tmp_path, processes=2)
    plan = StormPlan(sorted(sessions, key=lambda s: s.session_id), [], [])
    after_first = check_ledger(fresh_database, plan, serve, check_inbox=False)

    # Refunds over gRPC: debited at once; their Stripe events are dropped like any other.
    refunded = [s for s in sessions if s.fate is Fate.PAID][:REFUNDED]
    with serve.stub() as stub:
        for session in refunded:
            answer = stub.RefundPayment(pb.RefundPaymentRequest(
                user_id=session.user_id, session_id=session.session_id, reason="fault suite",
                request_id=f"refund-{session.session_id[-12:]}"), metadata=ADMIN, timeout=60)
            assert answer.status == pb.PAYMENT_STATUS_REFUNDED, answer
    refunded_ids = {s.session_id for s in refunded}
    sessions = [replace(s, fate=Fate.REFUNDED) if s.session_id in refunded_ids else s
                for s in sessions]
    wait_for(lambda: every_delivery_attempted(fake), DELIVERY_TIMEOUT_S,
             "the fake Stripe to attempt every delivery of the refunds' events")
    second = reconcile(serve, tmp_path, processes=2)
    plan = StormPlan(sorted(sessions, key=lambda s: s.session_id), [], [])
    final = check_ledger(fresh_database, plan, serve, check_inbox=False)

    # Nothing lost: every event Stripe made is in the inbox now, applied (or ignored).
    events = fake_events(fake)
    outcomes = inbox_outcomes(fresh_database)
    inbox_violations = [f"event {e['id']} ({e['type']}): {outcomes.get(e['id'], 'missing')}"
                        for e in events
                        if outcomes.get(e["id"]) not in ("applied", "ignored")]
    dropped = len(fake_events(fake, delivery_success="false"))
    audited = run_billing(env, "audit", cwd=tmp_path)
    violations = after_first.violations + final.violations + inbox_violations
    text = report("lost webhooks", {
        "seed": run_seed, "sessions": len(sessions), "paid": PAID, "expired": EXPIRED,
        "left_open": SESSIONS - PAID - EXPIRED, "refunded_over_grpc": REFUNDED,
        "events_made_by_stripe": len(events), "deliveries_dropped": dropped,
        "dropped_before_refunds": dropped_first,
        "payments_lost_before_reconcile": lost_payments,
        "expiries_lost_before_reconcile": lost_expiries,
        "pay_and_expire_s": round(acted_s, 1), "deliveries_s": round(delivered_s, 1),
        "reconcile_1": first, "reconcile_2": second, "restarts": 0,
        **final.figures, "audit_exit": audited.returncode,
        "violations": len(violations) + (audited.returncode != 0),
    })
    assert dropped_first > 0, f"the fake dropped nothing: the suite proved nothing\n{text}"
    assert fixed(first, "credited") == lost_payments, f"double or missed work\n{text}"
    assert fixed(first, "expired") == lost_expiries, f"double or missed work\n{text}"
    assert fixed(second, "credited") == fixed(second, "expired") == 0, text
    assert not violations, "\n".join([text, *violations[:50]])
    assert audited.returncode == 0, f"{text}\n{audited.stdout}{audited.stderr}"
    assert serve.stop() == 0, serve.log_tail()
