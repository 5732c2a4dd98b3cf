"""A slow Stripe (issue 10): can DB-only RPCs and the webhook stay fast while Stripe calls are in
flight, are Stripe calls bounded (the excess shed at once) and timed by the caller's deadline?

The fake Stripe runs as its own process behind `billing serve` (STRIPE_API_BASE), and only it is
restarted to change its latency (BILLING_FAKE_STRIPE_LATENCY_MS): 400 ms by default, and 0 ms for
the reference. Every latency figure is compared with the same scenario at 0 ms measured in the same
run, alternating (0, 400, 0, 400, ...): the reference carries the same CPU cost of checkouts on
the same busy machine, so the ratio isolates what waiting on Stripe costs. The probe is a separate
process sending GetBalance (or, in separate runs, SpendCoins) open-loop, one call every 10 ms,
each timed from when it is sent (bench/grpc_load.py's open schedule); sample counts are quoted.

Scenarios (BENCH_WORKERS workers, the bound at its default, unless said):
  a. 100 CreateCheckoutSession/s open-loop for BENCH_STRIPE_LOAD_S (about 40 in flight at
     400 ms): probe p99 <= 1.5 x its p99 at 0 ms + 10 ms (medians of BENCH_STRIPE_PAIRS pairs);
  b. the same load plus webhooks (wrk -c8, distinct paid sessions): credits/s at 400 ms >= 0.8 x
     their rate at 0 ms;
  c. BENCH_STRIPE_BURSTS bursts of 200 concurrent checkouts after one warm-up call: median burst
     time <= the same at 0 ms + 1.5 x ideal (latency x ceil(200 / bound), the SDK's pool being at
     least the bound); the probe's p99 over the bursts < 100 ms;
  d. one worker, BILLING_STRIPE_MAX_CONCURRENCY=BENCH_STRIPE_SHED_BOUND, twice that many checkouts
     at once: the excess gets OVERLOADED (limit=stripe_calls) within 50 ms of being sent, no
     payments row for a shed request id, health SERVING throughout;
  e. one worker, a checkout with a 100 ms deadline: DEADLINE_EXCEEDED; the in-flight gauge back to
     0 (how long it took); a retry with the same request id succeeds, with exactly one Checkout
     Session at the fake.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from bench import grpc_load, service, throughput, util
from bench.config import (
    STRIPE_BURSTS,
    STRIPE_LATENCY_MS,
    STRIPE_LOAD_S,
    STRIPE_PAIRS,
    STRIPE_SHED_BOUND,
    WORKERS,
)
from bench.results import FIGURES, Figure, guarded, section_table
from bench.util import fmt, log

RATE = 100  # calls/s of the probe and of the sustained checkouts: one every 10 ms
WEBHOOK_CONNECTIONS = 8
BURST_SIZE = 200
DEFAULT_BOUND = 256  # BILLING_STRIPE_MAX_CONCURRENCY's default (DESIGN.md)
LEAD_S = 2.5  # from starting a load's processes to its first send: imports and connects
CALL_DEADLINE_S = 5.0  # a caller's deadline for the loads' calls: bounds a backlog's drain
SHORT_DEADLINE_S = 0.1
IN_FLIGHT = "billing_stripe_calls_in_flight"
SHED = "RESOURCE_EXHAUSTED/OVERLOADED:stripe_calls"


def run(folder: Path, logs: Path) -> None:
    try:
        _run(folder, logs)
    finally:
        table()


def _run(folder: Path, logs: Path) -> None:
    with util.throwaway_database("stripe") as database:
        util.migrate(database)
        fake = service.FakeStripe(folder, log_path=logs / "stripe-fake.log")
        svc = _service(database, fake, logs / "serve-stripe.log", workers=WORKERS)
        fake.webhook_url = svc.webhook_url
        try:
            log(f"== a slow Stripe: the fake as its own process at {fake.url}, billing serve"
                " through STRIPE_API_BASE")
            fake.start(0)
            svc.start()
            log(f"  {svc.describe_processes()}")
            service.prepare(svc, sessions=20)
            package = svc.first_package()
            for mode, name in (("balance", "stripe_probe_p99_ms"),
                               ("spend", "stripe_spend_probe_p99_ms")):
                guarded(f"sustained checkouts, {mode} probe",
                        lambda mode=mode, name=name: sustained(svc, fake, package, mode, name))
            guarded("sustained checkouts + webhooks",
                    lambda: with_webhooks(svc, fake, package, folder))
            guarded("bursts", lambda: bursts(svc, fake, package))
        finally:
            svc.close()
        shedding_svc = _service(database, fake, logs / "serve-stripe-shed.log", workers=1,
                                BILLING_STRIPE_MAX_CONCURRENCY=str(STRIPE_SHED_BOUND))
        try:
            _set_latency(fake, STRIPE_LATENCY_MS)
            shedding_svc.start()
            guarded("shedding", lambda: shedding(shedding_svc, package))
            guarded("deadline", lambda: deadline(shedding_svc, fake, package))
        finally:
            shedding_svc.close()
            fake.stop()
        log("== after the loads: double credits, negative balances, billing audit")
        guarded("integrity", lambda: throughput.check_integrity(database))


def _service(database: str, fake: service.FakeStripe, log_path: Path, workers: int,
             **env: str) -> service.Service:
    return service.Service(database, log_path=log_path, env={
        "STRIPE_API_BASE": fake.url, "BILLING_WORKERS": str(workers), **env})


def _set_latency(fake: service.FakeStripe, latency_ms: int) -> None:
    if fake.proc is None or fake.latency_ms != latency_ms:
        fake.restart(latency_ms)


def _open_loop(svc: service.Service, mode: str, tag: str, start_at: float,
               duration_s: float = STRIPE_LOAD_S, **extra: object) -> grpc_load.Load:
    """RATE calls/s of `mode` from one process, from `start_at`, the first second a warm-up."""
    return grpc_load.Load(svc.target, mode, duration_s=duration_s, warmup_s=1.0, procs=1,
                          schedule="open", rate=RATE, key_prefix=tag, token=svc.token,
                          measure_cpu=False, start_at=start_at, call_timeout_s=CALL_DEADLINE_S,
                          **extra)


def _pairs() -> Iterator[tuple[int, int]]:
    """(pair, latency): 0 ms, then the slow latency, BENCH_STRIPE_PAIRS times."""
    for pair in range(1, STRIPE_PAIRS + 1):
        for latency in (0, STRIPE_LATENCY_MS):
            yield pair, latency


def _tag(name: str, latency: int) -> str:
    return f"{name}{latency}t{int(time.time() * 1000)}"


# -- a. sustained checkouts, probed --------------------------------------------------------------
def sustained(svc: service.Service, fake: service.FakeStripe, package: str, mode: str,
              name: str) -> None:
    figure = FIGURES[name]
    rpc = "GetBalance" if mode == "balance" else "SpendCoins"
    log(f"== a. {RATE} CreateCheckoutSession/s for {STRIPE_LOAD_S:.0f}s, {rpc} probed every"
        f" {1000 // RATE} ms: p99 at {STRIPE_LATENCY_MS} ms vs at 0 ms")
    counts: dict[int, list[int]] = {0: [], STRIPE_LATENCY_MS: []}
    failed: dict[int, list[int]] = {0: [], STRIPE_LATENCY_MS: []}
    for pair, latency in _pairs():
        _set_latency(fake, latency)
        start_at = time.time() + LEAD_S
        checkouts = _open_loop(svc, "checkout", _tag("sus", latency), start_at,
                               package_id=package)
        probe = _open_loop(svc, mode, _tag("probe", latency), start_at)
        probed, loaded = probe.wait(), checkouts.wait()
        (figure.values if latency else figure.limits).append(probed.p99_ms)
        counts[latency].append(probed.calls)
        failed[latency].append(sum(probed.errors.values()))
        log(f"  [{pair}] fake at {latency} ms: {rpc} probe {probed.describe()}")
        log(f"      checkouts {loaded.describe()}")
        _settle(svc)
    figure.allowance = lambda reference: 1.5 * reference + 10
    figure.note = (f"probe samples per run: {util.join(counts[STRIPE_LATENCY_MS])} at"
                   f" {STRIPE_LATENCY_MS} ms, {util.join(counts[0])} at 0 ms; failed (a p99 at"
                   f" {CALL_DEADLINE_S:.0f} s is the callers' deadline):"
                   f" {util.join(failed[STRIPE_LATENCY_MS])} at {STRIPE_LATENCY_MS} ms,"
                   f" {util.join(failed[0])} at 0 ms")


def _settle(svc: service.Service) -> None:
    """Let the service finish what the last run left (a backlog of checkouts, Stripe calls still
    in flight) before the next run, or the fake's restart, starts."""
    waited = svc.quiesce()
    if waited > 2:
        log(f"      (the service took {waited:.1f}s to finish the run's backlog)")


# -- b. sustained checkouts, with webhooks ---------------------------------------------------------
def with_webhooks(svc: service.Service, fake: service.FakeStripe, package: str,
                  folder: Path) -> None:
    figure = FIGURES["stripe_webhook_credits_per_s"]
    log(f"== b. the same checkouts plus webhooks (wrk -c{WEBHOOK_CONNECTIONS}): credits/s at"
        f" {STRIPE_LATENCY_MS} ms vs at 0 ms (the CPU per operation below counts the"
        " checkouts' too)")
    for pair, latency in _pairs():
        _set_latency(fake, latency)
        requests_file = throughput.service_credits(svc, folder, _tag("swh", latency))
        checkouts = _open_loop(svc, "checkout", _tag("swc", latency), time.time() + LEAD_S,
                               package_id=package)
        time.sleep(max(0.0, checkouts.window_start - time.time()))
        credits = throughput.service_credit_run(pair, svc, requests_file, WEBHOOK_CONNECTIONS,
                                                STRIPE_LOAD_S)
        loaded = checkouts.wait()
        (figure.values if latency else figure.limits).append(credits.per_s)
        log(f"      fake at {latency} ms; checkouts meanwhile: {loaded.describe()}")
        _settle(svc)


# -- c. bursts -------------------------------------------------------------------------------------
class Sampler:
    """Calls `sample()` every 20 ms on a thread of its own while open (a `with` block)."""

    every_s = 0.02

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Peaks(Sampler):
    """The peaks of the connections to the fake Stripe (what the service's HTTP pool really
    opens) and of the service's Stripe calls-in-flight gauge."""

    def __init__(self, svc: service.Service, fake_port: int) -> None:
        super().__init__()
        self.connections, self.in_flight = 0, float("nan")
        self._svc, self._port = svc, fake_port

    def sample(self) -> None:
        self.connections = max(self.connections, util.established_connections(self._port))
        gauge = self._svc.metric(IN_FLIGHT)
        if gauge is not None:
            self.in_flight = gauge if math.isnan(self.in_flight) else max(self.in_flight, gauge)

    def describe(self) -> str:
        gauge = ("no in-flight gauge" if math.isnan(self.in_flight)
                 else f"{self.in_flight:.0f} Stripe calls in flight")
        return f"peak {self.connections} connections to the fake, {gauge}"


def bursts(svc: service.Service, fake: service.FakeStripe, package: str) -> None:
    duration, probe_figure = FIGURES["stripe_burst_s"], FIGURES["stripe_burst_probe_p99_ms"]
    bound = int(svc.env.get("BILLING_STRIPE_MAX_CONCURRENCY", DEFAULT_BOUND))
    ideal_s = STRIPE_LATENCY_MS / 1000 * math.ceil(BURST_SIZE / bound)
    log(f"== c. {STRIPE_BURSTS} bursts of {BURST_SIZE} concurrent checkouts after one warm-up"
        f" call, GetBalance probed every {1000 // RATE} ms; ideal at {STRIPE_LATENCY_MS} ms ="
        f" {ideal_s:.2f}s (bound {bound})")
    for latency in (0, STRIPE_LATENCY_MS):
        _set_latency(fake, latency)
        start_at = time.time() + LEAD_S
        probe = _open_loop(svc, "balance", _tag("bprobe", latency), start_at, duration_s=3600,
                           samples=True)
        burster = grpc_load.Load(
            svc.target, "checkout", schedule="bursts", bursts=STRIPE_BURSTS,
            burst_size=BURST_SIZE, warmup_calls=1, burst_pause_s=0.2, procs=1,
            key_prefix=_tag("burst", latency), token=svc.token, package_id=package,
            measure_cpu=False, start_at=start_at + 1.0, call_timeout_s=120.0)
        with Peaks(svc, fake.port) as peaks:
            burst = burster.wait(timeout_s=1800)
        probe.stop_sending()
        probed = probe.wait()
        times = [end - start for start, end in burst.bursts]
        (duration.values if latency else duration.limits).extend(times)
        during = sorted(s.latency_s * 1000 for s in probed.samples
                        if any(start <= s.sent <= end for start, end in burst.bursts))
        p99 = util.percentile(during, 0.99)
        if latency:
            probe_figure.values.append(p99)
            probe_figure.note = f"{len(during)} probe samples sent during the bursts"
        log(f"  fake at {latency} ms: burst times {util.join(times)} s (median"
            f" {fmt(util.median(times))} s); {peaks.describe()}; checkouts"
            f" {burst.describe()}")
        log(f"      GetBalance probe during the bursts: {len(during)} samples, p50"
            f" {fmt(util.percentile(during, 0.5))} ms, p99 {fmt(p99)} ms")
        _settle(svc)
    duration.allowance = lambda reference: reference + 1.5 * ideal_s
    duration.note = f"ideal {ideal_s:.2f}s = {STRIPE_LATENCY_MS} ms x ceil({BURST_SIZE}/{bound})"


# -- d. shedding -----------------------------------------------------------------------------------
class HealthWatch(Sampler):
    """How many gRPC health checks (1 s deadline each) did not answer SERVING, timeouts
    included."""

    def __init__(self, target: str) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        super().__init__()
        self.checks, self.not_serving = 0, 0
        self._channel = grpc.insecure_channel(target)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._request = health_pb2.HealthCheckRequest(service="")
        self._serving = health_pb2.HealthCheckResponse.SERVING

    def sample(self) -> None:
        import grpc

        self.checks += 1
        try:
            serving = self._health.Check(self._request, timeout=1.0).status == self._serving
        except grpc.RpcError:
            serving = False
        self.not_serving += not serving

    def __exit__(self, *_: object) -> None:
        super().__exit__()
        self._channel.close()


def shedding(svc: service.Service, package: str) -> None:
    sent, bound = 2 * STRIPE_SHED_BOUND, STRIPE_SHED_BOUND
    log(f"== d. {sent} concurrent checkouts, BILLING_STRIPE_MAX_CONCURRENCY={bound},"
        f" BILLING_WORKERS=1, fake at {STRIPE_LATENCY_MS} ms")
    tag = _tag("shed", STRIPE_LATENCY_MS)
    with HealthWatch(svc.target) as health:
        result = grpc_load.run_load(
            svc.target, "checkout", schedule="bursts", bursts=1, burst_size=sent,
            warmup_calls=1, procs=1, samples=True, key_prefix=tag, token=svc.token,
            package_id=package, measure_cpu=False, call_timeout_s=60.0, timeout_s=600)
    shed = [s for s in result.samples if s.outcome == SHED]
    outcomes = Counter(s.outcome for s in result.samples)
    calls, shed_ms, rows = (FIGURES[name] for name in (
        "stripe_shed_calls", "stripe_shed_ms", "stripe_shed_rows"))
    calls.values.append(len(shed))
    calls.limits.append(sent - bound)
    calls.note = f"outcomes of the {sent}: {dict(outcomes)}"
    if shed:
        shed_ms.values.append(max(s.latency_s for s in shed) * 1000)
        shed_ms.note = "the slowest shed call, from its send to its answer"
        rows.values.append(util.execute(
            svc.database, "SELECT count(*) FROM payments WHERE request_id = ANY(%s)",
            ([s.key for s in shed],)))
    else:
        for figure in (shed_ms, rows):
            figure.not_measurable(f"no call was shed ({dict(outcomes)})")
    FIGURES["stripe_shed_not_serving"].values.append(health.not_serving)
    FIGURES["stripe_shed_not_serving"].note = f"of {health.checks} health checks"
    log(f"  {result.describe()}")
    log(f"  outcomes: {dict(outcomes)}; {len(shed)} shed; health not SERVING in"
        f" {health.not_serving} of {health.checks} checks")


# -- e. a deadline shorter than Stripe ------------------------------------------------------------
def deadline(svc: service.Service, fake: service.FakeStripe, package: str) -> None:
    import grpc

    from billing.v1 import billing_pb2, billing_pb2_grpc

    log(f"== e. CreateCheckoutSession with a {SHORT_DEADLINE_S * 1000:.0f} ms deadline, fake at"
        f" {fake.latency_ms} ms; then a retry with the same request id")
    request_id = _tag("deadline", fake.latency_ms)
    request = billing_pb2.CreateCheckoutSessionRequest(
        user_id=util.user_id(1), package_id=package, request_id=request_id,
        success_url="https://example.com/success", cancel_url="https://example.com/cancel")
    auth = (("authorization", f"Bearer {svc.token}"),)
    with grpc.insecure_channel(svc.target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        sent = time.monotonic()
        try:
            stub.CreateCheckoutSession(request, timeout=SHORT_DEADLINE_S, metadata=auth)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        FIGURES["stripe_deadline_exceeded"].values.append(
            float(code == grpc.StatusCode.DEADLINE_EXCEEDED))
        zero_after = _in_flight_back_to_zero(svc, sent, FIGURES["stripe_deadline_in_flight_zero_s"])
        try:
            retried = stub.CreateCheckoutSession(request, timeout=30, metadata=auth)
            retry = f"OK ({retried.session_id[:20]}...)"
        except grpc.RpcError as error:
            retry = error.code().name
    FIGURES["stripe_deadline_retry_ok"].values.append(float(retry.startswith("OK")))
    payment_id = util.execute(svc.database, "SELECT payment_id FROM payments"
                              " WHERE request_id = %s", (request_id,))
    sessions = fake.sessions_for(payment_id) if payment_id else 0
    FIGURES["stripe_deadline_sessions"].values.append(sessions)
    log(f"  first call: {code.name}; in-flight gauge back to 0 after {zero_after};"
        f" retry: {retry}; payment {payment_id}: {sessions} Checkout Session(s) at the fake")


def _in_flight_back_to_zero(svc: service.Service, sent: float, figure: Figure,
                            wait_s: float = 5.0) -> str:
    """Seconds from the send until the service's Stripe calls-in-flight gauge reads 0."""
    if svc.metric(IN_FLIGHT) is None:
        figure.not_measurable(f"billing serve exports no {IN_FLIGHT} on /metrics")
        return "(no gauge)"
    while time.monotonic() - sent < wait_s:
        if not svc.metric(IN_FLIGHT):
            figure.values.append(time.monotonic() - sent)
            return f"{figure.values[-1]:.2f}s"
        time.sleep(0.01)
    figure.not_measurable(f"{IN_FLIGHT} still above 0 after {wait_s:.0f}s")
    return f"more than {wait_s:.0f}s"


# -- the table ---------------------------------------------------------------------------------
def table() -> None:
    """Issue 10's table: what each scenario gave, beside its same-run reference and its bar."""
    log(f"== a slow Stripe (fake at {STRIPE_LATENCY_MS} ms unless said): figure, value, same-run"
        " reference, bar")
    section_table("stripe")
