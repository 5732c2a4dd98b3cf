"""`python -m bench` (`make bench`): every benchmark of issue 7, 3 runs each, beside the same-run
figure of its local limit; ends with one `bench: NAME value=V limit=L ratio=R bar=B ok|short` line
per figure. Exit status 1 if a figure misses its bar or could not be measured.

    python -m bench             everything (about 10-15 minutes on 2 cores)
    python -m bench SECTION...  only some: startup webhook balance spend ledger memory abuse
                                (the figures of the others print as nan/short)
    python -m bench profile     py-spy profiles of `billing serve` under the spend, webhook and
                                GetBalance loads (needs py-spy in the virtualenv)

Limits and service runs alternate (limit run 1, service run 1, limit run 2, ...), so a burst of
load from elsewhere on the machine hits both sides of a ratio alike. Environment knobs:
BENCH_DURATION_S (measured seconds per run, default 6), BENCH_RUNS (3), BENCH_MEMORY_REQUESTS
(200000), BENCH_BUDGET_S (840: the memory run, last but for the ~1.5-minute abuse section,
stops early to keep the whole run within it), BENCH_MEMORY_MAX_S (a fixed time cap per half of
the memory run instead).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench import abuse, grpc_bare, grpc_load, pg_limit, service, util, wrk
from bench.util import fmt, log

DURATION_S = float(os.environ.get("BENCH_DURATION_S", "6"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WARMUP_S = 1.0
USERS = 1000
GRANT_COINS = 1_000_000
SERVICE_SESSIONS = 300  # created through CreateCheckoutSession; the rest are copies of them
WEBHOOK_SESSIONS_PER_RUN = int(os.environ.get("BENCH_WEBHOOK_SESSIONS", "15000"))
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "200000"))
# The memory run takes what is left of the time budget (make bench stays within ~15 minutes);
# BENCH_MEMORY_MAX_S, when set, caps each half instead.
BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", "840"))
MEMORY_MAX_S = float(os.environ.get("BENCH_MEMORY_MAX_S", "0"))
MEMORY_WEBHOOK_EVERY = 10
HTTP_CONNECTIONS = 32
PG_CLIENTS = 32


@dataclass
class Figure:
    """One figure: the service's values per run, its limit's values per run, and its bar."""

    name: str
    unit: str
    bar: float
    higher_is_better: bool
    values: list[float] = field(default_factory=list)
    limits: list[float] = field(default_factory=list)
    fixed_limit: float | None = None  # rss/growth/startup: the limit is the bar itself
    limit_name: str = ""
    note: str = ""

    @property
    def value(self) -> float:
        return util.median(self.values)

    @property
    def limit(self) -> float:
        return self.fixed_limit if self.fixed_limit is not None else util.median(self.limits)

    @property
    def ratio(self) -> float:
        value, limit = self.value, self.limit
        if math.isnan(value) or math.isnan(limit) or limit == 0:
            return float("nan")
        return value / limit

    @property
    def ok(self) -> bool:
        ratio = self.ratio
        if math.isnan(ratio):
            return False
        return ratio >= self.bar if self.higher_is_better else ratio <= self.bar

    def line(self) -> str:
        return (f"bench: {self.name} value={_num(self.value)} limit={_num(self.limit)}"
                f" ratio={_num(self.ratio, 3)} bar={_num(self.bar)}"
                f" {'ok' if self.ok else 'short'}")


def _num(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "nan"
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"


FIGURES = {
    "webhook_credits_per_s": Figure("webhook_credits_per_s", "credits/s", 0.25, True,
                                    limit_name="min(HTTP limit, Postgres limit)"),
    "spend_per_s": Figure("spend_per_s", "calls/s", 0.5, True, limit_name="gRPC write limit"),
    "spend_p99_ms": Figure("spend_p99_ms", "ms", 2.0, False, limit_name="gRPC write limit p99"),
    "get_balance_per_s": Figure("get_balance_per_s", "calls/s", 0.7, True,
                                limit_name="gRPC read limit"),
    "ledger_first_page_ms_1m": Figure("ledger_first_page_ms_1m", "ms", 1.5, False,
                                      limit_name="same page at 10k rows"),
    "ledger_deep_page_ms_1m": Figure("ledger_deep_page_ms_1m", "ms", 1.5, False,
                                     limit_name="same page at 10k rows"),
    "rss_mb": Figure("rss_mb", "MB", 1.0, False, fixed_limit=250.0, limit_name="bar"),
    "rss_growth_pct": Figure("rss_growth_pct", "%", 1.0, False, fixed_limit=5.0,
                             limit_name="bar"),
    "startup_s": Figure("startup_s", "s", 1.0, False, fixed_limit=2.0, limit_name="bar"),
    # Issue 13: a forged flood beside a legitimate webhook stream (bench/abuse.py).
    "flood_log_growth_kb": Figure("flood_log_growth_kb", "KB", 1.0, False, fixed_limit=20.0,
                                  limit_name="bar"),
    "flood_legit_p99_ms": Figure("flood_legit_p99_ms", "ms", 3.0, False,
                                 limit_name="same stream's quiet p99"),
}
# Side figures, shown in the table but not part of the contract's lines.
HTTP_LIMIT: list[float] = []
PG_LIMIT: list[float] = []
FLOOD_CPU_MS: list[float] = []  # service CPU per refused request, per abuse run
SATURATED: dict[str, list[str]] = {}
BACKGROUND: list[float] = []  # CPU % used by processes outside the benchmark, per run
FAILURES: list[str] = []


def note_cpu(label: str, cpu: util.CpuWindow | None, rate: float = 0.0,
             server: str = "") -> None:
    if cpu is None:
        return
    log(f"    {cpu.describe()}")
    if rate > 0 and server in cpu.result:
        # CPU time per request: what a faster service must cut (the GIL caps one process).
        per_request = cpu.result[server] * 10 / rate
        backends = cpu.result.get("postgres backends", 0.0) * 10 / rate
        log(f"    per request: {per_request:.2f} ms CPU in {server}"
            + (f", {backends:.2f} ms in Postgres backends"
               if cpu.database and server != "postgres backends" else ""))
    BACKGROUND.append(cpu.others)
    hot = cpu.saturated()
    if hot:
        SATURATED.setdefault(label, []).extend(hot)


def guarded(label: str, action: Callable[[], None]) -> None:
    """Run one benchmark step; a failure is reported and the others go on."""
    try:
        action()
    except Exception as error:  # report and carry on: every other figure is still useful
        FAILURES.append(f"{label}: {type(error).__name__}: {error}")
        log(f"  !! {label} failed: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3)


# -- the limits ----------------------------------------------------------------------------------
class HttpLimit:
    def __init__(self, requests_file: Path) -> None:
        self.port = util.free_port()
        self.requests_file = requests_file
        self.proc = util.start([util.PYTHON, "-m", "bench.http_bare", str(self.port), wrk.SECRET])
        util.wait_port(self.port, proc=self.proc)

    def run(self, r: int) -> None:
        # The bodies are re-signed for every run: the signature's timestamp must stay fresh.
        bodies = [line.split(b"\t", 1)[1].rstrip(b"\n")
                  for line in self.requests_file.read_bytes().splitlines(keepends=True)]
        wrk.write_requests(self.requests_file, bodies)
        runner = wrk.Wrk(self.port, self.requests_file, DURATION_S, distinct=False,
                         connections=HTTP_CONNECTIONS)
        wrk_pid = runner.start()
        cpu = util.CpuWindow(groups={"bare aiohttp": [self.proc.pid], "wrk": [wrk_pid]})
        time.sleep(0.5)
        cpu.start()
        time.sleep(max(0.5, DURATION_S - 1.0))
        cpu.stop()
        result = runner.result(timeout_s=DURATION_S + 30)
        if result.non_2xx or result.socket_errors:
            raise RuntimeError(f"the bare HTTP app failed requests: {result.describe()}")
        HTTP_LIMIT.append(result.per_s)
        log(f"  [{r}] HTTP limit (bare aiohttp, wrk -c{HTTP_CONNECTIONS}): {result.describe()}")
        note_cpu("HTTP limit", cpu, result.per_s, "bare aiohttp")

    def close(self) -> None:
        util.stop(self.proc)


def pg_limit_run(r: int, database: str, payload: str) -> None:
    result = pg_limit.run(database, payload, clients=PG_CLIENTS, duration_s=DURATION_S)
    PG_LIMIT.append(result.tps)
    log(f"  [{r}] Postgres limit (pgbench, credit-shaped script, -c{PG_CLIENTS}):"
        f" {result.describe()}")
    note_cpu("Postgres limit", result.cpu, result.tps, "postgres backends")


def grpc_limit_run(r: int, database: str, mode: str) -> grpc_load.LoadResult:
    result = grpc_load.run_bare(database, mode, DURATION_S, WARMUP_S, f"limit{r}{mode}")
    if result.errors:
        raise RuntimeError(f"the bare gRPC server failed calls: {result.describe()}")
    name = "read" if mode == "balance" else "write"
    flavour, workers = grpc_bare.service_flavour()
    kind = f"thread-pool grpcio, {workers} workers" if flavour == "sync" else "grpc.aio"
    log(f"  [{r}] gRPC {name} limit (bare {kind} + psycopg2 pool): {result.describe()}")
    note_cpu(f"gRPC {name} limit", result.cpu, result.per_s, "bare server")
    return result


# -- the service ---------------------------------------------------------------------------------
def measure_startup(database: str) -> None:
    for r in range(1, RUNS + 1):
        svc = service.Service(database, log_path=LOGS / f"serve-startup-{r}.log")
        try:
            seconds = svc.start()
            code = svc.stop()
        finally:
            svc.close()
        FIGURES["startup_s"].values.append(seconds)
        log(f"  [{r}] start-up: all ports ready after {seconds:.2f}s (exit {code} on SIGTERM)")


def prepare_service_data(svc: service.Service) -> None:
    result = grpc_load.run_load(svc.target, "grant", count=USERS, token=svc.token,
                                key_prefix="grant", grant_coins=GRANT_COINS)
    if result.errors:
        raise RuntimeError(f"GrantCoins failed: {result.describe()}")
    log(f"  GrantCoins {GRANT_COINS:,} coins to each of {USERS} users: {result.describe()}")
    package = svc.first_package()
    result = grpc_load.run_load(svc.target, "checkout", count=SERVICE_SESSIONS, token=svc.token,
                                key_prefix="checkout", package_id=package,
                                cpu_groups={"billing serve": [svc.pid]}, database=svc.database)
    if result.errors:
        raise RuntimeError(f"CreateCheckoutSession failed: {result.describe()}")
    log(f"  CreateCheckoutSession ({package}, fake Stripe in-process) x{SERVICE_SESSIONS}:"
        f" {result.describe()}")
    note_cpu("CreateCheckoutSession", result.cpu)


def webhook_run(r: int, svc: service.Service, folder: Path) -> None:
    tag = f"wh{r}{int(time.time())}"
    service.clone_sessions(svc.database, WEBHOOK_SESSIONS_PER_RUN, tag)
    sessions = svc.pending_sessions(request_prefix=tag)
    if r == 1:  # the first run also fires the sessions made through the service itself
        sessions = svc.pending_sessions(request_prefix="checkout-") + sessions
    requests_file = folder / f"webhooks-{r}.txt"
    wrk.write_requests(requests_file, service.webhook_bodies(sessions, tag))
    credits_before = svc.count("SELECT count(*) FROM ledger WHERE type = 'PURCHASE'")
    runner = wrk.Wrk(svc.http_port, requests_file, DURATION_S, distinct=True,
                     connections=HTTP_CONNECTIONS)
    wrk_pid = runner.start()
    cpu = util.CpuWindow(groups={"billing serve": [svc.pid], "wrk": [wrk_pid]},
                         database=svc.database)
    time.sleep(0.5)
    cpu.start()
    time.sleep(max(0.5, DURATION_S - 1.0))
    cpu.stop()
    result = runner.result(timeout_s=DURATION_S + 60)
    svc.alive()
    time.sleep(0.2)
    credits = svc.count("SELECT count(*) FROM ledger WHERE type = 'PURCHASE'") - credits_before
    exhausted = credits >= len(sessions) - HTTP_CONNECTIONS
    if exhausted:  # every session was credited before the end: rate over the credits' span
        span = svc.count(
            "SELECT ceil(1000 * extract(epoch FROM max(created_at) - min(created_at)))"
            f" FROM ledger WHERE type = 'PURCHASE' AND request_id LIKE 'evt_{tag}%'") / 1000
        rate = credits / max(span, 1e-3)
    else:
        # Answered 200 within wrk's window, and each a credit (the few still in flight when
        # wrk stopped are credited after it: not counted).
        rate = min(credits, result.requests - result.non_2xx) / result.duration_s
    FIGURES["webhook_credits_per_s"].values.append(rate)
    log(f"  [{r}] webhooks -> billing serve (wrk -c{HTTP_CONNECTIONS}, {len(sessions)} distinct"
        f" paid sessions): {credits} credits = {rate:.0f} credits/s; wrk {result.describe()}"
        + (" [all sessions used: rate over the credits' span]" if exhausted else ""))
    if result.non_2xx or result.socket_errors:
        log(f"    !! {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors")
    note_cpu("webhooks", cpu, rate, "billing serve")


def grpc_service_run(r: int, svc: service.Service, mode: str) -> grpc_load.LoadResult:
    result = grpc_load.run_load(svc.target, mode, duration_s=DURATION_S, warmup_s=WARMUP_S,
                                token=svc.token, key_prefix=f"svc{r}{mode}{int(time.time())}",
                                cpu_groups={"billing serve": [svc.pid]}, database=svc.database)
    svc.alive()
    rpc = "GetBalance" if mode == "balance" else "SpendCoins"
    log(f"  [{r}] {rpc} -> billing serve ({grpc_load.IN_FLIGHT} in flight,"
        f" {grpc_load.PROCS} client processes, {USERS} users): {result.describe()}")
    if result.errors:
        log(f"    !! errors: {result.errors}")
    note_cpu(rpc, result.cpu, result.per_s, "billing serve")
    return result


def measure_memory(database: str, folder: Path, max_s: float) -> None:
    """A fresh `billing serve`; RSS after MEMORY_REQUESTS/2 and MEMORY_REQUESTS mixed requests
    (GetBalance 40 %, SpendCoins 50 %, signed webhooks for distinct sessions 10 %), each half
    stopping early after `max_s` seconds."""
    log(f"  at most {max_s:.0f}s per half")
    svc = service.Service(database, log_path=LOGS / "serve-memory.log")
    try:
        svc.start()
        log(f"  fresh billing serve: RSS {svc.rss_mb():.1f} MB after start")
        if svc.count("SELECT count(*) FROM accounts") < USERS or not svc.count(
                "SELECT count(*) FROM payments WHERE stripe_session_id IS NOT NULL"):
            prepare_service_data(svc)  # run on its own: the users and sessions it needs
            log(f"  RSS {svc.rss_mb():.1f} MB after preparing")
        done, samples = 0, []
        for half in (1, 2):
            share = MEMORY_REQUESTS // 2
            tag = f"mem{half}{int(time.time())}"
            service.clone_sessions(database, share // MEMORY_WEBHOOK_EVERY + 100, tag)
            requests_file = folder / f"memory-{half}.txt"
            wrk.write_requests(requests_file, service.webhook_bodies(
                svc.pending_sessions(request_prefix=tag), tag))
            result = grpc_load.run_load(
                svc.target, "mixed", count=share, token=svc.token, key_prefix=tag,
                cpu_groups={"billing serve": [svc.pid]}, database=database,
                webhook_file=str(requests_file), webhook_url=svc.webhook_url,
                webhook_every=MEMORY_WEBHOOK_EVERY, max_s=max_s, timeout_s=max_s + 120)
            done += result.calls
            rss = svc.rss_mb()  # raises if billing serve is gone
            samples.append((done, rss))
            log(f"  memory half {half}: {result.describe()} ({result.webhooks} webhooks);"
                f" RSS {rss:.1f} MB after {done:,} requests")
            note_cpu("mixed load", result.cpu)
        (n1, rss1), (n2, rss2) = samples
        FIGURES["rss_mb"].values.append(rss2)
        FIGURES["rss_growth_pct"].values.append((rss2 - rss1) / rss1 * 100)
        if n2 < MEMORY_REQUESTS:
            note = (f"after {n1:,} and {n2:,} requests: {MEMORY_REQUESTS:,} did not fit in"
                    f" {max_s:.0f}s per half")
            FIGURES["rss_mb"].note = FIGURES["rss_growth_pct"].note = note
            log(f"  !! {note}")
    finally:
        code = svc.stop()
        svc.close()
        log(f"  billing serve exit code on SIGTERM: {code}")


# -- the ledger (bench/ledger_pages.py, the SQL engineer's) --------------------------------------
def measure_ledger() -> None:
    done = subprocess.run([util.PYTHON, "-m", "bench.ledger_pages"], cwd=util.ROOT,
                          capture_output=True, text=True, timeout=900)
    for line in done.stdout.splitlines():
        if not line.startswith("bench: "):
            log(f"  {line}")
    pages = {int(m.group(1).replace(",", "")): (float(m.group(2)), float(m.group(3)))
             for m in re.finditer(r"([\d,]+) rows: first page ([\d.]+) ms, deep page ([\d.]+) ms",
                                  done.stdout)}
    if len(pages) != 2:
        raise RuntimeError(f"bench.ledger_pages exited {done.returncode} without its figures:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    small, large = sorted(pages)
    for index, name in enumerate(("ledger_first_page_ms_1m", "ledger_deep_page_ms_1m")):
        figure = FIGURES[name]
        figure.values.append(pages[large][index])
        figure.limits.append(pages[small][index])
        figure.note = (f"median of 51 calls each ({large:,} vs {small:,} rows),"
                       " from bench/ledger_pages.py")


# -- the public port under abuse (bench/abuse.py) -------------------------------------------------
def measure_abuse(database: str, folder: Path) -> None:
    for r in range(1, RUNS + 1):
        def one(r: int = r) -> None:
            result = abuse.run(r, database, folder, LOGS)
            log(f"  [{r}] {result.describe()}")
            FIGURES["flood_log_growth_kb"].values.append(result.log_kb)
            FIGURES["flood_legit_p99_ms"].values.append(result.flood_p99_ms)
            FIGURES["flood_legit_p99_ms"].limits.append(result.quiet_p99_ms)
            FLOOD_CPU_MS.append(result.cpu_ms_per_refusal)
            for note in result.notes:
                FAILURES.append(f"abuse run {r}: {note}")
                log(f"    !! {note}")
        guarded(f"abuse run {r}", one)


# -- the run ---------------------------------------------------------------------------------------
SECTIONS = ("startup", "webhook", "balance", "spend", "ledger", "memory", "abuse")
LOGS = Path(tempfile.gettempdir()) / "bench-last-run"  # the serve logs of the last run


def run_all(sections: set[str]) -> None:
    started = time.monotonic()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    util.log(f"bench: {RUNS} runs x {DURATION_S:.0f}s per figure; {os.cpu_count()} CPUs;"
             f" load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, \
            util.throwaway_database("limit") as limit_db, \
            util.throwaway_database("service") as service_db:
        folder = Path(tmp)
        log("== preparing: two throwaway databases at head (billing migrate)")
        util.migrate(limit_db)
        util.migrate(service_db)
        util.seed_accounts(limit_db, USERS, 10**12)
        pg_limit.seed_payments(limit_db)
        sample_event = wrk.checkout_completed_event(
            event_id="evt_" + "0" * 24, session_id="cs_test_" + "a" * 58,
            payment_id="pay_" + "b" * 24, amount=999, currency="USD", user_id="u0001",
            created=int(time.time()), pad_to=2048)
        http_requests = folder / "http-limit.txt"
        wrk.write_requests(http_requests, [
            sample_event.replace(b"evt_" + b"0" * 24, f"evt_{i:024d}".encode())
            for i in range(1000)])

        if "startup" in sections:
            log("== start-up: launch to gRPC health SERVING + /healthz + /readyz"
                " (migrated database)")
            guarded("start-up", lambda: measure_startup(service_db))

        svc = service.Service(service_db, log_path=LOGS / "serve-throughput.log")
        http: HttpLimit | None = None
        try:
            log("== billing serve for the throughput runs")

            def start_service() -> None:
                svc.start()
                prepare_service_data(svc)

            throughput = sections & {"webhook", "balance", "spend"}
            if throughput:
                guarded("billing serve", start_service)
            serving = svc.proc is not None and svc.proc.poll() is None
            if "webhook" in sections:
                http = HttpLimit(http_requests)

            log(f"== webhook credits/s vs HTTP and Postgres limits ({len(sample_event)}-byte"
                " signed events)")
            for r in range(1, RUNS + 1 if http is not None else 1):
                assert http is not None
                guarded(f"HTTP limit run {r}", partial(http.run, r))
                guarded(f"Postgres limit run {r}",
                        partial(pg_limit_run, r, limit_db, sample_event.decode()))
                if serving:
                    guarded(f"webhooks run {r}", partial(webhook_run, r, svc, folder))
            webhook = FIGURES["webhook_credits_per_s"]
            if HTTP_LIMIT and PG_LIMIT:  # the limit: min of the medians; per run, for show
                webhook.fixed_limit = min(util.median(HTTP_LIMIT), util.median(PG_LIMIT))
                webhook.limits = [min(h, p) for h, p in zip(HTTP_LIMIT, PG_LIMIT, strict=False)]

            log("== GetBalance/s vs the gRPC read limit")
            for r in range(1, RUNS + 1 if "balance" in sections else 1):
                def read(r: int = r) -> None:
                    limit = grpc_limit_run(r, limit_db, "balance")
                    FIGURES["get_balance_per_s"].limits.append(limit.per_s)
                guarded(f"gRPC read limit run {r}", read)
                if serving:
                    def balance(r: int = r) -> None:
                        result = grpc_service_run(r, svc, "balance")
                        FIGURES["get_balance_per_s"].values.append(result.per_s)
                    guarded(f"GetBalance run {r}", balance)

            log("== SpendCoins/s and p99 vs the gRPC write limit")
            for r in range(1, RUNS + 1 if "spend" in sections else 1):
                def write(r: int = r) -> None:
                    limit = grpc_limit_run(r, limit_db, "spend")
                    FIGURES["spend_per_s"].limits.append(limit.per_s)
                    FIGURES["spend_p99_ms"].limits.append(limit.p99_ms)
                guarded(f"gRPC write limit run {r}", write)
                if serving:
                    def spend(r: int = r) -> None:
                        result = grpc_service_run(r, svc, "spend")
                        FIGURES["spend_per_s"].values.append(result.per_s)
                        FIGURES["spend_p99_ms"].values.append(result.p99_ms)
                    guarded(f"SpendCoins run {r}", spend)
            if serving:
                log(f"  RSS of billing serve after the throughput runs: {svc.rss_mb():.1f} MB")
        finally:
            if http is not None:
                http.close()
            code = svc.stop()
            if code not in (0, None):
                log(f"  !! billing serve exited {code} on SIGTERM:\n{svc.tail()}")
            svc.close()

        if "ledger" in sections:
            log("== ledger growth: bench/ledger_pages.py (ListTransactions at 10k and 1M rows)")
            guarded("ledger", measure_ledger)

        if "memory" in sections:
            log(f"== memory: RSS of a fresh billing serve after {MEMORY_REQUESTS // 2:,} and"
                f" {MEMORY_REQUESTS:,} mixed requests")
            left = BUDGET_S - (time.monotonic() - started) - 20
            if "abuse" in sections:  # it runs after this one: leave it its time
                left -= RUNS * abuse.RUN_S
            max_s = MEMORY_MAX_S or max(60.0, left / 2)
            guarded("memory", partial(measure_memory, service_db, folder, max_s))

        if "abuse" in sections:
            log(f"== the public port under abuse: a forged flood (wrk -c{abuse.CONNECTIONS},"
                f" {abuse.FLOOD_S:.0f}s) beside a legitimate webhook stream, INFO logs")
            guarded("abuse", partial(measure_abuse, service_db, folder))
    report(time.monotonic() - started)


def report(elapsed_s: float) -> None:
    log("")
    log(f"== results: median of {RUNS} runs, each beside its same-run limit"
        f" ({elapsed_s / 60:.1f} min)")
    header = f"{'figure':<25} {'runs':<24} {'median':>9} {'limit runs':<24} {'limit':>9}" \
             f" {'ratio':>7} {'bar':>10}  verdict"
    log(header)
    log("-" * len(header))
    side = [("http_limit_req_per_s", HTTP_LIMIT), ("postgres_limit_tx_per_s", PG_LIMIT),
            ("flood_cpu_ms_per_refused", FLOOD_CPU_MS)]
    for name, values in side:
        log(f"{name:<25} {util.join(values):<24} {fmt(util.median(values)):>9}")
    for figure in FIGURES.values():
        limit_runs = util.join(figure.limits) if figure.limits else (
            "(bar)" if figure.fixed_limit is not None else "-")
        comparison = ">=" if figure.higher_is_better else "<="
        log(f"{figure.name:<25} {util.join(figure.values):<24} {fmt(figure.value):>9}"
            f" {limit_runs:<24} {fmt(figure.limit):>9} {fmt(figure.ratio):>7}"
            f" {comparison + ' ' + fmt(figure.bar):>10}  {'ok' if figure.ok else 'SHORT'}"
            + (f"  ({figure.note})" if figure.note else ""))
    if BACKGROUND:
        log(f"other work on the machine during the runs: median {util.median(BACKGROUND):.0f}%,"
            f" max {max(BACKGROUND):.0f}% of {(os.cpu_count() or 1) * 100}% CPU"
            " (it slows limits and service alike; the ratios are what compare)")
    if SATURATED:
        log("processes at ~100 % of a core (>= 85 %) during the runs:")
        for label, hot in SATURATED.items():
            log(f"  {label}: {', '.join(sorted(set(hot)))}")
    for failure in FAILURES:
        log(f"FAILED: {failure.splitlines()[0]}")
    log(f"(logs of the billing serve processes: {LOGS}/)")
    for figure in FIGURES.values():
        log(figure.line())


def main(argv: list[str]) -> int:
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    unknown = set(argv) - set(SECTIONS)
    if unknown:
        print(__doc__, file=sys.stderr)
        return 2
    run_all(set(argv) or set(SECTIONS))
    return 0 if not FAILURES and all(f.ok for f in FIGURES.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
