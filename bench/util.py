"""Shared plumbing for the benchmarks: ports, throwaway databases, /proc CPU and memory readings,
subprocesses that are always reaped, and medians.

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HOST = "127.0.0.1"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    print(message, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(round(fraction * len(sorted_values) + 0.5))))
    return sorted_values[rank - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout_s} s")


# -- Postgres ------------------------------------------------------------------------------------
def pg_dsn(database: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={database}"


def sqlalchemy_url(database: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _admin(sql: str, params: tuple[object, ...] = ()) -> None:
    connection = psycopg2.connect(pg_dsn("postgres"), connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        connection.close()


@contextlib.contextmanager
def throwaway_database(prefix: str, owner: str | None = None) -> Iterator[str]:
    """A new empty database (owned by `owner`, else by the admin user), dropped afterwards
    whatever happens."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                   (name,))
        _admin(f'DROP DATABASE IF EXISTS "{name}"')


def migrate(database: str) -> None:
    """`billing migrate` on the database, as an operator runs it."""
    env = {**os.environ, "BILLING_DATABASE_URL": sqlalchemy_url(database)}
    done = subprocess.run([PYTHON, "-m", "billing", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"billing migrate failed ({done.returncode}):\n"
                           f"{done.stderr.decode(errors='replace')[-3000:]}")


def execute(database: str, sql: str, params: object = ()) -> Any:
    """One statement in its own transaction; the first column of its first row when it returns
    rows (None otherwise)."""
    connection = psycopg2.connect(pg_dsn(database), connect_timeout=5)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None
    finally:
        connection.close()


def seed_accounts(database: str, users: int, balance: int) -> None:
    """`users` accounts (u0000…) with `balance` coins each, straight into the bare schema."""
    connection = psycopg2.connect(pg_dsn(database))
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO accounts (user_id, balance)"
                " SELECT 'u' || lpad(n::text, 4, '0'), %s FROM generate_series(0, %s - 1) AS n",
                (balance, users),
            )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()


def user_id(index: int) -> str:
    return f"u{index:04d}"


# -- /proc readings ------------------------------------------------------------------------------
def proc_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """(pid, the contents of /proc/PID/`name`) of every process, but those gone meanwhile."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/{name}", "rb") as file:
                    contents = file.read()
            except OSError:
                continue
            yield int(entry), contents


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (a supervisor and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for child, stat in _proc_files("stat"):
        parent = int(stat.rsplit(b")", 1)[1].split()[1])  # the field after the state
        children.setdefault(parent, []).append(child)
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def established_connections(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is `port` (a server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def postgres_backends(database: str) -> list[int]:
    """Pids of the Postgres backends connected to `database` (their cmdline names it)."""
    pids = []
    for pid, cmdline in _proc_files("cmdline"):
        words = cmdline.replace(b"\0", b" ").split()
        # "postgres: [15/main: ]USER DATABASE HOST(PORT) STATE" (Debian adds the cluster name)
        if words[:1] == [b"postgres:"] and database.encode() in words[2:4]:
            pids.append(pid)
    return pids


def postgres_other() -> list[int]:
    """Pids of Postgres' own processes (WAL writer, checkpointer, ...), not backends."""
    pids = []
    for pid, cmdline in _proc_files("cmdline"):
        text = cmdline.replace(b"\0", b" ").decode(errors="replace")
        if text.startswith("postgres: ") and any(
            word in text for word in ("walwriter", "checkpointer", "background writer",
                                      "autovacuum", "logical replication", "stats")):
            pids.append(pid)
    return pids


@dataclass
class CpuWindow:
    """CPU use of named processes between start() and stop(), in % of one core.

    With a database, its Postgres backends count too, including those that connect and exit
    inside the window (a sampler thread keeps their last reading: a pool that churns
    connections would otherwise hide their cost), and the window records how many sessions
    Postgres opened and how many transactions it ran for that database.
    """

    groups: dict[str, list[int]] = field(default_factory=dict)
    database: str | None = None  # also count this database's Postgres backends
    sample_every_s: float = 0.1
    result: dict[str, float] = field(default_factory=dict)
    top_single: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0
    cores: int = 1
    pg_sessions: int = 0
    pg_commits: int = 0
    pg_rollbacks: int = 0
    elapsed: float = 0.0
    # Named counters read at both ends of the window (None: not available): operations done,
    # database round trips reported by the service, ...; their differences land in `deltas`.
    counters: dict[str, Callable[[], float | None]] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)

    def _pids(self) -> dict[str, list[int]]:
        groups = {name: list(pids) for name, pids in self.groups.items()}
        if self.database is not None:
            groups["postgres backends"] = postgres_backends(self.database)
            groups["postgres aux"] = postgres_other()
        return groups

    def start(self) -> None:
        self._counters0 = {name: read() for name, read in self.counters.items()}
        self._resolved = self._pids()
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        for pids in self._resolved.values():
            for pid in pids:
                ticks = proc_ticks(pid)
                if ticks is not None:
                    self._first[pid] = self._last[pid] = ticks
        self._pg0 = _pg_counters(self.database) if self.database else (0, 0, 0)
        self._machine = machine_ticks()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        if self.database is not None:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        assert self.database is not None
        backends = self._resolved["postgres backends"]
        while not self._stop.wait(self.sample_every_s):
            for pid in postgres_backends(self.database):
                ticks = proc_ticks(pid)
                if ticks is None:
                    continue
                if pid not in self._first:  # connected inside the window: from zero
                    self._first[pid] = 0
                    backends.append(pid)
                self._last[pid] = ticks

    def stop(self) -> dict[str, float]:
        self.elapsed = elapsed = max(time.monotonic() - self._started, 1e-6)
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if self.database is not None:
            sessions, commits, rollbacks = _pg_counters(self.database)
            self.pg_sessions = sessions - self._pg0[0]
            self.pg_commits = commits - self._pg0[1]
            self.pg_rollbacks = rollbacks - self._pg0[2]
        self.result, self.top_single = {}, {}
        for name, pids in self._resolved.items():
            total, single = 0.0, 0.0
            for pid in pids:
                now = proc_ticks(pid)
                now = self._last.get(pid) if now is None else now
                if now is None or pid not in self._first:
                    continue
                share = (now - self._first[pid]) / CLK_TCK / elapsed * 100
                total += share
                single = max(single, share)
            self.result[name] = total
            self.top_single[name] = single
        busy0, total0 = self._machine
        busy1, total1 = machine_ticks()
        cores = os.cpu_count() or 1
        self.machine = (busy1 - busy0) / max(total1 - total0, 1) * 100 * cores
        self.cores = cores
        for name, read in self.counters.items():
            first, last = self._counters0[name], read()
            self.deltas[name] = float("nan") if first is None or last is None else last - first
        return self.result

    def over_middle(self, duration_s: float) -> None:
        """Measure the middle of a load of `duration_s` that has just started: from 0.5 s in
        (its connections made) to about 0.5 s before its end."""
        time.sleep(0.5)
        self.start()
        time.sleep(max(0.5, duration_s - 1.0))
        self.stop()

    def costs(self, group: str, ops_per_s: float) -> OpCosts:
        """What one operation cost over the window, at `ops_per_s`: CPU in `group` and in the
        Postgres backends, and (when the counters exist) the service's database round trips."""
        ops = ops_per_s * self.elapsed
        counted = self.deltas.get("operations", float("nan"))
        if not ops > 0:
            nan = float("nan")
            return OpCosts(0.0, nan, nan, nan, nan, nan)
        return OpCosts(
            ops=ops,
            cpu_ms=self.result.get(group, float("nan")) * 10 / ops_per_s,
            pg_ms=(self.result.get("postgres backends", 0.0) * 10 / ops_per_s
                   if self.database else float("nan")),
            # Per operation the service itself counted in the window, when it says (its
            # request counter): the whole run's average rate is a little off for the middle.
            round_trips=(self.deltas["round trips"] / (counted if counted > 0 else ops)
                         if "round trips" in self.deltas else None),
            commits=self.pg_commits / ops if self.database else float("nan"),
            rollbacks=self.pg_rollbacks / ops if self.database else float("nan"),
        )

    @property
    def pg_transactions(self) -> int:
        return self.pg_commits + self.pg_rollbacks

    @property
    def others(self) -> float:
        """CPU used by processes outside this benchmark (other work on the machine)."""
        return max(0.0, self.machine - sum(self.result.values()))

    def describe(self) -> str:
        parts = []
        for name, share in self.result.items():
            extra = ""
            if len(self._resolved.get(name, [])) > 1:
                extra = f" (busiest {self.top_single[name]:.0f}%)"
            parts.append(f"{name} {share:.0f}%{extra}")
        parts.append(f"other processes {self.others:.0f}%")
        parts.append(f"machine {self.machine:.0f}% of {self.cores * 100}%")
        text = "CPU: " + ", ".join(parts)
        if self.database is not None:
            # pg_stat_database lags up to a second or so behind: the rates are approximate.
            text += (f"; Postgres: ~{self.pg_sessions} new connections,"
                     f" ~{self.pg_transactions / self.elapsed:.0f} transactions/s")
        return text

    def saturated(self, threshold: float = 85.0) -> list[str]:
        """Single processes near 100 % of one core (a Python process's GIL ceiling)."""
        return [f"{name} {self.top_single[name]:.0f}%" for name in self.top_single
                if self.top_single[name] >= threshold]


@dataclass(frozen=True)
class OpCosts:
    """The cost of one operation over a measured window."""

    ops: float
    cpu_ms: float  # CPU milliseconds in the measured group of processes
    pg_ms: float  # ... in the Postgres backends of its database
    # Database round trips the service counted (nan: it exports none; None: not asked here).
    round_trips: float | None
    commits: float  # pg_stat_database.xact_commit (approximate: Postgres flushes it ~1/s)
    rollbacks: float

    def describe(self, group: str) -> str:
        trips = ("" if self.round_trips is None
                 else "round trips not counted by the service, " if math.isnan(self.round_trips)
                 else f"{self.round_trips:.2f} database round trips, ")
        postgres = ("" if group == "postgres backends" or math.isnan(self.pg_ms)
                    else f", {self.pg_ms:.2f} ms in Postgres backends")
        database = ("" if math.isnan(self.commits) else f"; {trips}{self.commits:.2f}"
                    f" commits + {self.rollbacks:.2f} rollbacks in pg_stat_database")
        return f"per operation: {self.cpu_ms:.2f} ms CPU in {group}{postgres}{database}"


# -- subprocesses --------------------------------------------------------------------------------
def start(args: Sequence[str], *, env: dict[str, str] | None = None,
          stdout: int | None = subprocess.DEVNULL, stderr: int | None = None,
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(args), cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def running(args: Sequence[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = start(args, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        stop(proc)


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def join(values: Iterable[float]) -> str:
    return " / ".join(fmt(v) for v in values)


def _pg_counters(database: str) -> tuple[int, int, int]:
    """(sessions opened, transactions committed, transactions rolled back) so far for `database`;
    every statement outside a transaction block counts as one transaction."""
    connection = psycopg2.connect(pg_dsn("postgres"), connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database"
                           " WHERE datname = %s", (database,))
            row = cursor.fetchone()
    finally:
        connection.close()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
