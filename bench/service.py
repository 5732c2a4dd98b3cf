"""`billing serve` as a subprocess on a throwaway, migrated Postgres database, on free loopback
ports, with logs at WARNING and reconciliation out of the way; in fake-Stripe mode, with the fake
either in-process (the default) or as its own `billing stripe-fake serve` process (`FakeStripe`,
whose latency a benchmark changes by restarting it). Plus the data the benchmarks need: users with
coins, PENDING sessions and the signed webhooks that pay them, and the service's own counters.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from bench import util, wrk

READY_TIMEOUT_S = 30.0
TOKEN_NAME = "bench"
USERS = 1000
GRANT_COINS = 1_000_000
CREDITS_SQL = "SELECT count(*) FROM ledger WHERE type = 'PURCHASE'"
ROUND_TRIPS = "billing_db_round_trips_total"  # every database round trip, counted at the driver
RPCS = "billing_rpc_total"  # gRPC calls the service answered
WEBHOOKS = "billing_webhook_events_total"  # webhook requests the service answered
SCRAPE_REUSE_S = 0.02


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any BILLING_/STRIPE_ variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_"))}
    env.update(variables)
    return env


class Service:
    """One `billing serve` (a supervisor and its BILLING_WORKERS workers, once it has them).
    `env` adds or overrides variables: BILLING_WORKERS, STRIPE_API_BASE, ..."""

    secret = wrk.SECRET

    def __init__(self, database: str, *, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.database = database
        self.token = secrets.token_urlsafe(24)
        self.grpc_port, self.http_port = util.free_port(), util.free_port()
        self.admin_port, self.fake_port = util.free_port(), util.free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-serve-")
        self.log_path = log_path or Path(self._dir.name) / "serve.log"
        env = clean_env(**{
            "BILLING_DATABASE_URL": util.sqlalchemy_url(database),
            "BILLING_HOST": util.HOST,
            "BILLING_GRPC_PORT": str(self.grpc_port),
            "BILLING_HTTP_PORT": str(self.http_port),
            "BILLING_ADMIN_PORT": str(self.admin_port),
            "BILLING_FAKE_STRIPE_PORT": str(self.fake_port),
            "BILLING_FAKE_STRIPE_STATE": str(Path(self._dir.name) / "stripe-fake.db"),
            "BILLING_API_TOKENS": f"{TOKEN_NAME}:{self.token}",
            "BILLING_LOG_LEVEL": "WARNING",
            "BILLING_RECONCILE_INTERVAL_S": "86400",
            "BILLING_RECONCILE_AFTER_S": "86400",
            "BILLING_SHUTDOWN_GRACE_S": "2",
            "STRIPE_WEBHOOK_SECRET": wrk.SECRET,
            **(env or {}),
        })
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._scrape: tuple[float, str] = (float("-inf"), "")

    @property
    def target(self) -> str:
        return f"{util.HOST}:{self.grpc_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://{util.HOST}:{self.http_port}{wrk.PATH}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def workers(self) -> int:
        """The BILLING_WORKERS it was started with."""
        return int(self.env.get("BILLING_WORKERS", "1"))

    def pids(self) -> list[int]:
        """Every process of this `billing serve`: the supervisor and all its descendants."""
        return util.process_tree(self.pid)

    def describe_processes(self) -> str:
        count = len(self.pids())
        return (f"BILLING_WORKERS={self.workers}: {count} process{'es' if count > 1 else ''}"
                " of billing serve")

    def start(self) -> float:
        """Launch `billing serve` (its working directory holds no .env) and return the seconds
        until gRPC health is SERVING, /healthz and /readyz answer 200."""
        assert self.proc is None
        self._log = self.log_path.open("ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [util.PYTHON, "-m", "billing", "serve"], cwd=self._dir.name, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(started)
        return time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.proc is not None
        pending = {"grpc", "healthz", "readyz"}
        # Without these, a refused first connect makes the channel back off for a second or so,
        # and the figure would measure grpcio's reconnect timer rather than the service.
        channel = grpc.insecure_channel(self.target, options=[
            ("grpc.initial_reconnect_backoff_ms", 10),
            ("grpc.min_reconnect_backoff_ms", 10),
            ("grpc.max_reconnect_backoff_ms", 50),
        ])
        health = health_pb2_grpc.HealthStub(channel)
        try:
            while pending:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"billing serve exited with {self.proc.returncode}:\n"
                                       f"{self.tail()}")
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise TimeoutError(f"billing serve not ready after {READY_TIMEOUT_S} s "
                                       f"(waiting for {sorted(pending)}):\n{self.tail()}")
                if "grpc" in pending:
                    with contextlib.suppress(grpc.RpcError):
                        answer = health.Check(health_pb2.HealthCheckRequest(service=""),
                                              timeout=0.25)
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            pending.discard("grpc")
                for name, port in (("healthz", self.http_port), ("readyz", self.admin_port)):
                    if name in pending and _http_ok(f"http://{util.HOST}:{port}/{name}"):
                        pending.discard(name)
                if pending:
                    time.sleep(0.01)
        finally:
            channel.close()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = util.stop(self.proc, timeout_s=20)
        self.proc = None
        if self._log is not None:
            self._log.close()
        return code

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def alive(self) -> None:
        """Raise, with the end of its log, if `billing serve` is gone."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"billing serve (pid {self.proc.pid}) exited with"
                               f" {self.proc.returncode} during the run; its log ends:\n"
                               f"{self.tail()}")

    def rss_mb(self) -> float:
        """Resident memory of every process of this billing serve (shared pages counted in each
        process: an upper bound)."""
        self.alive()
        return sum(util.rss_mb(pid) for pid in self.pids())

    # -- data --------------------------------------------------------------------------------
    def first_package(self) -> str:
        import grpc

        from billing.v1 import billing_pb2, billing_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            answer = stub.ListCoinPackages(
                billing_pb2.ListCoinPackagesRequest(), timeout=10,
                metadata=(("authorization", f"Bearer {self.token}"),))
        return answer.packages[0].id

    def pending_sessions(self, request_prefix: str = "") -> list[tuple[str, str, int, str, str]]:
        """(cs_ id, payment id, amount, currency, user) of every PENDING session with a cs_ id
        (and a request id starting with `request_prefix`), oldest first."""
        import psycopg2

        connection = psycopg2.connect(util.pg_dsn(self.database))
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(
                    "SELECT stripe_session_id, payment_id, amount_minor, currency, user_id"
                    " FROM payments WHERE status = 'PENDING' AND stripe_session_id IS NOT NULL"
                    " AND starts_with(request_id, %s) ORDER BY created_at, payment_id",
                    (request_prefix,))
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    def count(self, sql: str) -> int:
        return int(util.execute(self.database, sql) or 0)

    def credits(self) -> int:
        """Purchases credited so far (ledger rows)."""
        return self.count(CREDITS_SQL)

    def webhook_bodies(self, count: int, tag: str) -> list[bytes]:
        """`count` new PENDING sessions (see `clone_sessions`) and the signed paid event of each."""
        clone_sessions(self.database, count, tag)
        return webhook_bodies(self.pending_sessions(request_prefix=tag), tag)

    def metric(self, name: str) -> float | None:
        """The sum of every sample called `name` on the admin port's /metrics (over all labels,
        so over all workers too), or None when the service does not export it.

        Reads made within SCRAPE_REUSE_S of a scrape use it: counters read one after another
        (round trips, then operations) then come from the same instant."""
        from prometheus_client.parser import text_string_to_metric_families

        scraped_at, text = self._scrape
        if time.monotonic() - scraped_at > SCRAPE_REUSE_S:
            url = f"http://{util.HOST}:{self.admin_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            self._scrape = (time.monotonic(), text)
        values = [sample.value for family in text_string_to_metric_families(text)
                  for sample in family.samples if sample.name == name]
        return sum(values) if values else None

    def round_trips(self) -> float | None:
        """Database round trips the service has made, counted at its driver (None: not exported)."""
        return self.metric(ROUND_TRIPS)

    def quiesce(self, counter: str = "billing_rpc_total", quiet_s: float = 1.0,
                timeout_s: float = 60.0) -> float:
        """Wait until the service has finished its work: the Stripe calls-in-flight gauge at 0
        when it exists, and `counter` unchanged for `quiet_s`. Returns the seconds waited."""
        started = time.monotonic()
        last, since = self.metric(counter), time.monotonic()
        while time.monotonic() - started < timeout_s:
            time.sleep(0.1)
            now = self.metric(counter)
            if now != last:
                last, since = now, time.monotonic()
            in_flight = self.metric("billing_stripe_calls_in_flight")
            if time.monotonic() - since >= quiet_s and not in_flight:
                break
        return time.monotonic() - started


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.25) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def prepare(svc: Service, sessions: int) -> None:
    """What the loads need: GrantCoins to USERS users (u0000...), then `sessions` checkouts through
    CreateCheckoutSession (the sessions the webhook runs copy)."""
    from bench import grpc_load

    result = grpc_load.run_load(svc.target, "grant", count=USERS, token=svc.token,
                                key_prefix="grant", grant_coins=GRANT_COINS)
    if result.errors:
        raise RuntimeError(f"GrantCoins failed: {result.describe()}")
    util.log(f"  GrantCoins {GRANT_COINS:,} coins to each of {USERS} users: {result.describe()}")
    package = svc.first_package()
    result = grpc_load.run_load(svc.target, "checkout", count=sessions, token=svc.token,
                                key_prefix="checkout", package_id=package, measure_cpu=False)
    if result.errors:
        raise RuntimeError(f"CreateCheckoutSession failed: {result.describe()}")
    util.log(f"  CreateCheckoutSession ({package}) x{sessions}: {result.describe()}")


class FakeStripe:
    """`billing stripe-fake serve` as its own process (the service reaches it through
    STRIPE_API_BASE), so its latency changes by restarting it alone; its state file outlives
    restarts."""

    def __init__(self, folder: Path, *, log_path: Path | None = None) -> None:
        self.port = util.free_port()
        self.state = folder / "stripe-fake.db"
        self.log_path = log_path or folder / "stripe-fake.log"
        self.latency_ms = 0
        self.webhook_url = ""  # where it sends events: the service's, once that has its ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{util.HOST}:{self.port}"

    def start(self, latency_ms: int) -> None:
        assert self.proc is None
        self.latency_ms = latency_ms
        env = clean_env(
            BILLING_HOST=util.HOST,
            BILLING_FAKE_STRIPE_PORT=str(self.port),
            BILLING_FAKE_STRIPE_STATE=str(self.state),
            BILLING_FAKE_STRIPE_WEBHOOK_URL=self.webhook_url,
            BILLING_FAKE_STRIPE_LATENCY_MS=str(latency_ms),
            BILLING_LOG_LEVEL="WARNING",
            STRIPE_WEBHOOK_SECRET=wrk.SECRET,
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [util.PYTHON, "-m", "billing", "stripe-fake", "serve"], cwd=self.state.parent,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        util.wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            util.stop(self.proc)
            self.proc = None

    def restart(self, latency_ms: int) -> None:
        self.stop()
        self.start(latency_ms)

    def sessions_for(self, payment_id: str) -> int:
        """Checkout Sessions the fake holds for one of our payments (by metadata.payment_id)."""
        connection = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True, timeout=5)
        try:
            (count,) = connection.execute(
                "SELECT count(*) FROM objects WHERE kind = 'checkout.session'"
                " AND json_extract(body, '$.metadata.payment_id') = ?", (payment_id,)).fetchone()
            return int(count)
        finally:
            connection.close()


def webhook_bodies(sessions: list[tuple[str, str, int, str, str]], run: str) -> list[bytes]:
    """One paid `checkout.session.completed` event per session, ~2 KB each."""
    now = int(time.time())
    return [
        wrk.checkout_completed_event(
            event_id=f"evt_{run}{i:010d}{secrets.token_hex(4)}", session_id=session_id,
            payment_id=payment_id, amount=amount, currency=currency, user_id=user,
            created=now, pad_to=2048)
        for i, (session_id, payment_id, amount, currency, user) in enumerate(sessions)
    ]


def clone_sessions(database: str, count: int, tag: str, users: int = USERS) -> None:
    """`count` more PENDING sessions, each a copy of one the service created through
    CreateCheckoutSession (same package, amount, URLs, expiry) under new ids (payment id,
    request id, cs_ id) and spread over the users: what CreateCheckoutSession would have
    stored, without waiting for the fake Stripe to create each one. The webhook path reads only
    our own row, never Stripe, so the credits/s it measures is the same."""
    import psycopg2

    overrides = {
        "payment_id": "'pay_' || substr(md5(%(tag)s || n::text), 1, 24)",
        "request_id": "%(tag)s || '-' || n",
        "stripe_session_id": "'cs_test_' || %(tag)s || '_' || md5(n::text)",
        "user_id": "'u' || lpad((n %% %(users)s)::text, 4, '0')",
        "status": "'PENDING'",
        "payment_intent_id": "NULL",
        "coins_credited": "0",
        "coins_refunded": "0",
        "expires_at": "now() + interval '1 hour'",
        "created_at": "now()",
        "updated_at": "now()",
    }
    connection = psycopg2.connect(util.pg_dsn(database))
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT column_name FROM information_schema.columns"
                           " WHERE table_name = 'payments' ORDER BY ordinal_position")
            columns = [name for (name,) in cursor.fetchall()]
            values = [overrides.get(name, f"t.{name}") for name in columns]
            cursor.execute(
                f"INSERT INTO payments ({', '.join(columns)})"
                f" SELECT {', '.join(values)} FROM (SELECT * FROM payments"
                "  WHERE stripe_session_id IS NOT NULL ORDER BY created_at LIMIT 1) AS t"
                " CROSS JOIN generate_series(1, %(count)s) AS n",
                {"tag": tag, "users": users, "count": count})
            if cursor.rowcount != count:
                raise RuntimeError("no session created through the service to copy")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE payments")
    finally:
        connection.close()
