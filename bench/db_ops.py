"""`python -m bench.db_ops`: the database layer alone, per operation, driven through the use cases.

No gRPC, no HTTP: a credit (ApplyPaymentEvent of a paid checkout.session.completed), a SpendCoins
and a GetBalance run against a throwaway Postgres database from THREADS threads of this process.
For each it prints, medians of RUNS runs:

- round trips per operation, counted at the driver (tests/integration/sql/driver.py: every query
  psycopg2 sends, its own implicit BEGIN and its COMMIT/ROLLBACK included), one thread;
- this process's CPU per operation (every thread), and the CPU of the Postgres backends serving
  it, from /proc;
- operations per second (wall clock, on a shared machine: the least steady figure).

It talks to the store only through SqlStore(url, pool_size=...) and the use cases, so the same
script measures any commit of the branch (run it with PYTHONPATH pointing at an export of that
commit). `--only credit --seconds 20` runs one load for long enough to attach py-spy.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bench import util
from billing.adapters.memory import RecordingNotifier
from billing.adapters.sql import SqlStore
from billing.adapters.system_clock import SystemClock
from billing.domain.money import Money
from billing.domain.payment import PaymentSession
from billing.domain.payment_events import EventKind, PaymentEvent
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
from tests.integration.sql.driver import DriverProbe

USERS = 1000
PRICE = Money("USD", 499)
LOADS = ("credit", "spend", "balance")


def seed(store: SqlStore, database: str, sessions: int) -> None:
    """USERS accounts with plenty of coins, and `sessions` PENDING checkouts spread over them."""
    util.seed_accounts(database, USERS, 1_000_000_000)
    now = datetime.now(UTC)
    for first in range(0, sessions, 1000):
        with store() as unit:
            for n in range(first, min(first + 1000, sessions)):
                unit.payments.add(PaymentSession(
                    payment_id=f"pay_b{n}", user_id=util.user_id(n % USERS), request_id=f"req{n}",
                    package_id="coins_500", coins=500, bonus=50, amount=PRICE,
                    success_url="https://shop.example/ok",
                    cancel_url="https://shop.example/cancel", expires_at=now + timedelta(hours=1),
                    created_at=now, updated_at=now, stripe_session_id=f"cs_b{n}",
                    checkout_url=f"https://checkout.example/{n}",
                ))
            unit.commit()


class Loads:
    def __init__(self, store: SqlStore) -> None:
        units = UnitRunner(store, SystemClock(), RecordingNotifier())
        self.apply = ApplyPaymentEvent(units)
        self.spend = SpendCoins(units)
        self.balance = GetBalance(units)
        self.next_session = 0
        self.tag = uuid.uuid4().hex[:8]
        self.lock = threading.Lock()

    def ops(self, load: str, count: int) -> list[Callable[[], object]]:
        made: list[Callable[[], object]] = []
        for i in range(count):
            if load == "credit":
                with self.lock:
                    n, self.next_session = self.next_session, self.next_session + 1
                made.append(_credit(self.apply, n))
            elif load == "spend":
                command = CoinsCommand(user_id=util.user_id(i % USERS), coins=1, reason="bench",
                                       idempotency_key=f"{self.tag}-{load}-{i}-{time.time_ns()}")
                made.append(lambda c=command: self.spend(c))
            else:
                user = util.user_id(i % USERS)
                made.append(lambda u=user: self.balance(u))
        return made


def _credit(apply: ApplyPaymentEvent, n: int) -> Callable[[], object]:
    event = PaymentEvent(
        event_id=f"evt_b{n}", type=EventKind.CHECKOUT_COMPLETED.value,
        created=datetime.now(UTC), payload="{}", stripe_session_id=f"cs_b{n}",
        payment_id=f"pay_b{n}", payment_intent_id=f"pi_b{n}", payment_status="paid",
        amount=PRICE)

    def run() -> object:
        result = apply(event)
        assert result.outcome.value == "applied" and not result.duplicate, result
        return result

    return run


def run_threads(ops: list[Callable[[], object]], threads: int) -> float:
    """Run `ops` split over `threads` threads; the wall-clock seconds it took."""
    slices = [ops[i::threads] for i in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(mine: list[Callable[[], object]]) -> None:
        barrier.wait()
        try:
            for op in mine:
                op()
        except BaseException as error:  # reported after the run
            errors.append(error)

    workers = [threading.Thread(target=work, args=(s,)) for s in slices]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def measure(database: str, loads: Loads, load: str, ops: int, threads: int) -> dict[str, float]:
    run_threads(loads.ops(load, threads * 5), threads)  # every pooled connection open and warm
    backends = util.postgres_backends(database)
    pg_before = sum(util.proc_ticks(pid) or 0 for pid in backends)
    work = loads.ops(load, ops)
    cpu_before = time.process_time()
    elapsed = run_threads(work, threads)
    cpu = time.process_time() - cpu_before
    pg_after = sum(util.proc_ticks(pid) or 0 for pid in backends)
    return {
        "cpu_ms": cpu / ops * 1000,
        "pg_cpu_ms": (pg_after - pg_before) / util.CLK_TCK / ops * 1000,
        "per_s": ops / elapsed,
    }


def round_trips(loads: Loads, probe: DriverProbe, load: str, ops: int = 200) -> float:
    run_threads(loads.ops(load, 10), 1)
    before = probe.round_trips
    run_threads(loads.ops(load, ops), 1)
    return (probe.round_trips - before) / ops


def each(runs: list[dict[str, float]], key: str) -> str:
    return " / ".join(f"{run[key]:.3f}" for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--ops", type=int, default=3000, help="operations per measured run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=LOADS)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="with --only: keep the load going this long (for py-spy)")
    parser.add_argument("--no-prepared", action="store_true",
                        help="SqlStore(prepared_statements=False): plain SQL, no PREPARE")
    args = parser.parse_args()
    loads_wanted = (args.only,) if args.only else LOADS
    sessions = args.ops * (args.runs + 1) + 500 + (50_000 if args.seconds else 0)
    import billing

    util.log(f"billing from {billing.__file__}; {args.threads} threads, {args.ops} ops x "
             f"{args.runs} runs")
    with util.throwaway_database("dbops") as database:
        util.migrate(database)
        counted = SqlStore(util.sqlalchemy_url(database), pool_size=2)
        probe = DriverProbe()
        probe.attach(counted.engine, counted.reader)
        seed(counted, database, sessions)
        trips = {load: round_trips(Loads(counted), probe, load) for load in loads_wanted}
        counted.dispose()

        options = {"prepared_statements": False} if args.no_prepared else {}
        store = SqlStore(util.sqlalchemy_url(database), pool_size=args.threads, **options)
        loads = Loads(store)
        loads.next_session = 1000  # the counted runs used the first sessions
        try:
            for load in loads_wanted:
                if args.seconds:
                    deadline = time.monotonic() + args.seconds
                    while time.monotonic() < deadline:
                        run_threads(loads.ops(load, 1000), args.threads)
                    continue
                runs = [measure(database, loads, load, args.ops, args.threads)
                        for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                util.log(
                    f"{load:8s} round trips/op {trips[load]:.2f}  "
                    f"service CPU/op {med['cpu_ms']:.3f} ms "
                    f"({each(runs, 'cpu_ms')})  "
                    f"Postgres CPU/op {med['pg_cpu_ms']:.3f} ms "
                    f"({each(runs, 'pg_cpu_ms')})  "
                    f"{med['per_s']:.0f}/s")
        finally:
            store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
