"""A multi-process grpc.aio load generator: P worker processes × N calls in flight each, for a
fixed measured window (after a warm-up) or for a fixed number of calls. Each worker records the
latency of every call it started inside the window and its own CPU time, and prints one JSON
line; the parent merges them and samples the server's and Postgres' CPU over the same window.

Modes: balance (GetBalance), spend (SpendCoins, 1 coin, a unique idempotency key per call),
grant (GrantCoins, once per user), checkout (CreateCheckoutSession, a unique request id per call)
and mixed (GetBalance and SpendCoins alternately, plus one signed webhook every `webhook_every`
calls from a requests file, over HTTP).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import util, wrk

PROCS = 2
IN_FLIGHT = 64
CALL_TIMEOUT_S = 30.0
PACKAGE_ID_ENV = "BENCH_PACKAGE_ID"


# -- the worker process --------------------------------------------------------------------------
async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    mode: str = config["mode"]
    users: int = config["users"]
    prefix: str = config["key_prefix"]
    wid: int = config["worker"]
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

    async def call(n: int) -> None:
        user = util.user_id((n * config["procs"] + wid) % users)
        if mode == "balance" or (mode == "mixed" and n % 2 == 0):
            await stub.GetBalance(pb.GetBalanceRequest(user_id=user), timeout=CALL_TIMEOUT_S,
                                  metadata=metadata)
        elif mode in ("spend", "mixed"):
            await stub.SpendCoins(pb.SpendCoinsRequest(
                user_id=user, coins=1, reason="bench", idempotency_key=f"{prefix}-{wid}-{n}"),
                timeout=CALL_TIMEOUT_S, metadata=metadata)
        elif mode == "grant":
            await stub.GrantCoins(pb.GrantCoinsRequest(
                user_id=util.user_id((n - 1) * config["procs"] + wid),
                coins=config["grant_coins"], reason="bench grant",
                idempotency_key=f"{prefix}-grant"), timeout=CALL_TIMEOUT_S, metadata=metadata)
        elif mode == "checkout":
            await stub.CreateCheckoutSession(pb.CreateCheckoutSessionRequest(
                user_id=user, package_id=config["package_id"],
                success_url="https://example.com/success?session_id={CHECKOUT_SESSION_ID}",
                cancel_url="https://example.com/cancel", request_id=f"{prefix}-{wid}-{n}"),
                timeout=CALL_TIMEOUT_S, metadata=metadata)
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
    errors: Counter[str] = Counter()
    first_error: list[str] = []
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    # Absolute (wall-clock) phase boundaries shared with the parent, mapped to perf_counter.
    offset = clock() - time.time()
    begin = config["start_at"] + offset
    window_start = begin + config.get("warmup_s", 0.0)
    window_end = window_start + config["duration_s"] if config.get("duration_s") else None
    limit = config.get("count")  # this worker's share of a fixed number of calls...
    deadline = begin + config.get("max_s", 1e9)  # ...unless that takes longer than this
    sent_webhooks = 0
    cpu: dict[str, float] = {}
    await asyncio.sleep(max(0.0, begin - clock()))

    async def slot() -> None:
        nonlocal sent_webhooks
        while True:
            now = clock()
            if window_end is not None and now >= window_end:
                return
            n = next_index()
            if limit is not None and (n > limit or now >= deadline):
                return
            started = clock()
            failed = ""
            try:
                if webhook_every and n % webhook_every == 0 and sent_webhooks < len(webhooks):
                    sent_webhooks += 1
                    await webhook(*webhooks[sent_webhooks - 1])
                else:
                    await call(n)
            except Exception as error:  # counted, never fatal: the run goes on
                code = getattr(error, "code", None)
                failed = code().name if callable(code) else type(error).__name__
                if not first_error:
                    details = getattr(error, "details", None)
                    first_error.append(f"{failed}: {details() if callable(details) else error}")
            if started >= window_start:  # counted in the window: latency and outcome
                latencies.append(clock() - started)
                if failed:
                    errors[failed] += 1

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, window_start - clock()))
        cpu["start"] = time.process_time()
        cpu["t_start"] = clock()

    marks = loop.create_task(cpu_marks())
    await asyncio.gather(*(slot() for _ in range(config["in_flight"])))
    await marks
    cpu_s = time.process_time() - cpu["start"]
    wall = clock() - cpu["t_start"]
    if http is not None:
        await http.close()
    await channel.close(None)
    return {"latencies": latencies, "errors": dict(errors), "first_error": first_error,
            "cpu_s": cpu_s, "wall_s": wall, "webhooks": sent_webhooks}


def _worker_main(raw: str) -> None:
    result = asyncio.run(_worker(json.loads(raw)))
    sys.stdout.write(json.dumps(result) + "\n")


# -- the parent ----------------------------------------------------------------------------------
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
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        errors = (f", errors {self.errors} (first: {self.first_error})" if self.errors else "")
        return (f"{self.calls} calls in {self.seconds:.1f}s = {self.per_s:.0f}/s, "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, client CPU "
                + "+".join(f"{c:.0f}%" for c in self.client_cpu) + errors)


def run_load(
    target: str, mode: str, *, duration_s: float | None = None, count: int | None = None,
    warmup_s: float = 1.0, procs: int = PROCS, in_flight: int = IN_FLIGHT, users: int = 1000,
    key_prefix: str = "", token: str = "", cpu_groups: dict[str, list[int]] | None = None,
    database: str | None = None, timeout_s: float = 300.0, **extra: Any,
) -> LoadResult:
    """Run one load; `in_flight` is the total over all `procs` processes."""
    assert (duration_s is None) != (count is None), "a duration or a count"
    start_at = time.time() + 1.5  # time for the workers to import and connect
    base = {"target": target, "mode": mode, "users": users, "key_prefix": key_prefix,
            "token": token, "procs": procs, "in_flight": max(1, in_flight // procs),
            "start_at": start_at, "warmup_s": warmup_s if duration_s else 0.0,
            "duration_s": duration_s, **extra}
    workers = []
    for wid in range(procs):
        config = dict(base, worker=wid)
        if count is not None:
            config["count"] = count // procs + (1 if wid < count % procs else 0)
        workers.append(subprocess.Popen(
            [util.PYTHON, "-c", "import sys; from bench.grpc_load import _worker_main;"
             " _worker_main(sys.argv[1])", json.dumps(config)],
            cwd=util.ROOT, stdout=subprocess.PIPE, env=os.environ.copy()))
    cpu = util.CpuWindow(groups=dict(cpu_groups or {}), database=database)
    cpu.groups["load generator"] = [w.pid for w in workers]
    window_start = start_at + base["warmup_s"]
    try:
        time.sleep(max(0.0, window_start - time.time()))
        cpu.start()
        t0 = time.monotonic()
        if duration_s is not None:
            time.sleep(duration_s)
            cpu.stop()
        outputs = []
        for worker in workers:
            out, _ = worker.communicate(timeout=timeout_s)
            if worker.returncode != 0:
                raise RuntimeError(f"load worker failed with {worker.returncode}")
            outputs.append(json.loads(out))
        if duration_s is None:
            cpu.stop()
        elapsed = duration_s if duration_s is not None else time.monotonic() - t0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    # The workers' own CPU readings (they may be gone before a /proc reading in count mode).
    shares = [out["cpu_s"] / max(out["wall_s"], 1e-6) * 100 for out in outputs]
    cpu.result["load generator"], cpu.top_single["load generator"] = sum(shares), max(shares)
    latencies = sorted(x for out in outputs for x in out["latencies"])
    errors: Counter[str] = Counter()
    for out in outputs:
        errors.update(out["errors"])
    first = next((out["first_error"][0] for out in outputs if out["first_error"]), "")
    ok_calls = len(latencies) - sum(errors.values())
    return LoadResult(
        calls=len(latencies), seconds=elapsed, per_s=ok_calls / elapsed,
        p50_ms=util.percentile(latencies, 0.50) * 1000,
        p99_ms=util.percentile(latencies, 0.99) * 1000,
        errors=dict(errors), first_error=first,
        client_cpu=shares,
        cpu=cpu, webhooks=sum(out["webhooks"] for out in outputs),
    )


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

