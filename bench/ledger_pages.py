"""How ListTransactions scales with the ledger: one user's history at 10,000 and 1,000,000 rows.

Keyset pagination (WHERE user_id = ? AND seq < ? ORDER BY seq DESC, on an index) should cost the
same at any depth and any size: the 1M figures must stay within 1.5x of the 10k figures, measured
in the same run on the same machine. Each size gets a throwaway Postgres database that is created
and dropped here (base URL: BILLING_BENCH_DATABASE_URL, else BILLING_TEST_DATABASE_URL, else the
local server); pages are read through the real ListTransactions use case and SqlStore.

    python -m bench.ledger_pages        (or: python bench/ledger_pages.py)
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from billing.adapters.memory import RecordingNotifier
from billing.adapters.sql import SqlStore, migrate
from billing.adapters.system_clock import SystemClock
from billing.domain.pagination import encode_page_token
from billing.use_cases._unit import UnitRunner
from billing.use_cases.list_transactions import ListTransactions, TransactionsPage

DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
SIZES = (10_000, 1_000_000)
PAGE_SIZE = 50
DEEP_ROWS = 100  # the deep page starts this many rows after the user's very first row
WARMUP, SAMPLES = 10, 51
BAR = 1.5
USER_ID = "bench-user"


def base_url() -> URL:
    return make_url(os.environ.get("BILLING_BENCH_DATABASE_URL")
                    or os.environ.get("BILLING_TEST_DATABASE_URL") or DEFAULT_URL)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A new database at head, dropped afterwards whatever happens."""
    base = base_url()
    name = f"billing_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = base.set(database=name).render_as_string(hide_password=False)
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
            ), {"name": name})
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def fill_ledger(url: str, rows: int) -> None:
    """Give the user `rows` GRANT rows of 1 coin, in one set-based INSERT."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO accounts (user_id, balance) VALUES (:user, :rows)"),
                {"user": USER_ID, "rows": rows},
            )
            connection.execute(text(
                "INSERT INTO ledger (key, user_id, type, coins, balance_after, shortfall,"
                " description, session_id, payment_id, caller, request_id, created_at)"
                " SELECT 'GrantCoins:' || :user || ':' || 'bench-' || n, :user, 'GRANT', 1, n, 0,"
                " 'bench grant', '', '', 'bench', 'bench-' || n,"
                " now() - make_interval(secs => :rows - n)"
                " FROM generate_series(1, :rows) AS n"
            ), {"user": USER_ID, "rows": rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE ledger"))
    finally:
        engine.dispose()


class Ledger:
    """One database holding one user's ledger of `rows` rows, read through ListTransactions."""

    def __init__(self, url: str, rows: int) -> None:
        self.rows = rows
        self.store = SqlStore(url, pool_size=2)
        self.list_transactions = ListTransactions(
            UnitRunner(self.store, SystemClock(), RecordingNotifier()))
        with self.store.engine.connect() as connection:
            oldest = connection.execute(
                text("SELECT min(seq) FROM ledger WHERE user_id = :user"), {"user": USER_ID}
            ).scalar_one()
            plan = connection.execute(text(
                "EXPLAIN SELECT * FROM ledger WHERE user_id = :user AND seq < :before"
                " ORDER BY seq DESC LIMIT :limit"
            ), {"user": USER_ID, "before": oldest + DEEP_ROWS, "limit": PAGE_SIZE + 1}).all()
        self.plan = next((line for (line,) in plan if "Scan" in line), plan[0][0]).strip(" ->")
        self.deep_token = encode_page_token(USER_ID, oldest + DEEP_ROWS)
        first, deep = self.first_page(), self.deep_page()
        assert len(first.entries) == PAGE_SIZE and first.entries[0].balance_after == rows
        assert len(deep.entries) == PAGE_SIZE and deep.entries[0].seq == oldest + DEEP_ROWS - 1

    def first_page(self) -> TransactionsPage:
        return self.list_transactions(USER_ID, PAGE_SIZE)

    def deep_page(self) -> TransactionsPage:
        return self.list_transactions(USER_ID, PAGE_SIZE, self.deep_token)


def timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(ledgers: list[Ledger]) -> dict[tuple[int, str], float]:
    """Median latency per (rows, page). Calls alternate between the ledgers, so a burst of load
    on this machine hits every figure alike instead of skewing one of them."""
    calls = {(ledger.rows, page): getattr(ledger, f"{page}_page")
             for ledger in ledgers for page in ("first", "deep")}
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    timings: dict[tuple[int, str], list[float]] = {key: [] for key in calls}
    for _ in range(SAMPLES):
        for key, call in calls.items():
            timings[key].append(timed_ms(call))
    return {key: statistics.median(values) for key, values in timings.items()}


def verdict(name: str, value: float, baseline: float) -> tuple[str, bool]:
    """The bench line: the 1M figure against the same-run 10k figure (its limit)."""
    ratio = value / baseline
    ok = ratio <= BAR
    line = (f"bench: {name} value={value:.3f} limit={baseline:.3f} ratio={ratio:.2f}"
            f" bar={BAR} {'ok' if ok else 'short'}")
    return line, ok


def main() -> int:
    small_rows, large_rows = SIZES
    with throwaway_database() as small_url, throwaway_database() as large_url:
        for url, rows in ((small_url, small_rows), (large_url, large_rows)):
            started = time.perf_counter()
            fill_ledger(url, rows)
            print(f"filled {rows:>9,} rows in {time.perf_counter() - started:.1f}s")
        ledgers = [Ledger(small_url, small_rows), Ledger(large_url, large_rows)]
        try:
            medians = measure(ledgers)
        finally:
            for ledger in ledgers:
                ledger.store.dispose()

    print(f"ListTransactions through SqlStore, page size {PAGE_SIZE}; median of {SAMPLES} calls"
          f" after {WARMUP} warm-up calls; deep page = {DEEP_ROWS} rows from the oldest;"
          f" limit = the {small_rows:,}-row figure, ok when ratio <= bar")
    for ledger in ledgers:
        print(f"{ledger.rows:>9,} rows: first page {medians[ledger.rows, 'first']:.3f} ms,"
              f" deep page {medians[ledger.rows, 'deep']:.3f} ms  [{ledger.plan}]")
    results = [
        verdict("ledger_first_page_ms_1m", medians[large_rows, "first"],
                medians[small_rows, "first"]),
        verdict("ledger_deep_page_ms_1m", medians[large_rows, "deep"],
                medians[small_rows, "deep"]),
    ]
    for line, _ in results:
        print(line)
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
