"""Real processes for the fault suites: `billing serve` and `billing stripe-fake serve` as
subprocesses, the `billing` operations commands, and a throwaway Postgres cluster.

Everything listens on 127.0.0.1 on free ports. Nothing waits by sleeping: every wait polls a
condition with a deadline (`wait_for`), and every process is stopped by the fixture that started
it, even when the test fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from billing.v1 import billing_pb2_grpc
from tests.e2e.harness import ADMIN_TOKEN, API_TOKENS, bearer, free_port, http_get, wait_for

VENV_BIN = Path(sys.executable).parent
BILLING = str(VENV_BIN / "billing")
WEBHOOK_SECRET = "whsec_dev_only_not_secret"  # the fake mode's default (DESIGN.md)
FAKE_API_KEY = "sk_test_fake"
START_TIMEOUT_S = 60.0  # a loaded 2-core machine: imports alone can take seconds
STOP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 180.0
ADMIN = bearer(ADMIN_TOKEN)


# -- environment and the one-shot commands --------------------------------------------------
def base_env(workdir: Path, database_url: str, **overrides: str) -> dict[str, str]:
    """Variables for one service: free ports, state under `workdir`, warnings only, the
    reconciliation loop out of the way, auth on with the e2e harness's tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_"))}
    env.update({
        "BILLING_DATABASE_URL": database_url,
        "BILLING_GRPC_PORT": str(free_port()),
        "BILLING_HTTP_PORT": str(free_port()),
        "BILLING_ADMIN_PORT": str(free_port()),
        "BILLING_FAKE_STRIPE_PORT": str(free_port()),
        "BILLING_FAKE_STRIPE_STATE": str(workdir / "stripe-fake.db"),
        "BILLING_API_TOKENS": API_TOKENS,
        "BILLING_LOG_LEVEL": "WARNING",
        "BILLING_RECONCILE_INTERVAL_S": "86400",
        "BILLING_SHUTDOWN_GRACE_S": "5",
    })
    env.update(overrides)
    return env


def run_billing(env: dict[str, str], *args: str, cwd: Path,
                timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """`billing ARGS…` as an operator runs it; never raises on a non-zero exit."""
    return subprocess.run([BILLING, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def migrate(env: dict[str, str], cwd: Path) -> None:
    result = run_billing(env, "migrate", cwd=cwd)
    assert result.returncode == 0, f"billing migrate failed:\n{result.stderr}"


def audit(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_billing(env, "audit", cwd=cwd)


# -- probes ------------------------------------------------------------------------------------
def health_status(target: str, timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING / … as gRPC health says, or UNREACHABLE:<code>."""
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    except grpc.RpcError as error:
        return f"UNREACHABLE:{error.code().name}"


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        return http_get(url, timeout=timeout)[0]
    except OSError:  # refused, reset, timed out: not answering
        return 0


# -- `billing serve` -----------------------------------------------------------------------------
@dataclass
class ServeProcess:
    """One `billing serve` subprocess; `start()` may be called again after `kill()`/`stop()`
    (same ports, same database, same fake Stripe state), which is how a restart is done."""

    env: dict[str, str]
    workdir: Path
    name: str = "serve"
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.env['BILLING_GRPC_PORT']}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BILLING_HTTP_PORT']}/api/payment/webhook"

    @property
    def healthz_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BILLING_HTTP_PORT']}/healthz"

    @property
    def readyz_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BILLING_ADMIN_PORT']}/readyz"

    @property
    def fake_stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BILLING_FAKE_STRIPE_PORT']}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        assert not self.running, f"{self.name} is already running"
        # The log file, not a pipe: nobody reads a pipe while the storm runs, and a full pipe
        # would block the server. Appended to, so a restart keeps the earlier run's lines.
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts + 1} ----\n".encode())
            log.flush()
            self.process = subprocess.Popen([BILLING, "serve"], cwd=self.workdir, env=self.env,
                                            stdout=log, stderr=log)
        self.starts += 1
        self.wait_ready(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """gRPC health SERVING, /healthz 200 and /readyz 200 (or fail, showing the log)."""

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name} exited with {self.returncode()}:\n"
                                     f"{self.log_tail()}")
            return (health_status(self.grpc_target) == "SERVING"
                    and http_status(self.healthz_url) == 200
                    and http_status(self.readyz_url) == 200)

        try:
            wait_for(ready, timeout, f"{self.name} to be ready")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.log_tail()}") from None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """kill -9: no shutdown, no drain, no pool closed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM (a clean stop), SIGKILL if it does not exit in time; its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.returncode()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text_lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return f"-- last lines of {self.log_path} --\n" + "\n".join(text_lines[-lines:])

    @contextmanager
    def stub(self) -> Iterator[Any]:
        with grpc.insecure_channel(self.grpc_target) as channel:
            yield billing_pb2_grpc.BillingServiceStub(channel)


# -- `billing stripe-fake serve` -----------------------------------------------------------------
@dataclass
class FakeStripeProcess:
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['BILLING_FAKE_STRIPE_PORT']}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "stripe-fake.log", "ab") as log:
            self.process = subprocess.Popen([BILLING, "stripe-fake", "serve"], cwd=self.workdir,
                                            env=self.env, stdout=log, stderr=log)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"billing stripe-fake serve exited with "
                                     f"{self.process.returncode}")
            return http_status(f"{self.url}/_fake/sessions/cs_probe") == 404

        wait_for(answers, timeout, "the fake Stripe to answer")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


# -- a gRPC health watcher ------------------------------------------------------------------------
class HealthWatcher:
    """Polls a service's gRPC health (and /readyz) on its own thread, recording every state it
    sees, until stopped or its deadline passes."""

    def __init__(self, serve: ServeProcess, *, interval_s: float = 0.1,
                 deadline_s: float = 180.0) -> None:
        self._serve = serve
        self._interval_s = interval_s
        self._deadline = time.monotonic() + deadline_s
        self._stop = threading.Event()
        self.seen: list[tuple[float, str, int]] = []  # (monotonic, health, readyz status)
        self._thread = threading.Thread(target=self._run, name="health-watcher", daemon=True)

    def __enter__(self) -> HealthWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            health = health_status(self._serve.grpc_target, timeout=1.0)
            ready = http_status(self._serve.readyz_url, timeout=2.0)
            self.seen.append((time.monotonic(), health, ready))
            self._stop.wait(self._interval_s)  # the polling period, not a synchronisation

    def saw(self, health: str) -> bool:
        return any(state == health for _, state, _ in list(self.seen))

    def saw_after(self, health: str, since: float) -> bool:
        return any(state == health and at >= since for at, state, _ in list(self.seen))

    def readyz_codes(self) -> set[int]:
        return {ready for _, _, ready in list(self.seen)}

    def transitions(self) -> list[str]:
        states: list[str] = []
        for _, state, _ in list(self.seen):
            if not states or states[-1] != state:
                states.append(state)
        return states


# -- a throwaway Postgres cluster -----------------------------------------------------------------
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A Postgres cluster of its own (initdb in a temporary directory, its own port, loopback
    only), so restarting it costs no other test its connections. initdb and pg_ctl refuse to run
    as root: as root they run as the `postgres` user (runuser)."""

    def __init__(self) -> None:
        bindir = _postgres_bin()
        if bindir is None:
            message = "no Postgres server binaries (initdb/pg_ctl) for a throwaway cluster"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="billing-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.restarts = 0

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        command = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                check=False, cwd=self.root)
        assert result.returncode == 0, (
            f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
            f"{result.stderr}\n{self.log_tail()}")
        return result.stdout

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        # fsync off: only an OS crash could lose data that way, and this cluster dies with the
        # test anyway; commits still wait for their WAL write, so `stop -m immediate` (a crash
        # of Postgres itself) loses no committed transaction.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        """Stop it however it is, and remove its files (the finalizer: also on failure)."""
        try:
            if self.is_running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
