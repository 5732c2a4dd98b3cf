"""The webhook storm: sessions made through the real gRPC API, Stripe-shaped events about them
(built and signed by tests.integration.webhook.stripe_events, independently of billing's code),
a sender that delivers them like Stripe, and the check of what the ledger says afterwards.

The sender POSTs every copy of every event concurrently, in shuffled order, and, like Stripe,
re-sends a delivery (re-signed, with exponential backoff) until it is answered 2xx: after a 503,
a refused connection, a reset or a timeout alike. Every loop is bounded in attempts and time.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from billing.adapters.sql.tables import accounts, ledger, payments, webhook_inbox
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import CANCEL_URL, SUCCESS_URL, http_get, wait_for
from tests.faults.processes import ADMIN, WEBHOOK_SECRET, ServeProcess, audit
from tests.integration.webhook.stripe_events import CheckoutEvents, encode, stripe_signature, unique

PACKAGES = ("coins_100", "coins_500", "coins_1000")


class Fate(enum.StrEnum):
    """What happens to a session in the storm, hence its expected final state."""

    PAID = "paid"  # checkout.session.completed (paid)
    REFUNDED = "refunded"  # paid, then fully refunded from the dashboard
    EXPIRED = "expired"  # checkout.session.expired
    UNTOUCHED = "untouched"  # no event at all: stays PENDING


EXPECTED_STATUS = {
    Fate.PAID: pb.PAYMENT_STATUS_COMPLETED,
    Fate.REFUNDED: pb.PAYMENT_STATUS_REFUNDED,
    Fate.EXPIRED: pb.PAYMENT_STATUS_EXPIRED,
    Fate.UNTOUCHED: pb.PAYMENT_STATUS_PENDING,
}


@dataclass(frozen=True)
class Session:
    """A checkout made through CreateCheckoutSession, as the database recorded it."""

    user_id: str
    session_id: str
    payment_id: str
    package_id: str
    amount_minor: int
    currency: str
    total_coins: int
    fate: Fate = Fate.UNTOUCHED


@dataclass(frozen=True)
class StormEvent:
    event_id: str
    type: str
    session_id: str
    body: bytes


@dataclass
class StormPlan:
    sessions: list[Session]
    events: list[StormEvent]
    slots: list[tuple[StormEvent, ...]]  # each slot: one delivery, or a burst of copies at once

    @property
    def deliveries(self) -> int:
        return sum(len(slot) for slot in self.slots)

    @property
    def duplicates(self) -> int:
        return self.deliveries - len(self.events)

    def fates(self) -> Counter[str]:
        return Counter(s.fate.value for s in self.sessions)


# -- sessions, through the real API --------------------------------------------------------
def create_sessions(
    serves: Sequence[ServeProcess], count: int, *, users: int, rng: random.Random,
    database_url: str, workers: int = 8,
) -> list[Session]:
    """`count` checkouts over `users` users, made by CreateCheckoutSession (round-robin over
    `serves`), so the rows and the fake Stripe's sessions exist; payment ids read back from
    the database (Stripe's metadata carries the same)."""
    run = uuid.uuid4().hex[:8]
    user_ids = [f"storm-{run}-u{n:03d}" for n in range(users)]
    requests = [
        pb.CreateCheckoutSessionRequest(
            user_id=user_ids[n % users], package_id=rng.choice(PACKAGES),
            success_url=SUCCESS_URL, cancel_url=CANCEL_URL, request_id=f"storm-{run}-{n:04d}")
        for n in range(count)
    ]

    def create(index: int) -> tuple[str, str, str]:
        serve = serves[index % len(serves)]
        request = requests[index]
        with serve.stub() as stub:
            answer = stub.CreateCheckoutSession(request, metadata=ADMIN, timeout=60)
        return answer.session_id, request.user_id, request.package_id

    with ThreadPoolExecutor(workers) as pool:
        created = list(pool.map(create, range(count)))
    prices = package_prices(serves[0])
    rows = payment_rows(database_url)
    sessions = []
    for session_id, user_id, package_id in created:
        row = rows[session_id]
        assert (row["user_id"], row["package_id"]) == (user_id, package_id)
        amount_minor, currency, total = prices[package_id]
        assert (row["amount_minor"], row["currency"]) == (amount_minor, currency)
        sessions.append(Session(user_id, session_id, row["payment_id"], package_id,
                                amount_minor, currency, total))
    return sessions


def package_prices(serve: ServeProcess) -> dict[str, tuple[int, str, int]]:
    """package id -> (amount_minor, currency, coins + bonus), from ListCoinPackages."""
    with serve.stub() as stub:
        listing = stub.ListCoinPackages(pb.ListCoinPackagesRequest(), metadata=ADMIN, timeout=30)
    return {p.id: (p.price.amount_minor, p.price.currency, p.coins + p.bonus)
            for p in listing.packages}


def payment_rows(database_url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(select(payments))
            return {row.stripe_session_id: dict(row._mapping) for row in result
                    if row.stripe_session_id}
    finally:
        engine.dispose()


# -- the plan ------------------------------------------------------------------------------
def plan_storm(
    sessions: Sequence[Session], *, deliveries: int, rng: random.Random,
    shares: tuple[float, float, float] = (0.60, 0.15, 0.20),
    burst_share: float = 0.5,
) -> StormPlan:
    """Give each session a fate (paid, refunded, expired, else untouched, by `shares`), build
    its events and their 2–4 copies, `deliveries` in all; a `burst_share` of the events have
    all their copies sent at the same instant, the other copies land anywhere in the shuffle."""
    order = list(sessions)
    rng.shuffle(order)
    n = len(order)
    paid, refunded, expired = (round(n * share) for share in shares)
    fates = ([Fate.PAID] * paid + [Fate.REFUNDED] * refunded + [Fate.EXPIRED] * expired
             + [Fate.UNTOUCHED] * (n - paid - refunded - expired))
    created = int(time.time())
    planned: list[Session] = []
    events: list[StormEvent] = []
    for session, fate in zip(order, fates, strict=True):
        session = replace(session, fate=fate)
        planned.append(session)
        builder = CheckoutEvents.for_session(
            session.session_id, session.payment_id, session.user_id, session.amount_minor,
            session.currency, created)
        documents: list[dict[str, Any]] = []
        if fate in (Fate.PAID, Fate.REFUNDED):
            documents.append(builder.completed())
        if fate is Fate.REFUNDED:
            # From the dashboard: no refund_key, matched by the payment intent, keyed by re_.
            documents.append(builder.refund("created", refund_id=unique("re")))
            documents.append(builder.charge_refunded(session.amount_minor))
        if fate is Fate.EXPIRED:
            documents.append(builder.expired())
        events += [StormEvent(d["id"], d["type"], session.session_id, encode(d))
                   for d in documents]
    copies = _copies(len(events), deliveries, rng)
    slots: list[tuple[StormEvent, ...]] = []
    for stored, count in zip(events, copies, strict=True):
        if rng.random() < burst_share:
            slots.append((stored,) * count)
        else:
            slots += [(stored,)] * count
    rng.shuffle(slots)
    planned.sort(key=lambda s: s.session_id)
    return StormPlan(planned, events, slots)


def _copies(events: int, deliveries: int, rng: random.Random) -> list[int]:
    """2–4 copies per event, `deliveries` in all."""
    if not 2 * events <= deliveries <= 4 * events:
        raise ValueError(f"{deliveries} deliveries cannot be 2–4 copies of {events} events")
    copies = [2] * events
    extra = deliveries - 2 * events
    open_slots = list(range(events))
    while extra:
        index = rng.randrange(len(open_slots))
        copies[open_slots[index]] += 1
        extra -= 1
        if copies[open_slots[index]] == 4:
            open_slots[index] = open_slots[-1]
            open_slots.pop()
    return copies


# -- the sender ----------------------------------------------------------------------------
@dataclass
class SenderStats:
    deliveries: int = 0  # deliveries answered 2xx
    attempts: int = 0  # POSTs tried
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "conn:…"
    answers: Counter[str] = field(default_factory=Counter)  # the receiver's outcome of a 2xx
    most_attempts: int = 0  # of one delivery
    gave_up: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return self.attempts - self.deliveries - len(self.gave_up)

    @property
    def status_503(self) -> int:
        return self.statuses["503"]

    @property
    def connection_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("conn:"))

    def unexpected_statuses(self) -> dict[str, int]:
        """Answers a sound receiver never gives a validly signed, well-formed event: anything
        but 2xx, 503 and a dropped connection."""
        return {s: n for s, n in self.statuses.items()
                if not (s.startswith("2") or s == "503" or s.startswith("conn:"))}

    def summary(self) -> dict[str, Any]:
        return {"acknowledged": self.deliveries, "attempts": self.attempts,
                "retries": self.retries, "503s": self.status_503,
                "connection_errors": self.connection_errors, "statuses": dict(self.statuses),
                "answers": dict(self.answers), "most_attempts_one_delivery": self.most_attempts,
                "gave_up": len(self.gave_up)}


class StripeLikeSender:
    """Delivers slots of signed events with `concurrency` workers (asyncio + aiohttp) on a
    thread of its own, so that the test can break things while it runs."""

    _live: ClassVar[weakref.WeakSet[StripeLikeSender]] = weakref.WeakSet()

    @classmethod
    def cancel_all(cls, timeout: float = 30.0) -> None:
        """Stop every sender still running (a failed test must not leave one re-sending to a
        port that a later test's server may get)."""
        for sender in list(cls._live):
            sender.cancel(timeout)

    def __init__(
        self, targets: Callable[[], Sequence[str]], *, secret: str = WEBHOOK_SECRET,
        concurrency: int = 16, max_attempts: int = 400, delivery_deadline_s: float = 240.0,
        request_timeout_s: float = 15.0, initial_backoff_s: float = 0.05,
        max_backoff_s: float = 1.0, seed: int = 0,
    ) -> None:
        self._targets = targets
        self._secret = secret
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._delivery_deadline_s = delivery_deadline_s
        self._request_timeout_s = request_timeout_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._rng = random.Random(seed)
        self.stats = SenderStats()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self.elapsed_s = 0.0

    # -- running -------------------------------------------------------------------------------
    def start(self, slots: Sequence[tuple[StormEvent, ...]]) -> StripeLikeSender:
        assert self._thread is None, "one run per sender"
        self._thread = threading.Thread(target=self._run, args=(list(slots),),
                                        name="stripe-like-sender", daemon=True)
        self._live.add(self)
        self._thread.start()
        return self

    def cancel(self, timeout: float = 30.0) -> None:
        """Stop: no new attempt starts; those in flight end within their request timeout."""
        self._cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: float) -> SenderStats:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the sender did not finish within {timeout} s: "
                                 f"{self.stats.summary()}")
        if self._error is not None:
            raise AssertionError(f"the sender failed: {self._error!r}") from self._error
        return self.stats

    def send(self, slots: Sequence[tuple[StormEvent, ...]], timeout: float) -> SenderStats:
        return self.start(slots).join(timeout)

    def _run(self, slots: list[tuple[StormEvent, ...]]) -> None:
        started = time.monotonic()
        try:
            asyncio.run(self._main(slots))
        except BaseException as error:  # reported by join()
            self._error = error
        finally:
            self.elapsed_s = time.monotonic() - started

    async def _main(self, slots: list[tuple[StormEvent, ...]]) -> None:
        queue: asyncio.Queue[tuple[StormEvent, ...]] = asyncio.Queue()
        for slot in slots:
            queue.put_nowait(slot)
        connector = aiohttp.TCPConnector(limit=self._concurrency * 4)
        timeout = aiohttp.ClientTimeout(total=self._request_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def worker() -> None:
                while not queue.empty() and not self._cancelled.is_set():
                    slot = queue.get_nowait()
                    await asyncio.gather(*(self._deliver(http, event) for event in slot))

            await asyncio.gather(*(worker() for _ in range(self._concurrency)))

    async def _deliver(self, http: aiohttp.ClientSession, event: StormEvent) -> None:
        deadline = time.monotonic() + self._delivery_deadline_s
        for attempt in range(1, self._max_attempts + 1):
            if self._cancelled.is_set():
                break
            self.stats.attempts += 1
            self.stats.most_attempts = max(self.stats.most_attempts, attempt)
            url = self._rng.choice(list(self._targets()))
            headers = {  # re-signed for each attempt, as Stripe does
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": stripe_signature(event.body, self._secret, int(time.time())),
            }
            try:
                async with http.post(url, data=event.body, headers=headers) as response:
                    status = response.status
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                status, body = 0, f"conn:{type(error).__name__}".encode()
            label = str(status) if status else body.decode()
            self.stats.statuses[label] += 1
            if 200 <= status < 300:
                self.stats.deliveries += 1
                self.stats.answers[_answer(body)] += 1
                return
            if time.monotonic() >= deadline:
                break
            backoff = min(self._initial_backoff_s * 2 ** min(attempt - 1, 20), self._max_backoff_s)
            await asyncio.sleep(backoff * self._rng.uniform(0.5, 1.0))  # Stripe's backoff
        self.stats.gave_up.append(event.event_id)


def _answer(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return "unreadable"
    return "duplicate" if document.get("duplicate") else str(document.get("outcome"))


def resend_unmatched(
    plan: StormPlan, database_url: str, sender_for: Callable[[], StripeLikeSender],
    *, rounds: int = 3, timeout: float = 120.0,
) -> int:
    """Events recorded `unmatched` (every copy of a refund arrived before its session's payment:
    Stripe does not order deliveries) are delivered once more, as the dashboard's "Resend"
    does; a redelivery of an unmatched event is applied again. How many were re-sent."""
    by_id = {event.event_id: event for event in plan.events}
    resent = 0
    for _ in range(rounds):
        unmatched = [event_id for event_id, outcome in inbox_outcomes(database_url).items()
                     if outcome == "unmatched" and event_id in by_id]
        if not unmatched:
            break
        sender_for().send([(by_id[event_id],) for event_id in unmatched], timeout)
        resent += len(unmatched)
    return resent


# -- what the database says ------------------------------------------------------------------
def inbox_outcomes(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(webhook_inbox.c.event_id, webhook_inbox.c.outcome))
            return {row.event_id: row.outcome for row in rows}
    finally:
        engine.dispose()


@dataclass
class LedgerCheck:
    violations: list[str]
    figures: dict[str, Any]


def check_ledger(
    database_url: str, plan: StormPlan, serve: ServeProcess, *, check_inbox: bool = True,
) -> LedgerCheck:
    """Every paid session credited exactly once (one PURCHASE row, COMPLETED or REFUNDED over
    gRPC), every refunded one debited once, nothing credited that was not paid, each user's
    balance exactly what its sessions add up to, and (with `check_inbox`) every event of the
    plan recorded and applied: nothing lost, nothing doubled."""
    violations: list[str] = []
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = {row.payment_id: row for row in connection.execute(select(payments))}
            ledger_counts = Counter(
                (row.payment_id, row.type) for row in
                connection.execute(select(ledger.c.payment_id, ledger.c.type)))
            balances = {row.user_id: row.balance for row in
                        connection.execute(select(accounts.c.user_id, accounts.c.balance))}
            ledger_rows = connection.execute(select(func.count()).select_from(ledger)) \
                .scalar_one()
    finally:
        engine.dispose()

    expected_balance: Counter[str] = Counter()
    expected_rows = 0
    for session in plan.sessions:
        row = rows.get(session.payment_id)
        if row is None:
            violations.append(f"{session.session_id}: no payment row")
            continue
        purchases = ledger_counts[(session.payment_id, "PURCHASE")]
        refunds = ledger_counts[(session.payment_id, "REFUND")]
        paid = session.fate in (Fate.PAID, Fate.REFUNDED)
        want = (1 if paid else 0, 1 if session.fate is Fate.REFUNDED else 0)
        expected_rows += sum(want)
        if (purchases, refunds) != want:
            violations.append(f"{session.session_id} ({session.fate}): {purchases} PURCHASE and "
                              f"{refunds} REFUND rows, expected {want[0]} and {want[1]}")
        want_status = pb.PaymentStatus.Name(EXPECTED_STATUS[session.fate]) \
            .removeprefix("PAYMENT_STATUS_")
        if row.status != want_status:
            violations.append(f"{session.session_id} ({session.fate}): status {row.status}, "
                              f"expected {want_status}")
        if session.fate is Fate.PAID:
            expected_balance[session.user_id] += session.total_coins
    for user_id in {s.user_id for s in plan.sessions}:
        if balances.get(user_id, 0) != expected_balance[user_id]:
            violations.append(f"user {user_id}: balance {balances.get(user_id, 0)}, expected "
                              f"{expected_balance[user_id]}")
    if ledger_rows != expected_rows:
        violations.append(f"{ledger_rows} ledger rows, expected {expected_rows}")

    violations += _check_over_grpc(plan, serve)

    lost = unapplied = 0
    if check_inbox:
        outcomes = inbox_outcomes(database_url)
        for event in plan.events:
            outcome = outcomes.get(event.event_id)
            if outcome is None:
                lost += 1
                violations.append(f"event {event.event_id} ({event.type}) was never recorded")
            elif outcome != "applied":
                unapplied += 1
                violations.append(f"event {event.event_id} ({event.type}): {outcome}")
    credits = sum(n for (_, kind), n in ledger_counts.items() if kind == "PURCHASE")
    debits = sum(n for (_, kind), n in ledger_counts.items() if kind == "REFUND")
    figures = {"credits": credits, "refund_debits": debits, "ledger_rows": ledger_rows,
               "events_lost": lost, "events_not_applied": unapplied,
               "violations": len(violations)}
    return LedgerCheck(violations, figures)


def _check_over_grpc(plan: StormPlan, serve: ServeProcess) -> list[str]:
    violations = []
    with serve.stub() as stub:
        for session in plan.sessions:
            answer = stub.GetPaymentStatus(
                pb.GetPaymentStatusRequest(user_id=session.user_id,
                                           session_id=session.session_id),
                metadata=ADMIN, timeout=30)
            want = EXPECTED_STATUS[session.fate]
            credited = session.total_coins if session.fate in (Fate.PAID, Fate.REFUNDED) else 0
            refunded = session.total_coins if session.fate is Fate.REFUNDED else 0
            got = (answer.status, answer.coins_added, answer.coins_refunded)
            if got != (want, credited, refunded):
                violations.append(
                    f"GetPaymentStatus {session.session_id} ({session.fate}): "
                    f"{pb.PaymentStatus.Name(answer.status)}, coins_added {answer.coins_added}, "
                    f"coins_refunded {answer.coins_refunded}; expected "
                    f"{pb.PaymentStatus.Name(want)}, {credited}, {refunded}")
    return violations


def wait_until_acknowledged(sender: StripeLikeSender, count: int, timeout: float) -> None:
    wait_for(lambda: sender.stats.deliveries >= count, timeout,
             f"{count} deliveries to be acknowledged ({sender.stats.summary()})")


# -- figures ---------------------------------------------------------------------------------
def report(suite: str, figures: dict[str, Any]) -> str:
    """One readable block of a suite's figures: printed (pytest -s) and put in assertions."""
    lines = [f"[{suite}]"] + [f"  {name}: {value}" for name, value in figures.items()]
    text = "\n".join(lines)
    print(text)
    return text


def seed() -> int:
    """A new seed per run (printed with the figures); FAULTS_SEED replays a plan."""
    chosen = os.environ.get("FAULTS_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


def webhook_outcomes(serve: ServeProcess) -> Counter[str]:
    """billing_webhook_events_total from the admin port's /metrics, summed by outcome."""
    url = f"http://127.0.0.1:{serve.env['BILLING_ADMIN_PORT']}/metrics"
    status, body = http_get(url, timeout=30)
    assert status == 200, body
    outcomes: Counter[str] = Counter()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "billing_webhook_events_total":
                outcomes[sample.labels["outcome"]] += int(sample.value)
    return outcomes


def metrics_mismatches(serves: Sequence[ServeProcess], stats: SenderStats) -> list[str]:
    """What /metrics counted (summed over `serves`) against what the sender was answered,
    request for request: each 503 is one failed_transient, each 2xx one applied, unmatched or
    duplicate."""
    counted: Counter[str] = Counter()
    for serve in serves:
        counted.update(webhook_outcomes(serve))
    seen = Counter({"failed_transient": stats.status_503, **stats.answers})
    return [f"/metrics counts {counted[outcome]} {outcome}, the sender saw {seen[outcome]}"
            for outcome in sorted(set(counted) | set(seen)) if counted[outcome] != seen[outcome]]


def settle_and_check(
    suite: str, *, plan: StormPlan, storm: StripeLikeSender, sender_for:
    Callable[[], StripeLikeSender], database_url: str, env: dict[str, str], cwd: Path,
    serve: ServeProcess, figures: dict[str, Any], allowed_statuses: frozenset[str] = frozenset(),
    metrics_from: Sequence[ServeProcess] = (),
) -> str:
    """After a storm: re-send what is still unmatched, check the ledger and the inbox, run
    `billing audit`, print the figures, and assert nothing was lost or doubled. With
    `metrics_from` (every process that received the storm, none restarted), their /metrics
    must agree with what the sender was answered.
    The figures' text, for the caller's own assertions."""
    stats = storm.stats
    started = time.monotonic()
    metric_problems = metrics_mismatches(metrics_from, stats) if metrics_from else []
    resent = resend_unmatched(plan, database_url, sender_for)
    check = check_ledger(database_url, plan, serve)
    audited = audit(env, cwd)
    unexpected = {s: n for s, n in stats.unexpected_statuses().items()
                  if s not in allowed_statuses}
    all_figures = {
        **figures, "sessions": len(plan.sessions), "fates": dict(plan.fates()),
        "events": len(plan.events), "deliveries": plan.deliveries,
        "duplicates": plan.duplicates, "bursts": sum(len(slot) > 1 for slot in plan.slots),
        **stats.summary(), "late_resends_of_unmatched": resent, **check.figures,
        "audit_exit": audited.returncode, "storm_s": round(storm.elapsed_s, 1),
        "check_s": round(time.monotonic() - started, 1),
    }
    if metrics_from:
        all_figures["metrics_mismatches"] = len(metric_problems)
    all_figures["violations"] = (len(check.violations) + len(unexpected) + len(stats.gave_up)
                                 + (audited.returncode != 0) + len(metric_problems))
    text = report(suite, all_figures)
    assert not stats.gave_up, f"deliveries never acknowledged: {stats.gave_up[:10]}\n{text}"
    assert not unexpected, f"answers a sound receiver never gives: {unexpected}\n{text}\n" \
        f"{serve.log_tail()}"
    assert not check.violations, "\n".join([text, *check.violations[:50]])
    assert audited.returncode == 0, f"{text}\n{audited.stdout}{audited.stderr}"
    assert not metric_problems, "\n".join([text, *metric_problems])
    return text
