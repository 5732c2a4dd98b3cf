"""A multi-process grpc.aio load generator. Each worker process records the latency of every call
it sent inside the measured window (timed from when the call is sent) and its own CPU time, and
prints one JSON line; the parent merges them and, for throughput runs, samples the server's and
Postgres' CPU over the same window.

Schedules:
- closed (the throughput runs): P processes x N calls in flight, each slot sending its next call
  when the previous one is answered, for a measured window after a warm-up, or for a fixed count;
- open (probes and sustained loads): one call every 1/rate seconds, each on its own task, so a
  slow answer never delays the next send (no coordinated omission);
- bursts: a warm-up call, then bursts of calls sent at once, each after the previous one ended.
With samples=True every call comes back with its key, send time and outcome (the gRPC code and
its ErrorInfo reason), so a caller can tell shed calls from served ones.

Modes: balance (GetBalance), spend (SpendCoins, 1 coin, a unique idempotency key per call),
grant (GrantCoins, once per user), checkout (CreateCheckoutSession, a unique request id per call)
and mixed (GetBalance and SpendCoins alternately, plus one signed webhook every `webhook_every`
calls from a requests file, over HTTP).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench import util, wrk

PROCS = 2
IN_FLIGHT = 64
CALL_TIMEOUT_S = 30.0
PACKAGE_ID_ENV = "BENCH_PACKAGE_ID"


# -- the worker process --------------------------------------------------------------------------
def outcome(error: BaseException) -> str:
    """How a call failed: `CODE`, `CODE/REASON` with the ErrorInfo's reason, and `:LIMIT` when the
    ErrorInfo names a limit (`RESOURCE_EXHAUSTED/OVERLOADED:stripe_calls`); else the exception's
    class name."""
    import grpc

    from billing.adapters.grpc_api.errors import error_info

    code = getattr(error, "code", None)
    if not isinstance(error, grpc.RpcError) or not callable(code):
        return type(error).__name__
    info = error_info(error)  # type: ignore[arg-type]
    if info is None:
        return str(code().name)
    limit = info.metadata.get("limit")
    return f"{code().name}/{info.reason}" + (f":{limit}" if limit else "")


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    # A grpc.aio failure carries the same code, details and trailing metadata as a grpc.Call:
    # registered as one, so billing's own error_info() reads its ErrorInfo.
    grpc.Call.register(grpc.aio.AioRpcError)
    mode: str = config["mode"]
    users: int = config["users"]
    prefix: str = config["key_prefix"]
    wid: int = config["worker"]
    timeout_s: float = config.get("call_timeout_s") or CALL_TIMEOUT_S
    metadata = (("authorization", f"Bearer {config['token']}"),) if config.get("token") else None
    channel = grpc.aio.insecure_channel(config["target"])
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    await asyncio.wait_for(channel.channel_ready(), 20)

    webhooks: list[tuple[str, bytes]] = []
    http = None
    if config.get("webhook_file"):
        import aiohttp

        with open(config["webhook_file"], "rb") as requests:
            for i, line in enumerate(requests):
                if i % config["procs"] == wid:
                    signature, body = line.rstrip(b"\n").split(b"\t", 1)
                    webhooks.append((signature.decode(), body))
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config["in_flight"]))
    webhook_url = config.get("webhook_url", "")
    webhook_every = int(config.get("webhook_every") or 0)

    counter = 0

    def next_index() -> int:
        nonlocal counter
        counter += 1
        return counter

    def key(n: int) -> str:
        return f"{prefix}-{wid}-{n}"

    async def call(n: int) -> None:
        user = util.user_id((n * config["procs"] + wid) % users)
        if mode == "balance" or (mode == "mixed" and n % 2 == 0):
            await stub.GetBalance(pb.GetBalanceRequest(user_id=user), timeout=timeout_s,
                                  metadata=metadata)
        elif mode in ("spend", "mixed"):
            await stub.SpendCoins(pb.SpendCoinsRequest(
                user_id=user, coins=1, reason="bench", idempotency_key=key(n)),
                timeout=timeout_s, metadata=metadata)
        elif mode == "grant":
            await stub.GrantCoins(pb.GrantCoinsRequest(
                user_id=util.user_id((n - 1) * config["procs"] + wid),
                coins=config["grant_coins"], reason="bench grant",
                idempotency_key=f"{prefix}-grant"), timeout=timeout_s, metadata=metadata)
        elif mode == "checkout":
            await stub.CreateCheckoutSession(pb.CreateCheckoutSessionRequest(
                user_id=user, package_id=config["package_id"],
                success_url="https://example.com/success?session_id={CHECKOUT_SESSION_ID}",
                cancel_url="https://example.com/cancel", request_id=key(n)),
                timeout=timeout_s, metadata=metadata)
        else:
            raise ValueError(f"unknown mode {mode}")

    async def webhook(signature: str, body: bytes) -> None:
        # Signed again at send time: a long run must stay within the receiver's 300 s tolerance.
        signature = wrk.sign(body, int(time.time()))
        assert http is not None
        async with http.post(webhook_url, data=body, headers={
                "Content-Type": "application/json", "Stripe-Signature": signature}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    latencies: list[float] = []
    samples: list[tuple[str, float, float, str]] = []
    keep_samples = bool(config.get("samples"))
    errors: Counter[str] = Counter()
    first_error: list[str] = []
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    # Absolute (wall-clock) phase boundaries shared with the parent, mapped to perf_counter.
    offset = clock() - time.time()
    begin = config["start_at"] + offset
    window: dict[str, float] = {"start": begin + config.get("warmup_s", 0.0)}
    if config.get("duration_s"):
        window["end"] = window["start"] + config["duration_s"]
    # SIGUSR1 (Load.stop_sending) ends the window now: no more sends, the last answers awaited.
    loop.add_signal_handler(signal.SIGUSR1, lambda: window.update(end=clock()))
    limit = config.get("count")  # this worker's share of a fixed number of calls...
    deadline = begin + config.get("max_s", 1e9)  # ...unless that takes longer than this
    sent_webhooks = 0
    cpu: dict[str, float] = {}
    await asyncio.sleep(max(0.0, begin - clock()))

    async def timed(n: int, record: bool = True) -> None:
        """One call (or webhook), timed from when it is sent; recorded if sent in the window."""
        nonlocal sent_webhooks
        started = clock()
        result = "OK"
        try:
            if webhook_every and n % webhook_every == 0 and sent_webhooks < len(webhooks):
                sent_webhooks += 1
                await webhook(*webhooks[sent_webhooks - 1])
            else:
                await call(n)
        except Exception as error:  # counted, never fatal: the run goes on
            result = outcome(error)
            if not first_error:
                details = getattr(error, "details", None)
                first_error.append(f"{result}: {details() if callable(details) else error}")
        if record and started >= window["start"]:  # in the window: latency and outcome
            latency = clock() - started
            latencies.append(latency)
            if result != "OK":
                errors[result] += 1
            if keep_samples:
                samples.append((key(n), started - offset, latency, result))

    async def closed_loop() -> None:
        """`in_flight` slots, each sending its next call when the previous one is answered."""
        async def slot() -> None:
            while True:
                now = clock()
                if now >= window.get("end", math.inf):
                    return
                n = next_index()
                if limit is not None and (n > limit or now >= deadline):
                    return
                await timed(n)

        await asyncio.gather(*(slot() for _ in range(config["in_flight"])))

    lags: list[float] = []

    async def open_loop() -> None:
        """One call every 1/rate seconds whatever the answers, each on its own task."""
        assert "end" in window, "an open-loop load runs for a duration"
        interval = 1.0 / config["rate"]
        tasks = set()
        due = begin
        while due < window["end"]:
            await asyncio.sleep(max(0.0, due - clock()))
            lags.append(clock() - due)
            task = loop.create_task(timed(next_index()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += interval
        await asyncio.gather(*list(tasks))

    bursts: list[tuple[float, float]] = []

    async def in_bursts() -> None:
        """`warmup_calls` calls one by one (not recorded), then `bursts` times `burst_size`
        calls sent at once, each burst once the previous one is answered (and a pause)."""
        for _ in range(config.get("warmup_calls", 0)):
            await timed(next_index(), record=False)
        for _ in range(config["bursts"]):
            started = clock()
            await asyncio.gather(*(timed(next_index()) for _ in range(config["burst_size"])))
            bursts.append((started - offset, clock() - offset))
            await asyncio.sleep(config.get("burst_pause_s", 0.0))

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, window["start"] - clock()))
        cpu["start"] = time.process_time()
        cpu["t_start"] = clock()

    marks = loop.create_task(cpu_marks())
    schedule = {"closed": closed_loop, "open": open_loop, "bursts": in_bursts}
    await schedule[config.get("schedule", "closed")]()
    await marks
    cpu_s = time.process_time() - cpu["start"]
    wall = clock() - cpu["t_start"]
    if http is not None:
        await http.close()
    await channel.close(None)
    return {"latencies": latencies, "errors": dict(errors), "first_error": first_error,
            "cpu_s": cpu_s, "wall_s": wall, "webhooks": sent_webhooks, "samples": samples,
            "bursts": bursts, "lags": lags}


def _worker_main(raw: str) -> None:
    result = asyncio.run(_worker(json.loads(raw)))
    sys.stdout.write(json.dumps(result) + "\n")


# -- the parent ----------------------------------------------------------------------------------
class Sample(NamedTuple):
    """One call: its key (request id or idempotency key), when it was sent (wall clock), how
    long until its answer, and `OK` or how it failed (see `outcome`)."""

    key: str
    sent: float
    latency_s: float
    outcome: str


@dataclass
class LoadResult:
    calls: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    first_error: str
    client_cpu: list[float]  # % of one core, per worker process
    cpu: util.CpuWindow | None = None
    webhooks: int = 0
    samples: list[Sample] = field(default_factory=list)  # with samples=True
    bursts: list[tuple[float, float]] = field(default_factory=list)  # (start, end), wall clock
    lag_p99_ms: float = float("nan")  # open loop: how late the sender fired, p99

    def describe(self) -> str:
        errors = (f", errors {self.errors} (first: {self.first_error})" if self.errors else "")
        lag = "" if math.isnan(self.lag_p99_ms) else f", send lag p99 {self.lag_p99_ms:.1f} ms"
        return (f"{self.calls} calls in {self.seconds:.1f}s = {self.per_s:.0f}/s, "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, client CPU "
                + "+".join(f"{c:.0f}%" for c in self.client_cpu) + lag + errors)


class Load:
    """A load running in its own processes from construction; `wait()` collects it. Several
    loads can run side by side (a probe beside a load): give them the same `start_at`."""

    def __init__(
        self, target: str, mode: str, *, duration_s: float | None = None,
        count: int | None = None, warmup_s: float = 1.0, procs: int = PROCS,
        in_flight: int = IN_FLIGHT, users: int = 1000, key_prefix: str = "", token: str = "",
        cpu_groups: dict[str, list[int]] | None = None, database: str | None = None,
        measure_cpu: bool = True, counters: dict[str, Callable[[], float | None]] | None = None,
        start_at: float | None = None, **extra: Any,
    ) -> None:
        """`in_flight` is the total over all `procs` processes (closed loop); `extra` goes to
        the workers (schedule, rate, bursts, samples, ...)."""
        assert (duration_s is None) != (count is None) or extra.get("schedule") == "bursts", \
            "a duration or a count"
        self.start_at = start_at or time.time() + 1.5  # time for the workers to import, connect
        self.duration_s = duration_s
        base = {"target": target, "mode": mode, "users": users, "key_prefix": key_prefix,
                "token": token, "procs": procs, "in_flight": max(1, in_flight // procs),
                "start_at": self.start_at, "warmup_s": warmup_s if duration_s else 0.0,
                "duration_s": duration_s, **extra}
        if "rate" in extra:
            base["rate"] = extra["rate"] / procs
        self.window_start = self.start_at + base["warmup_s"]
        self.workers = []
        for wid in range(procs):
            config = dict(base, worker=wid)
            if count is not None:
                config["count"] = count // procs + (1 if wid < count % procs else 0)
            self.workers.append(subprocess.Popen(
                [util.PYTHON, "-c", "import sys; from bench.grpc_load import _worker_main;"
                 " _worker_main(sys.argv[1])", json.dumps(config)],
                cwd=util.ROOT, stdout=subprocess.PIPE, env=os.environ.copy()))
        self.cpu: util.CpuWindow | None = None
        if measure_cpu:
            self.cpu = util.CpuWindow(groups=dict(cpu_groups or {}), database=database,
                                      counters=dict(counters or {}))
            self.cpu.groups["load generator"] = [w.pid for w in self.workers]

    def stop_sending(self) -> None:
        """End the window now (a load run until something else is done): the workers send no
        more calls and finish with the answers of those they sent."""
        self.duration_s = max(0.0, time.time() - self.window_start)
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGUSR1)

    def wait(self, timeout_s: float = 300.0) -> LoadResult:
        cpu, duration_s = self.cpu, self.duration_s
        try:
            if cpu is not None:  # the CPU window is the calls' window
                time.sleep(max(0.0, self.window_start - time.time()))
                cpu.start()
            if duration_s is not None and cpu is not None:
                time.sleep(max(0.0, self.window_start + duration_s - time.time()))
                cpu.stop()
            outputs = []
            for worker in self.workers:
                out, _ = worker.communicate(timeout=timeout_s)
                if worker.returncode != 0:
                    raise RuntimeError(f"load worker failed with {worker.returncode}")
                outputs.append(json.loads(out))
            if duration_s is None and cpu is not None:
                cpu.stop()
            elapsed = duration_s if duration_s is not None else time.time() - self.window_start
        finally:
            for worker in self.workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        # The workers' own CPU readings (they may be gone before a /proc reading in count mode).
        shares = [out["cpu_s"] / max(out["wall_s"], 1e-6) * 100 for out in outputs]
        if cpu is not None:
            cpu.result["load generator"] = sum(shares)
            cpu.top_single["load generator"] = max(shares)
        latencies = sorted(x for out in outputs for x in out["latencies"])
        errors: Counter[str] = Counter()
        for out in outputs:
            errors.update(out["errors"])
        first = next((out["first_error"][0] for out in outputs if out["first_error"]), "")
        bursts = [tuple(b) for out in outputs for b in out["bursts"]]
        if bursts:  # the calls' own span: from the first send to the last answer
            elapsed = max(end for _, end in bursts) - min(start for start, _ in bursts)
        ok_calls = len(latencies) - sum(errors.values())
        lags = sorted(x for out in outputs for x in out["lags"])
        return LoadResult(
            calls=len(latencies), seconds=elapsed, per_s=ok_calls / max(elapsed, 1e-6),
            p50_ms=util.percentile(latencies, 0.50) * 1000,
            p99_ms=util.percentile(latencies, 0.99) * 1000,
            errors=dict(errors), first_error=first,
            client_cpu=shares,
            cpu=cpu, webhooks=sum(out["webhooks"] for out in outputs),
            samples=sorted((Sample(*s) for out in outputs for s in out["samples"]),
                           key=lambda sample: sample.sent),
            bursts=sorted(bursts),  # type: ignore[arg-type]
            lag_p99_ms=util.percentile(lags, 0.99) * 1000,
        )


def run_load(target: str, mode: str, *, timeout_s: float = 300.0, **options: Any) -> LoadResult:
    """Run one load to its end (see `Load` for the options)."""
    return Load(target, mode, **options).wait(timeout_s)


def run_bare(database: str, mode: str, duration_s: float, warmup_s: float,
             key_prefix: str) -> LoadResult:
    """One run against a freshly started bare server (bench.grpc_bare) on `database`."""
    from bench import grpc_bare

    port = util.free_port()
    flavour, workers = grpc_bare.service_flavour()
    with util.running([util.PYTHON, "-m", "bench.grpc_bare", str(port), util.pg_dsn(database),
                       flavour, str(workers)]) as server:
        util.wait_port(port, proc=server)
        return run_load(f"{util.HOST}:{port}", mode, duration_s=duration_s, warmup_s=warmup_s,
                        key_prefix=key_prefix, cpu_groups={"bare server": [server.pid]},
                        database=database)


def main(argv: Sequence[str]) -> None:  # a manual probe: python -m bench.grpc_load TARGET MODE S
    target, mode, seconds = argv[0], argv[1], float(argv[2])
    result = run_load(target, mode, duration_s=seconds, key_prefix=f"probe{int(time.time())}")
    print(result.describe())
    if result.cpu:
        print(result.cpu.describe())


if __name__ == "__main__":
    main(sys.argv[1:])

