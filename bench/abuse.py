"""The public port under abuse (issue 13): a forged-signature flood from wrk (32 connections,
FLOOD_S seconds) beside a stream of legitimate signed webhooks sent one after another.

Each run starts a fresh `billing serve` at the default log level (INFO) and sends the
legitimate stream throughout: alone for QUIET_S seconds, during the flood, alone again for
QUIET_S seconds (its quiet p99 is taken from both quiet spells, so that a burst of load from
elsewhere on the machine does not land on one side of the ratio only); then it stops the
service (SIGTERM: the last refusal summaries are written on the way out). Figures:

- log growth: what the log gained from the flood's start to the service's exit, less the lines
  about the legitimate webhooks (kept in full by design; printed beside it);
- the legitimate webhooks' p99 during the flood against their quiet p99, each credited once;
- the service's CPU per refused request, from a last ALONE_S seconds of the same flood without
  the legitimate stream (whose CPU would otherwise dwarf it): the service's CPU over the
  refusals its own metrics counted.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import service, util, wrk
from bench.config import RUNS
from bench.results import FAILURES, FIGURES, guarded

FLOOD_S = 10.0
QUIET_S = 5.0
CONNECTIONS = 32
LEGIT_SESSIONS = 12000  # more than one stream can send in 2 * QUIET_S + FLOOD_S
FORGED_SECRET = "whsec_not_the_service_s_secret"  # a forger's guess
ALONE_S = 3.0
RUN_S = 2 * QUIET_S + FLOOD_S + ALONE_S + 10  # one run with its start, data and stop, roughly


@dataclass
class AbuseRun:
    log_kb: float  # growth less the legitimate webhooks' lines
    legit_log_kb: float
    quiet_p99_ms: float
    flood_p99_ms: float
    cpu_ms_per_refusal: float
    refused: int
    flood_per_s: float
    legit_sent: int
    legit_credited: int
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.refused} refused ({self.flood_per_s:.0f}/s); log +{self.log_kb:.1f} KB"
                f" (+{self.legit_log_kb:.0f} KB of lines about the legitimate webhooks);"
                f" legitimate p99 {self.flood_p99_ms:.1f} ms vs quiet {self.quiet_p99_ms:.1f} ms"
                f" (x{self.flood_p99_ms / self.quiet_p99_ms:.2f}); {self.legit_credited}/"
                f"{self.legit_sent} credited once; {self.cpu_ms_per_refusal:.3f} ms CPU per"
                " refused request (the flood alone)")


class LegitStream:
    """Signed `checkout.session.completed` events, one after another on one keep-alive
    connection, each answered 200 `applied`; latencies per phase."""

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        self._port = port
        self._bodies = iter(bodies)
        self.latencies: dict[str, list[float]] = {"quiet": [], "flood": [], "after": []}
        self.phase = "quiet"
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="legit-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        connection = http.client.HTTPConnection(util.HOST, self._port, timeout=30)
        try:
            while not self._stop.is_set():
                body = next(self._bodies, None)
                if body is None:
                    self.failures.append("ran out of sessions")
                    return
                headers = {"Content-Type": "application/json",
                           "Stripe-Signature": wrk.sign(body, int(time.time()))}
                phase, started = self.phase, time.perf_counter()
                connection.request("POST", wrk.PATH, body, headers)
                reply = connection.getresponse()
                answer = reply.read()
                elapsed = time.perf_counter() - started
                self.sent += 1
                if reply.status != 200 or json.loads(answer).get("outcome") != "applied":
                    self.failures.append(f"{reply.status} {answer[:200]!r}")
                self.latencies[phase].append(elapsed * 1000)
        except Exception as error:  # reported with the run's figures
            self.failures.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()


def refused_so_far(svc: service.Service) -> int:
    with urllib.request.urlopen(f"http://{util.HOST}:{svc.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(r'billing_webhook_events_total\{outcome="rejected_signature",'
                      r'type="unknown"\} ([0-9.e+]+)', text)
    return int(float(found.group(1))) if found else 0


def ensure_a_session(svc: service.Service) -> None:
    """clone_sessions copies a session made through CreateCheckoutSession: make one if none."""
    if svc.count("SELECT count(*) FROM payments WHERE stripe_session_id IS NOT NULL"):
        return
    import grpc

    from billing.v1 import billing_pb2, billing_pb2_grpc

    with grpc.insecure_channel(svc.target) as channel:
        billing_pb2_grpc.BillingServiceStub(channel).CreateCheckoutSession(
            billing_pb2.CreateCheckoutSessionRequest(
                user_id="u0000", package_id=svc.first_package(), request_id="abuse-seed",
                success_url="https://example.com/ok", cancel_url="https://example.com/no"),
            metadata=(("authorization", f"Bearer {svc.token}"),), timeout=30)


def legit_log_bytes(log_path: Path, start: int, ids: set[str]) -> tuple[int, int]:
    """(bytes written after `start`, of which lines about the legitimate webhooks)."""
    with log_path.open("rb") as handle:
        handle.seek(start)
        written = handle.read()
    about_legit = 0
    for line in written.splitlines(keepends=True):
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if fields.get("event_id") in ids or fields.get("session_id") in ids:
            about_legit += len(line)
    return len(written), about_legit


def run(r: int, database: str, folder: Path, logs: Path) -> AbuseRun:
    svc = service.Service(database, log_path=logs / f"serve-abuse-{r}.log",
                          env={"BILLING_LOG_LEVEL": "INFO"})
    try:
        svc.start()
        ensure_a_session(svc)
        tag = f"ab{r}{int(time.time())}"
        service.clone_sessions(database, LEGIT_SESSIONS, tag)
        sessions = svc.pending_sessions(request_prefix=tag)
        bodies = service.webhook_bodies(sessions, tag)
        forged = folder / f"forged-{r}.txt"
        wrk.write_requests(forged, bodies[-1000:], secret=FORGED_SECRET)

        stream = LegitStream(svc.http_port, bodies)
        stream.start()
        time.sleep(QUIET_S)
        log_start = svc.log_path.stat().st_size
        refused_before = refused_so_far(svc)
        flood = wrk.Wrk(svc.http_port, forged, FLOOD_S, distinct=False, connections=CONNECTIONS)
        stream.phase = "flood"
        flood.start()
        result = flood.result(timeout_s=FLOOD_S + 60)
        refused = refused_so_far(svc) - refused_before
        stream.phase = "after"
        time.sleep(QUIET_S)
        stream.stop()
        alone_before = refused_so_far(svc)
        alone = wrk.Wrk(svc.http_port, forged, ALONE_S, distinct=False, connections=CONNECTIONS)
        cpu = util.CpuWindow(groups={"billing serve": [svc.pid]})
        alone.start()
        cpu.start()
        alone.result(timeout_s=ALONE_S + 60)
        cpu.stop()
        alone_refused = refused_so_far(svc) - alone_before
        svc.alive()
        code = svc.stop()
        if code != 0:
            stream.failures.append(f"billing serve exited {code} on SIGTERM")

        ids = {session_id for session_id, *_ in sessions} | {
            json.loads(body)["id"] for body in bodies[:stream.sent]}
        written, about_legit = legit_log_bytes(svc.log_path, log_start, ids)
        credited = svc_count(database, "SELECT count(*), count(DISTINCT session_id) FROM ledger"
                             f" WHERE type = 'PURCHASE' AND request_id LIKE 'evt_{tag}%'")
        notes = list(stream.failures)
        if credited[0] != stream.sent or credited[1] != stream.sent:
            notes.append(f"{stream.sent} legitimate webhooks sent, {credited[0]} credits for"
                         f" {credited[1]} sessions")
        cpu_s = cpu.result.get("billing serve", 0.0) / 100 * cpu.elapsed
        quiet = sorted(stream.latencies["quiet"] + stream.latencies["after"])
        during = sorted(stream.latencies["flood"])
        return AbuseRun(
            log_kb=(written - about_legit) / 1024, legit_log_kb=about_legit / 1024,
            quiet_p99_ms=util.percentile(quiet, 0.99), flood_p99_ms=util.percentile(during, 0.99),
            cpu_ms_per_refusal=cpu_s * 1000 / max(alone_refused, 1), refused=refused,
            flood_per_s=result.per_s, legit_sent=stream.sent, legit_credited=credited[0],
            notes=notes)
    finally:
        svc.close()


def svc_count(database: str, sql: str) -> tuple[int, int]:
    import psycopg2

    connection = psycopg2.connect(util.pg_dsn(database))
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            first, second = cursor.fetchone()
            return int(first), int(second)
    finally:
        connection.close()


def measure(logs: Path, folder: Path) -> None:
    """RUNS runs on a database of their own; the figures into bench.results."""
    with util.throwaway_database("abuse") as database:
        util.migrate(database)
        for r in range(1, RUNS + 1):
            def one(r: int = r) -> None:
                result = run(r, database, folder, logs)
                util.log(f"  [{r}] {result.describe()}")
                FIGURES["flood_log_growth_kb"].values.append(result.log_kb)
                FIGURES["flood_legit_p99_ms"].values.append(result.flood_p99_ms)
                FIGURES["flood_legit_p99_ms"].limits.append(result.quiet_p99_ms)
                FIGURES["flood_cpu_ms_per_refused"].values.append(result.cpu_ms_per_refusal)
                for note in result.notes:
                    FAILURES.append(f"abuse run {r}: {note}")
                    util.log(f"    !! {note}")
            guarded(f"abuse run {r}", one)
