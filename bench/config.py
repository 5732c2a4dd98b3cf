"""The knobs of `make bench`, read once from the environment. The defaults keep the whole run
within 25 minutes on this 2-core machine (the memory run, last, takes what is left of
BENCH_BUDGET_S); shorten them while developing, e.g. BENCH_DURATION_S=3 BENCH_RUNS=1.
"""

from __future__ import annotations

import os


def _number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# -- every section -------------------------------------------------------------------------------
DURATION_S = _number("BENCH_DURATION_S", 6)  # measured seconds per throughput run
RUNS = int(_number("BENCH_RUNS", 3))  # runs per figure (stripe: pairs of runs)
WARMUP_S = 1.0
BUDGET_S = _number("BENCH_BUDGET_S", 1440)  # the whole run (24 min: a minute to spare)

# -- the hot paths (webhook, balance, spend) ---------------------------------------------------
# BILLING_WORKERS of the service whose throughput is reported: the README's recommendation for
# a 2-core machine. One run each at N=1 and N=2 (whichever this is not) is added for comparison,
# and round trips are always counted on a single worker.
WORKERS = int(_number("BENCH_WORKERS", 2))
COMPARE_WORKERS = (1, 2)
SERVICE_SESSIONS = 300  # created through CreateCheckoutSession; the webhook runs copy them
WEBHOOK_SESSIONS = int(_number("BENCH_WEBHOOK_SESSIONS", 15000))  # per run: > 2,400/s x 6 s
HTTP_CONNECTIONS = 32  # wrk's connections (the service's and the peer's runs alike)
PG_CLIENTS = 32  # pgbench's clients

# -- a slow Stripe (stripe) ------------------------------------------------------------------------
STRIPE_LATENCY_MS = int(_number("BENCH_STRIPE_LATENCY_MS", 400))
STRIPE_LOAD_S = _number("BENCH_STRIPE_LOAD_S", 10)  # each sustained-load run
STRIPE_PAIRS = int(_number("BENCH_STRIPE_PAIRS", RUNS))  # (0 ms, 400 ms) pairs per scenario
STRIPE_BURSTS = int(_number("BENCH_STRIPE_BURSTS", 10))
STRIPE_SHED_BOUND = int(_number("BENCH_STRIPE_SHED_BOUND", 64))  # the bound for the shed run

# -- memory ----------------------------------------------------------------------------------------
MEMORY_REQUESTS = int(_number("BENCH_MEMORY_REQUESTS", 100000))
MEMORY_MAX_S = _number("BENCH_MEMORY_MAX_S", 0)  # a fixed cap per half instead of the budget

# -- live updates (streams) ------------------------------------------------------------------------
STREAMS_CROSS_WATCHES = int(_number("BENCH_STREAMS_CROSS_WATCHES", 500))  # one after another
STREAMS_IDLE = int(_number("BENCH_STREAMS_IDLE", 5000))  # idle watches on one process
STREAMS_PAY_RATE = _number("BENCH_STREAMS_PAY_RATE", 200)  # webhooks/s paying their sessions
STREAMS_PAIRS = int(_number("BENCH_STREAMS_PAIRS", RUNS))  # (without, with a consumer) pairs
