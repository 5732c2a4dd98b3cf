"""The hot paths (issues 7 and 11): webhook credits/s, GetBalance/s, SpendCoins/s and p99, each
run beside the same-run figure of its local limit, alternating (limit run 1, service run 1, limit
run 2, ...), so that load from elsewhere on the machine hits both sides of a ratio alike:

- webhook credits: the HTTP limit (a bare aiohttp app checking the same signed bodies, wrk -c32)
  and the Postgres limit (pgbench running a credit-shaped transaction, 32 clients); and the peer,
  the guide's Flask app this service replaces, under the same load (bench/peer.py);
- GetBalance and SpendCoins: a bare grpcio server of the same flavour doing the least database
  work each RPC needs (bench/grpc_bare.py).

The throughput runs use BENCH_WORKERS workers; one run each at N=1 and N=2 is added for
comparison. Beside every run: CPU per operation over every process of `billing serve` (the
supervisor and all its workers) and over the Postgres backends, the steadiest figures on a shared
machine; and, on a single worker, the database round trips per operation the service counts at
its driver (billing_db_round_trips_total), cross-checked against pg_stat_database. After the loads:
no double credit, no negative balance, and `billing audit` clean.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import grpc_bare, grpc_load, pg_limit, service, util, webhook_load, wrk
from bench.config import (
    COMPARE_WORKERS,
    DURATION_S,
    HTTP_CONNECTIONS,
    PG_CLIENTS,
    RUNS,
    SERVICE_SESSIONS,
    WARMUP_S,
    WEBHOOK_SESSIONS,
    WORKERS,
)
from bench.peer import Peer
from bench.results import FIGURES, guarded, note_cpu
from bench.util import fmt, log

SERVE = "billing serve"
# Side figures, shown in the table but not part of the contract's lines.
HTTP_LIMIT: list[float] = []
PG_LIMIT: list[float] = []


@dataclass
class Operation:
    """One hot path: its figures' names (per_s, cpu_ms_per_x, db_round_trips_per_x)."""

    name: str  # as in the figures: credit, get_balance, spend
    label: str
    per_s: str
    postgres_ms: list[float] = field(default_factory=list)  # per operation, per measured run
    commits: list[float] = field(default_factory=list)  # per operation, on the single worker
    rollbacks: list[float] = field(default_factory=list)


OPERATIONS = {
    "webhook": Operation("credit", "webhook credits", "webhook_credits_per_s"),
    "balance": Operation("get_balance", "GetBalance", "get_balance_per_s"),
    "spend": Operation("spend", "SpendCoins", "spend_per_s"),
}
PEER_CPU_MS: list[float] = []  # the peer's CPU per credit, per run (beside the service's)
# Per worker count, per section: (operations/s, CPU ms per operation) of each run.
BY_WORKERS: dict[int, dict[str, list[tuple[float, float]]]] = {}


class Services:
    """The `billing serve`s of the throughput runs, on one database: the measured one (BENCH_WORKERS
    workers), one per other worker count compared, and which of them counts round trips (the
    single-worker one)."""

    def __init__(self, database: str, logs: Path) -> None:
        self.main = _service(database, WORKERS, logs)
        self.others = {n: _service(database, n, logs) for n in COMPARE_WORKERS if n != WORKERS}
        self.counting = self.main if WORKERS == 1 else self.others.get(1)

    def all(self) -> list[service.Service]:
        return [self.main, *self.others.values()]

    def start(self) -> None:
        for svc in self.all():
            svc.start()
            log(f"  {svc.describe_processes()}")
        service.prepare(self.main, SERVICE_SESSIONS)

    def stop(self) -> None:
        for svc in self.all():
            code = svc.stop()
            if code not in (0, None):
                log(f"  !! billing serve exited {code} on SIGTERM:\n{svc.tail()}")
            svc.close()


def _service(database: str, workers: int, logs: Path) -> service.Service:
    return service.Service(database, log_path=logs / f"serve-throughput-w{workers}.log",
                           env={"BILLING_WORKERS": str(workers)})


def run(sections: set[str], folder: Path, logs: Path) -> None:
    with util.throwaway_database("limit") as limit_db, \
            util.throwaway_database("service") as service_db:
        log("== preparing: two throwaway databases at head (billing migrate)")
        util.migrate(limit_db)
        util.migrate(service_db)
        util.seed_accounts(limit_db, service.USERS, 10**12)
        pg_limit.seed_payments(limit_db)
        services = Services(service_db, logs)
        try:
            log(f"== billing serve for the throughput runs (BENCH_WORKERS={WORKERS}; the others"
                " for comparison)")
            guarded("billing serve", services.start)
            if "webhook" in sections:
                guarded("webhook", lambda: webhook_section(services, limit_db, folder))
            for mode in ("balance", "spend"):
                if mode in sections:
                    guarded(mode, lambda mode=mode: grpc_section(services, limit_db, mode))
            _workers_table()
            for svc in services.all():
                if svc.proc is not None and svc.proc.poll() is None:
                    log(f"  RSS of billing serve (w{svc.workers}) after the throughput runs:"
                        f" {svc.rss_mb():.1f} MB")
        finally:
            services.stop()
        log("== after the loads: double credits, negative balances, billing audit")
        guarded("integrity", lambda: check_integrity(service_db))


# -- webhook credits -------------------------------------------------------------------------------
class HttpLimit:
    """The bare aiohttp app (bench/http_bare.py) under wrk, cycling through signed bodies."""

    def __init__(self, requests_file: Path) -> None:
        self.port = util.free_port()
        self.requests_file = requests_file
        self.proc = util.start([util.PYTHON, "-m", "bench.http_bare", str(self.port), wrk.SECRET])
        util.wait_port(self.port, proc=self.proc)

    def run(self, r: int) -> None:
        wrk.resign(self.requests_file)
        runner = wrk.Wrk(self.port, self.requests_file, DURATION_S, distinct=False,
                         connections=HTTP_CONNECTIONS)
        wrk_pid = runner.start()
        cpu = util.CpuWindow(groups={"bare aiohttp": [self.proc.pid], "wrk": [wrk_pid]})
        cpu.over_middle(DURATION_S)
        result = runner.result(timeout_s=DURATION_S + 30)
        if result.non_2xx or result.socket_errors:
            raise RuntimeError(f"the bare HTTP app failed requests: {result.describe()}")
        HTTP_LIMIT.append(result.per_s)
        log(f"  [{r}] HTTP limit (bare aiohttp, wrk -c{HTTP_CONNECTIONS}): {result.describe()}")
        note_cpu("HTTP limit", cpu, cpu.costs("bare aiohttp", result.per_s), "bare aiohttp")

    def close(self) -> None:
        util.stop(self.proc)


def pg_limit_run(r: int, database: str, payload: str) -> None:
    result = pg_limit.run(database, payload, clients=PG_CLIENTS, duration_s=DURATION_S)
    PG_LIMIT.append(result.tps)
    log(f"  [{r}] Postgres limit (pgbench, credit-shaped script, -c{PG_CLIENTS}):"
        f" {result.describe()}")
    note_cpu("Postgres limit", result.cpu, result.cpu.costs("postgres backends", result.tps),
             "postgres backends")


def service_credits(svc: service.Service, folder: Path, label: str) -> Path:
    """The requests file of one credit run on `billing serve` (WEBHOOK_SESSIONS sessions)."""
    return webhook_load.prepare(svc, folder, WEBHOOK_SESSIONS, f"{label}t{int(time.time())}")


def service_credit_run(r: int, svc: service.Service, requests_file: Path,
                       connections: int = HTTP_CONNECTIONS, duration_s: float = DURATION_S,
                       ) -> webhook_load.CreditRun:
    """One credit run on `billing serve`, its round trips counted when it exports them."""
    result = webhook_load.run(svc, SERVE, requests_file, duration_s=duration_s,
                              connections=connections, counters={
                                  "round trips": svc.round_trips,
                                  "operations": lambda: svc.metric(service.WEBHOOKS)})
    svc.alive()
    log(f"  [{r}] webhooks -> billing serve (w{svc.workers}, wrk -c{connections}):"
        f" {result.describe()}")
    if result.wrk.non_2xx or result.wrk.socket_errors:
        log(f"    !! {result.wrk.non_2xx} non-2xx answers, {result.wrk.socket_errors} socket"
            " errors")
    note_cpu("webhooks", result.cpu, result.costs, SERVE)
    return result


def webhook_section(services: Services, limit_db: str, folder: Path) -> None:
    sample_event = wrk.checkout_completed_event(
        event_id="evt_" + "0" * 24, session_id="cs_test_" + "a" * 58,
        payment_id="pay_" + "b" * 24, amount=999, currency="USD", user_id="u0001",
        created=int(time.time()), pad_to=2048)
    http_requests = folder / "http-limit.txt"
    wrk.write_requests(http_requests, [
        sample_event.replace(b"evt_" + b"0" * 24, f"evt_{i:024d}".encode()) for i in range(1000)])
    log(f"== webhook credits/s vs the HTTP and Postgres limits and the peer ({len(sample_event)}"
        "-byte signed events)")

    def measured(r: int, svc: service.Service) -> None:
        result = service_credit_run(r, svc, service_credits(svc, folder, f"wh{r}w{svc.workers}"))
        _record("webhook", services, svc, result.per_s, result.costs)

    peer_ready = guarded("peer setup", Peer.setup)
    with util.throwaway_database("peer", owner="peer" if peer_ready else None) as peer_db:
        http = HttpLimit(http_requests)
        peer = Peer(peer_db, folder)
        try:
            if peer_ready and guarded("peer start", lambda: peer.start(service.USERS)):
                log(f"  the peer: gunicorn pid {peer.pid} on port {peer.http_port}, database"
                    f" {peer_db}")
            else:
                FIGURES["webhook_credits_vs_peer"].not_measurable("the peer did not start")
            for r in range(1, RUNS + 1):
                guarded(f"HTTP limit run {r}", lambda r=r: http.run(r))
                guarded(f"Postgres limit run {r}",
                        lambda r=r: pg_limit_run(r, limit_db, sample_event.decode()))
                guarded(f"webhooks run {r}",
                        lambda r=r: measured(r, services.main))
                if peer.pid:
                    guarded(f"peer run {r}", lambda r=r: _peer_run(r, peer, folder))
            for n, svc in services.others.items():
                guarded(f"webhooks at N={n}", lambda svc=svc: measured(0, svc))
        finally:
            http.close()
            peer.stop()
    webhook = FIGURES["webhook_credits_per_s"]
    if HTTP_LIMIT and PG_LIMIT:  # the limit: min of the medians; per run, for show
        webhook.fixed_limit = min(util.median(HTTP_LIMIT), util.median(PG_LIMIT))
        webhook.limits = [min(h, p) for h, p in zip(HTTP_LIMIT, PG_LIMIT, strict=False)]


def _peer_run(r: int, peer: Peer, folder: Path) -> None:
    tag = f"peer{r}t{int(time.time())}"
    requests_file = webhook_load.prepare(peer, folder, WEBHOOK_SESSIONS, tag)
    result = webhook_load.run(peer, "peer", requests_file, duration_s=DURATION_S,
                              connections=HTTP_CONNECTIONS)
    FIGURES["webhook_credits_vs_peer"].limits.append(result.per_s)
    PEER_CPU_MS.append(result.costs.cpu_ms)
    log(f"  [{r}] webhooks -> the peer (gunicorn -w 5, wrk -c{HTTP_CONNECTIONS}):"
        f" {result.describe()}")
    note_cpu("peer", result.cpu, result.costs, "peer")


# -- GetBalance and SpendCoins ---------------------------------------------------------------------
def grpc_limit_run(r: int, database: str, mode: str) -> grpc_load.LoadResult:
    result = grpc_load.run_bare(database, mode, DURATION_S, WARMUP_S, f"limit{r}{mode}")
    if result.errors:
        raise RuntimeError(f"the bare gRPC server failed calls: {result.describe()}")
    name = "read" if mode == "balance" else "write"
    flavour, workers = grpc_bare.service_flavour()
    kind = f"thread-pool grpcio, {workers} workers" if flavour == "sync" else "grpc.aio"
    log(f"  [{r}] gRPC {name} limit (bare {kind} + psycopg2 pool): {result.describe()}")
    assert result.cpu is not None
    note_cpu(f"gRPC {name} limit", result.cpu, result.cpu.costs("bare server", result.per_s),
             "bare server")
    return result


def grpc_service_run(r: int, svc: service.Service, mode: str) -> grpc_load.LoadResult:
    result = grpc_load.run_load(svc.target, mode, duration_s=DURATION_S, warmup_s=WARMUP_S,
                                token=svc.token, key_prefix=f"svc{r}{mode}{int(time.time())}",
                                cpu_groups={SERVE: svc.pids()}, database=svc.database,
                                counters={"round trips": svc.round_trips,
                                          "operations": lambda: svc.metric(service.RPCS)})
    svc.alive()
    rpc = OPERATIONS[mode].label
    log(f"  [{r}] {rpc} -> billing serve (w{svc.workers}, {grpc_load.IN_FLIGHT} in flight,"
        f" {grpc_load.PROCS} client processes, {service.USERS} users): {result.describe()}")
    if result.errors:
        log(f"    !! errors: {result.errors}")
    assert result.cpu is not None
    note_cpu(rpc, result.cpu, result.cpu.costs(SERVE, result.per_s), SERVE)
    return result


def grpc_section(services: Services, limit_db: str, mode: str) -> None:
    operation = OPERATIONS[mode]
    log(f"== {operation.label}/s vs the gRPC {'read' if mode == 'balance' else 'write'} limit")

    def limit(r: int) -> None:
        result = grpc_limit_run(r, limit_db, mode)
        FIGURES[operation.per_s].limits.append(result.per_s)
        if mode == "spend":
            FIGURES["spend_p99_ms"].limits.append(result.p99_ms)

    def measured(r: int, svc: service.Service) -> None:
        result = grpc_service_run(r, svc, mode)
        assert result.cpu is not None
        _record(mode, services, svc, result.per_s, result.cpu.costs(SERVE, result.per_s))
        if mode == "spend" and svc is services.main:
            FIGURES["spend_p99_ms"].values.append(result.p99_ms)

    for r in range(1, RUNS + 1):
        guarded(f"gRPC {mode} limit run {r}", lambda r=r: limit(r))
        guarded(f"{operation.label} run {r}", lambda r=r: measured(r, services.main))
    for n, svc in services.others.items():
        guarded(f"{operation.label} at N={n}", lambda svc=svc: measured(0, svc))


# -- recording -------------------------------------------------------------------------------------
def _record(section: str, services: Services, svc: service.Service, per_s: float,
            costs: util.OpCosts) -> None:
    """File one service run: throughput and CPU per operation (the measured service's runs make
    the figures; every run goes to the by-workers table) and round trips (the counting one's)."""
    operation = OPERATIONS[section]
    BY_WORKERS.setdefault(svc.workers, {}).setdefault(section, []).append((per_s, costs.cpu_ms))
    if svc is services.main:
        FIGURES[operation.per_s].values.append(per_s)
        if section == "webhook":
            FIGURES["webhook_credits_vs_peer"].values.append(per_s)
        FIGURES[f"cpu_ms_per_{operation.name}"].values.append(costs.cpu_ms)
        operation.postgres_ms.append(costs.pg_ms)
        FIGURES[f"cpu_ms_per_{operation.name}"].note = (
            f"Postgres backends: {fmt(util.median(operation.postgres_ms))} ms per operation;"
            f" summed over {len(svc.pids())} process(es) of billing serve"
            f" (BILLING_WORKERS={svc.workers})"
            + (f"; the peer: {fmt(util.median(PEER_CPU_MS))} ms" if section == "webhook"
               and PEER_CPU_MS else ""))
    if svc is services.counting:
        figure = FIGURES[f"db_round_trips_per_{operation.name}"]
        operation.commits.append(costs.commits)
        operation.rollbacks.append(costs.rollbacks)
        if costs.round_trips is not None and not math.isnan(costs.round_trips):
            figure.values.append(costs.round_trips)
        else:
            figure.not_measurable(f"billing serve exports no {service.ROUND_TRIPS} on /metrics")
        figure.note = (f"cross-check on one worker: pg_stat_database xact_commit"
                       f" {fmt(util.median(operation.commits))} (+ xact_rollback"
                       f" {fmt(util.median(operation.rollbacks))}) per operation")


def _workers_table() -> None:
    if not BY_WORKERS:
        return
    log(f"== throughput by worker count (N={WORKERS}: median of its runs; the others: one run)")
    for n in sorted(BY_WORKERS):
        parts = []
        for section, runs in BY_WORKERS[n].items():
            rates, cpu = [x for x, _ in runs], [c for _, c in runs]
            parts.append(f"{OPERATIONS[section].label} {fmt(util.median(rates))}/s at"
                         f" {fmt(util.median(cpu))} ms CPU each")
        log(f"  BILLING_WORKERS={n}: " + "; ".join(parts))


# -- after the loads -------------------------------------------------------------------------------
DOUBLE_CREDITS_SQL = (
    "SELECT count(*) FROM (SELECT payment_id FROM ledger WHERE type = 'PURCHASE'"
    " GROUP BY payment_id HAVING count(*) > 1) AS doubled")
NEGATIVE_BALANCES_SQL = "SELECT count(*) FROM accounts WHERE balance < 0"


def check_integrity(database: str) -> None:
    """Sessions credited more than once, negative balances, and `billing audit`'s exit code."""
    double = int(util.execute(database, DOUBLE_CREDITS_SQL))
    negative = int(util.execute(database, NEGATIVE_BALANCES_SQL))
    FIGURES["double_credits"].values.append(double)
    FIGURES["negative_balances"].values.append(negative)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as empty:  # no .env there
        started = time.monotonic()
        done = subprocess.run(
            [util.PYTHON, "-m", "billing", "audit"], cwd=empty, capture_output=True, text=True,
            env=service.clean_env(BILLING_DATABASE_URL=util.sqlalchemy_url(database)),
            timeout=600)
    FIGURES["audit_exit_code"].values.append(done.returncode)
    output = (done.stdout + done.stderr).strip().splitlines()
    log(f"  {database}: {double} sessions credited twice, {negative} negative balances;"
        f" billing audit exit {done.returncode} in {time.monotonic() - started:.1f}s:"
        f" {' | '.join(output[-3:])}")

