"""`python -m bench` (`make bench`): the benchmarks of issues 7, 10, 11, 12 and 13, each figure
beside the same-run figure of its local limit (a bare server, pgbench, the peer, the same scenario
with a fast Stripe); ends with one `bench: NAME value=V limit=L ratio=R bar=B ok|short` line per
figure. Exit status 1 if a figure misses its bar or could not be measured.

    python -m bench             every section, in this order (about 18 minutes on 2 cores)
    python -m bench SECTION...  only some; each runs alone, and only its figures are reported
                                (times of a run alone, set-up included, on the shared machine):
      startup   launch to gRPC health SERVING, /healthz and /readyz (3 runs)           ~5 s
      webhook   credits/s vs the HTTP and Postgres limits and the peer; CPU and round
                trips per credit (bench/throughput.py)                                 ~2 min
      balance   GetBalance/s vs the gRPC read limit; CPU and round trips per call      ~1.2 min
      spend     SpendCoins/s and p99 vs the gRPC write limit; the same per call        ~1.2 min
      stripe    a slow Stripe: issue 10's five scenarios (bench/stripe.py)             ~8 min
      ledger    ListTransactions at 10k and 1M rows (bench/ledger_pages.py)            ~20 s
      streams   live updates: a watch across replicas; 5,000 idle watches (RSS vs a bare
                grpc.aio server, wake-ups, GetBalance meanwhile); the feed's lag and
                credits/s under the webhook load (bench/streams.py)                    ~2.5 min
      memory    RSS after BENCH_MEMORY_REQUESTS mixed requests, within what is left of
                BENCH_BUDGET_S                                                         ~3.5 min
      abuse     a forged-webhook flood beside a legitimate stream: log growth, the
                legitimate p99, CPU per refusal (bench/abuse.py)                       ~1.5 min
    python -m bench profile     py-spy profiles of `billing serve` under the spend, webhook and
                                GetBalance loads (needs py-spy in the virtualenv)

After the webhook, balance, spend and stripe loads: no double credit, no negative balance,
`billing audit` clean. The knobs (BENCH_DURATION_S, BENCH_RUNS, BENCH_WORKERS, ...) and their
defaults are in bench/config.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import abuse, grpc_load, results, service, streams, stripe, throughput, util, wrk
from bench.config import BUDGET_S, DURATION_S, MEMORY_MAX_S, MEMORY_REQUESTS, RUNS
from bench.results import FIGURES, guarded, note_cpu
from bench.util import log

MEMORY_WEBHOOK_EVERY = 10
SECTIONS = ("startup", "webhook", "balance", "spend", "stripe", "ledger", "streams", "memory",
            "abuse")
LOGS = Path(tempfile.gettempdir()) / "bench-last-run"  # the serve logs of the last run


# -- start-up ------------------------------------------------------------------------------------
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


# -- memory --------------------------------------------------------------------------------------
def measure_memory(database: str, folder: Path, max_s: float) -> None:
    """A fresh `billing serve`; RSS after MEMORY_REQUESTS/2 and MEMORY_REQUESTS mixed requests
    (GetBalance 40 %, SpendCoins 50 %, signed webhooks for distinct sessions 10 %), each half
    stopping early after `max_s` seconds."""
    log(f"  at most {max_s:.0f}s per half")
    svc = service.Service(database, log_path=LOGS / "serve-memory.log")
    try:
        svc.start()
        log(f"  fresh billing serve: RSS {svc.rss_mb():.1f} MB after start")
        service.prepare(svc, sessions=20)
        log(f"  RSS {svc.rss_mb():.1f} MB after preparing")
        done, samples = 0, []
        for half in (1, 2):
            share = MEMORY_REQUESTS // 2
            tag = f"mem{half}{int(time.time())}"
            requests_file = folder / f"memory-{half}.txt"
            wrk.write_requests(requests_file,
                               svc.webhook_bodies(share // MEMORY_WEBHOOK_EVERY + 100, tag))
            result = grpc_load.run_load(
                svc.target, "mixed", count=share, token=svc.token, key_prefix=tag,
                cpu_groups={"billing serve": svc.pids()}, database=database,
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


# -- the run ---------------------------------------------------------------------------------------
def run_all(sections: set[str]) -> None:
    started = time.monotonic()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    log(f"bench: sections {' '.join(s for s in SECTIONS if s in sections)}; {RUNS} runs x"
        f" {DURATION_S:.0f}s per throughput figure; {os.cpu_count()} CPUs; load average"
        f" {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)

        def timed(section: str, action: Callable[[], None]) -> None:
            began = time.monotonic()
            guarded(section, action)
            log(f"   ({section}: {time.monotonic() - began:.0f}s; {_elapsed(started)} so far)")

        if "startup" in sections:
            log("== start-up: launch to gRPC health SERVING + /healthz + /readyz"
                " (migrated database)")
            with util.throwaway_database("startup") as database:
                util.migrate(database)
                timed("startup", lambda: measure_startup(database))
        if sections & set(results.THROUGHPUT):
            timed("throughput", lambda: throughput.run(sections, folder, LOGS))
        if "stripe" in sections:
            timed("stripe", lambda: stripe.run(folder, LOGS))
        if "ledger" in sections:
            log("== ledger growth: bench/ledger_pages.py (ListTransactions at 10k and 1M rows)")
            timed("ledger", measure_ledger)
        if "streams" in sections:
            timed("streams", lambda: streams.run(folder, LOGS))
        if "memory" in sections:
            log(f"== memory: RSS of a fresh billing serve after {MEMORY_REQUESTS // 2:,} and"
                f" {MEMORY_REQUESTS:,} mixed requests")
            left = BUDGET_S - (time.monotonic() - started) - 30
            if "abuse" in sections:  # it runs after this one: leave it its time
                left -= RUNS * abuse.RUN_S
            max_s = MEMORY_MAX_S or max(60.0, left / 2)
            with util.throwaway_database("memory") as database:
                util.migrate(database)
                timed("memory", lambda: measure_memory(database, folder, max_s))
        if "abuse" in sections:
            log(f"== the public port under abuse: a forged flood (wrk -c{abuse.CONNECTIONS},"
                f" {abuse.FLOOD_S:.0f}s) beside a legitimate webhook stream, INFO logs")
            timed("abuse", lambda: abuse.measure(LOGS, folder))
    report(sections, time.monotonic() - started)


def _elapsed(started: float) -> str:
    return f"{(time.monotonic() - started) / 60:.1f} min"


def report(sections: set[str], elapsed_s: float) -> None:
    figures = results.selected(sections)
    log("")
    log(f"== results: each figure the median of its runs, beside its same-run limit"
        f" ({elapsed_s / 60:.1f} min)")
    if throughput.HTTP_LIMIT or throughput.PG_LIMIT:
        for name, values in (("http_limit_req_per_s", throughput.HTTP_LIMIT),
                             ("postgres_limit_tx_per_s", throughput.PG_LIMIT)):
            log(f"{name:<33} {util.join(values):<24} {util.fmt(util.median(values)):>9}")
    results.table(figures)
    results.side_notes()
    log(f"(logs of the billing serve processes: {LOGS}/)")
    results.summary(figures)


def main(argv: list[str]) -> int:
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    unknown = set(argv) - set(SECTIONS)
    if unknown:
        print(__doc__, file=sys.stderr)
        return 2
    sections = set(argv) or set(SECTIONS)
    run_all(sections)
    figures = results.selected(sections)
    return 0 if not results.FAILURES and all(f.ok for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
