"""Live updates (issue 12): WatchPaymentStatus and the ledger feed (StreamTransactions) under load,
each figure beside its same-run reference. One migrated database for the section, its USERS
accounts seeded at 0 coins, PENDING sessions copied from one made through CreateCheckoutSession
(bench/service.clone_sessions) and paid by signed `checkout.session.completed` webhooks.

1. Cross-replica watch: two `billing serve` processes (one worker each) on that database;
   BENCH_STREAMS_CROSS_WATCHES (500) sessions, one after another: a watch opened on replica B
   (its first message PENDING), then the webhook paying the session sent to replica A; the
   figure is the time from the webhook's HTTP 200 to the watch's last message (COMPLETED, with
   coins_added, the stream then closing OK), p99 < 100 ms. The same with the webhook sent to B
   itself is the reference (a wake-up within one process).
2. BENCH_STREAMS_IDLE (5,000) idle watches on one process (BILLING_WORKERS=1), then their
   sessions paid at BENCH_STREAMS_PAY_RATE (200)/s:
   - RSS growth of billing serve from before opening them to all open (every stream has had its
     first message), against a bare grpc.aio server (bench/grpc_bare.py `streams`: a handler
     that sends one message and waits) holding as many from the same client, measured the same
     way: <= 1.5 x;
   - wake-up: from each webhook's 200 to that watch's COMPLETED message, p99 < 250 ms;
   - GetBalance probed open-loop (PROBE_RATE/s, its own process) while the sessions are paid:
     p99 <= 2 x the p99 of the same probe while as many other sessions are paid at the same
     rate with no stream open (measured first, on the same service) + 10 ms.
   The streams are held by one client process (HOLD_CHANNELS channels, separate connections),
   opened at most OPEN_IN_FLIGHT at a time: gRPC core cancels (CANCELLED) the calls a server has
   not picked up yet past `grpc.server.max_pending_requests_hard_limit` (3000 by default), so
   5,000 opened in the same instant fail by the thousand on any grpc.aio server, the bare one
   included. HTTP/2's MAX_CONCURRENT_STREAMS is no limit here: a grpc.aio server sets none
   unless given `grpc.max_concurrent_streams` (one connection carried all 5,000 in a trial), and
   the bare server gets exactly the service's server options.
3. The feed under the webhook benchmark's load: BENCH_WORKERS workers, wrk -c32 sending distinct
   paid events for BENCH_DURATION_S (bench/webhook_load.py, as the `webhook` section does);
   BENCH_STREAMS_PAIRS (BENCH_RUNS) pairs of runs, without and with one StreamTransactions
   consumer (every user, from_now; its own process, resuming from its last cursor if cut off),
   which one goes first alternating from pair to pair.
   - lag: wrk gives no per-request times, so each row's lag is from its create_time (set by the
     service before the transaction commits, so before the 200) to its delivery at the consumer:
     an upper bound of the time from the 200. p99 < 250 ms (the median of the runs' p99s);
   - credits/s with the consumer >= 0.85 x without it (medians of the pairs). The consumer runs
     on this same 2-core machine: its CPU (printed) is taken from the service's.
   Every row of a run must reach the consumer exactly once.

    python -m bench streams
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import abuse, grpc_load, service, throughput, util, webhook_load, wrk
from bench.config import (
    DURATION_S,
    HTTP_CONNECTIONS,
    STREAMS_CROSS_WATCHES,
    STREAMS_IDLE,
    STREAMS_PAIRS,
    STREAMS_PAY_RATE,
    WEBHOOK_SESSIONS,
    WORKERS,
)
from bench.results import FAILURES, FIGURES, guarded, section_table
from bench.util import fmt, log

if TYPE_CHECKING:
    import aiohttp

CROSS_REFERENCE_WATCHES = 100  # the same-replica reference of scenario 1
# Streams opened and closed on each server before its "before" reading (0: none, as the issue
# measures, from the server's first stream; more leaves one-time costs out of both sides).
WARM_STREAMS = 0
OPEN_IN_FLIGHT = 100  # streams being opened at once (each until its first message)
HOLD_CHANNELS = 4
PROBE_RATE = 100  # GetBalance calls/s of the probe
LEAD_S = 2.5  # from starting the probe's process to its first send
CALL_DEADLINE_S = 5.0
DRAIN_S = 60.0  # the longest wait for every watch to end, or every row to arrive, after a load
PENDING, COMPLETED = 1, 2  # billing.v1 PaymentStatus
FEED_LAG = "billing_feed_lag_seconds"  # the service's histogram: a row's write -> its feed tail


def run(folder: Path, logs: Path) -> None:
    try:
        with util.throwaway_database("streams") as database:
            util.migrate(database)
            util.seed_accounts(database, service.USERS, 0)
            guarded("cross-replica watch", lambda: cross_replica(database, logs))
            guarded("idle streams", lambda: idle_streams(database, folder, logs))
            guarded("feed under load", lambda: feed_under_load(database, folder, logs))
    finally:
        table()


def _sessions(svc: service.Service, count: int, tag: str
              ) -> tuple[list[tuple[str, str, int, str, str]], list[bytes]]:
    """`count` new PENDING sessions (cs_ id, payment id, amount, currency, user) and the signed
    event paying each, in the same order."""
    service.clone_sessions(svc.database, count, tag)
    sessions = svc.pending_sessions(request_prefix=tag)
    return sessions, service.webhook_bodies(sessions, tag)


def _tag(name: str) -> str:
    return f"{name}{int(time.time() * 1000)}"


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Send one signed webhook; the wall-clock time its 200 arrived (raises on another status)."""
    headers = {"Content-Type": "application/json",
               "Stripe-Signature": wrk.sign(body, int(time.time()))}
    async with http.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return time.time()


# -- 1. a watch on replica B, the webhook on replica A ---------------------------------------------
def cross_replica(database: str, logs: Path) -> None:
    log(f"== 1. cross-replica watch: {STREAMS_CROSS_WATCHES} watches on replica B, one after"
        " another, each session paid by a webhook to replica A (two billing serve, one worker"
        " each, one Postgres)")
    replica_a = service.Service(database, log_path=logs / "serve-streams-a.log",
                                env={"BILLING_WORKERS": "1"})
    replica_b = service.Service(database, log_path=logs / "serve-streams-b.log",
                                env={"BILLING_WORKERS": "1"})
    figure = FIGURES["watch_cross_replica_p99_ms"]
    try:
        replica_a.start()
        replica_b.start()
        abuse.ensure_a_session(replica_a)
        notified = replica_b.metric("billing_feed_notifications_total") or 0.0
        sessions, bodies = _sessions(replica_a, STREAMS_CROSS_WATCHES, _tag("xr"))
        cross, problems = asyncio.run(_watch_and_pay(replica_b, replica_a.webhook_url,
                                                     sessions, bodies))
        notified = (replica_b.metric("billing_feed_notifications_total") or 0.0) - notified
        sessions, bodies = _sessions(replica_a, CROSS_REFERENCE_WATCHES, _tag("xs"))
        same, same_problems = asyncio.run(_watch_and_pay(replica_b, replica_b.webhook_url,
                                                         sessions, bodies))
        replica_a.alive()
        replica_b.alive()
    finally:
        replica_a.close()
        replica_b.close()
    cross.sort()
    same.sort()
    if cross:
        figure.values.append(util.percentile(cross, 0.99))
    figure.note = (f"{len(cross)} watches (p50 {fmt(util.percentile(cross, 0.5))} ms, max"
                   f" {fmt(cross[-1] if cross else float('nan'))} ms); the webhook to B itself:"
                   f" p99 {fmt(util.percentile(same, 0.99))} ms over {len(same)}")
    log(f"  webhook to A, watch on B: {_describe(cross)}; B received {notified:.0f} feed"
        " notifications")
    log(f"  webhook to B, watch on B (reference): {_describe(same)}")
    for label, found in (("cross-replica", problems), ("same-replica", same_problems)):
        if found:
            FAILURES.append(f"streams: {label} watches that did not end COMPLETED with coins"
                            f" and OK: {dict(found)}")
            log(f"  !! {label}: {dict(found)}")
    if not cross:
        figure.not_measurable("no watch ended COMPLETED")


def _describe(latencies_ms: Sequence[float]) -> str:
    return (f"{len(latencies_ms)} samples, p50 {fmt(util.percentile(latencies_ms, 0.5))} ms,"
            f" p99 {fmt(util.percentile(latencies_ms, 0.99))} ms, max"
            f" {fmt(max(latencies_ms) if latencies_ms else float('nan'))} ms")


async def _watch_and_pay(watched: service.Service, webhook_url: str,
                         sessions: list[tuple[str, str, int, str, str]], bodies: list[bytes],
                         ) -> tuple[list[float], Counter[str]]:
    """For each session in turn: a watch on `watched`, its first message, the webhook, then the
    watch to its end. The milliseconds from each 200 to the watch's last message, and what went
    wrong with the others."""
    import aiohttp
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    latencies: list[float] = []
    problems: Counter[str] = Counter()
    metadata = (("authorization", f"Bearer {watched.token}"),)
    async with grpc.aio.insecure_channel(watched.target) as channel, \
            aiohttp.ClientSession() as http:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 20)
        for (session_id, _, _, _, user), body in zip(sessions, bodies, strict=True):
            call = stub.WatchPaymentStatus(pb.WatchPaymentStatusRequest(
                user_id=user, session_id=session_id), metadata=metadata, timeout=30)
            try:
                first = await call.read()
                if first is grpc.aio.EOF or first.status != PENDING:
                    problems["first message not PENDING"] += 1
                    call.cancel()
                    continue
                # Read while the webhook is sent: each message timed when it arrives, even
                # before the 200 does.
                reading = asyncio.ensure_future(_read_to_end(call, first))
                try:
                    paid = await _post(http, webhook_url, body)
                except Exception as error:  # counted; the next session goes on
                    call.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await reading
                    problems[f"webhook: {error}"] += 1
                    continue
                last, last_at = await reading
                code = await call.code()
            except grpc.aio.AioRpcError as error:
                problems[error.code().name] += 1
                continue
            if code == grpc.StatusCode.OK and last.status == COMPLETED and last.coins_added > 0:
                latencies.append((last_at - paid) * 1000)
            else:
                problems[f"{code.name} after {pb.PaymentStatus.Name(last.status)}"] += 1
    return latencies, problems


async def _read_to_end(call: Any, last: Any) -> tuple[Any, float]:
    """A stream's last message and when it arrived (wall clock), once the stream has ended."""
    import grpc

    last_at = 0.0
    while (message := await call.read()) is not grpc.aio.EOF:
        last, last_at = message, time.time()
    return last, last_at


# -- 2. idle watches on one process ----------------------------------------------------------------
class Child:
    """A helper process of this module (`python -m bench.streams ROLE ...`): lines to its stdin,
    its stdout's lines read on a thread of our own (so every wait has a deadline)."""

    def __init__(self, *args: str) -> None:
        self.role = args[0]
        self.proc = subprocess.Popen(
            [util.PYTHON, "-m", "bench.streams", *args], cwd=util.ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.on_line(line.rstrip("\n"))
        self.lines.put(None)

    def on_line(self, line: str) -> None:
        self.lines.put(line)

    def expect(self, word: str, timeout_s: float) -> list[str]:
        """The words of the next line starting with `word` (raises if it does not come)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no `{word}` from {self.role} after"
                                   f" {timeout_s:.0f}s") from None
            if line is None:
                raise RuntimeError(f"{self.role} exited with {self.proc.wait(5)}"
                                   f" before `{word}`")
            if line.split(" ", 1)[0] == word:
                return line.split(" ", 1)[1:]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        util.stop(self.proc, timeout_s=10)
        self._reader.join(5)


class Holder(Child):
    """The client holding the streams (`hold`): opens a WatchPaymentStatus per line of a file
    (user TAB session), the first `warm` opened and closed first."""

    def __init__(self, target: str, token: str, pairs: Sequence[tuple[str, str]], warm: int,
                 folder: Path) -> None:
        path = folder / f"watches-{time.time_ns()}.txt"
        path.write_text("".join(f"{user}\t{session}\n" for user, session in pairs))
        super().__init__("hold", target, token, str(path), str(warm))

    def warmed(self) -> None:
        failed = json.loads(self.expect("warm", 120)[0])
        if failed:
            raise RuntimeError(f"warm-up streams failed: {failed}")

    def opened(self) -> tuple[int, float, dict[str, int]]:
        """After "go": (streams open, seconds to open them, why the others failed)."""
        self.send("go")
        words = self.expect("open", 300)[0].split(" ", 2)
        return int(words[0]), float(words[1]), json.loads(words[2])

    def results(self, timeout_s: float) -> dict[str, object]:
        """Once every stream ended (or, after `timeout_s`, cut short with "stop")."""
        try:
            raw = self.expect("done", timeout_s)[0]
        except TimeoutError:
            self.send("stop")
            raw = self.expect("done", 30)[0]
        result: dict[str, object] = json.loads(raw)
        return result


def idle_streams(database: str, folder: Path, logs: Path) -> None:
    count = STREAMS_IDLE
    pay_s = count / STREAMS_PAY_RATE
    log(f"== 2. {count:,} idle WatchPaymentStatus streams on one process, then their sessions"
        f" paid at {STREAMS_PAY_RATE:.0f}/s ({pay_s:.0f}s), GetBalance probed at {PROBE_RATE}/s")
    bare = bare_growth(count, folder)
    svc = service.Service(database, log_path=logs / "serve-streams-idle.log", env={
        "BILLING_WORKERS": "1", "BILLING_MAX_STREAMS": str(count + WARM_STREAMS + 100)})
    try:
        svc.start()
        abuse.ensure_a_session(svc)
        reference = _paid_and_probed(svc, count, None, "reference: no stream open")
        sessions, bodies = _sessions(svc, count + WARM_STREAMS, _tag("idle"))
        pairs = [(user, session_id) for session_id, _, _, _, user in sessions]
        holder = Holder(svc.target, svc.token, pairs, WARM_STREAMS, folder)
        try:
            holder.warmed()
            before = svc.rss_mb()
            opened, open_s, failed = holder.opened()
            after = svc.rss_mb()
            gauge = svc.metric("billing_streams_open")
            log(f"  billing serve: {opened:,} watches open in {open_s:.1f}s"
                + (f" ({failed} failed)" if failed else "")
                + f"; billing_streams_open {fmt(gauge or float('nan'))}; RSS {before:.1f}"
                f" -> {after:.1f} MB (+{after - before:.1f} MB,"
                f" {(after - before) * 1024 / max(opened, 1):.1f} KB per stream)")
            if opened != count:
                raise RuntimeError(f"only {opened} of {count} watches opened: {failed}")
            growth = FIGURES["idle_streams_rss_growth_mb"]
            growth.values.append(after - before)
            growth.limits.append(bare)
            growth.note = (f"{opened:,} streams each, from one client over {HOLD_CHANNELS}"
                           " connections" + (f", after {WARM_STREAMS} opened and closed on both"
                                             if WARM_STREAMS else ""))
            paying = list(zip(sessions[WARM_STREAMS:], bodies[WARM_STREAMS:], strict=True))
            measured = _paid_and_probed(svc, count, paying, "with the streams open")
            watched = holder.results(DRAIN_S)
        finally:
            holder.close()
        svc.alive()
    finally:
        svc.close()
    wake_ups(measured[0], watched)
    probe = FIGURES["idle_streams_balance_p99_ms"]
    probe.values.append(measured[1].p99_ms)
    probe.limits.append(reference[1].p99_ms)
    probe.allowance = lambda p99: 2 * p99 + 10
    probe.note = (f"probe samples: {measured[1].calls} with the streams, {reference[1].calls}"
                  f" without; failed: {sum(measured[1].errors.values())},"
                  f" {sum(reference[1].errors.values())}")


def bare_growth(count: int, folder: Path) -> float:
    """The RSS growth of the bare grpc.aio server while the same client opens `count` streams."""
    port = util.free_port()
    with util.running([util.PYTHON, "-m", "bench.grpc_bare", str(port), "-", "streams",
                       "0"]) as server:
        util.wait_port(port, proc=server)
        pairs = [(util.user_id(i % service.USERS), f"cs_bare_{i}")
                 for i in range(count + WARM_STREAMS)]
        holder = Holder(f"{util.HOST}:{port}", "", pairs, WARM_STREAMS, folder)
        try:
            holder.warmed()
            before = util.rss_mb(server.pid)
            opened, open_s, failed = holder.opened()
            after = util.rss_mb(server.pid)
            holder.send("stop")
            holder.results(30)
        finally:
            holder.close()
    log(f"  bare grpc.aio server: {opened:,} streams open in {open_s:.1f}s"
        + (f" ({failed} failed)" if failed else "")
        + f"; RSS {before:.1f} -> {after:.1f} MB (+{after - before:.1f} MB,"
        f" {(after - before) * 1024 / max(opened, 1):.1f} KB per stream)")
    if opened != count:
        raise RuntimeError(f"the bare server held only {opened} of {count} streams: {failed}")
    return after - before


def _paid_and_probed(svc: service.Service, count: int,
                     paying: list[tuple[tuple[str, str, int, str, str], bytes]] | None,
                     label: str) -> tuple[dict[str, float], grpc_load.LoadResult]:
    """`count` sessions paid at STREAMS_PAY_RATE/s (new ones when `paying` is None) while the
    probe sends GetBalance; when each 200 came (by session), and the probe's result."""
    if paying is None:
        sessions, bodies = _sessions(svc, count, _tag("idleref"))
        paying = list(zip(sessions, bodies, strict=True))
    pay_s = len(paying) / STREAMS_PAY_RATE
    start_at = time.time() + LEAD_S
    probe = grpc_load.Load(svc.target, "balance", duration_s=pay_s, warmup_s=1.0, procs=1,
                           schedule="open", rate=PROBE_RATE, key_prefix=_tag("probe"),
                           token=svc.token, measure_cpu=False, start_at=start_at,
                           call_timeout_s=CALL_DEADLINE_S)
    paid, errors = asyncio.run(_pay(svc.webhook_url, paying, probe.window_start))
    probed = probe.wait()
    log(f"  {label}: {len(paid):,} webhooks answered 200 at {STREAMS_PAY_RATE:.0f}/s"
        + (f", failed {dict(errors)}" if errors else "")
        + f"; GetBalance probe {probed.describe()}")
    if errors:
        FAILURES.append(f"streams: webhooks failed while paying ({label}): {dict(errors)}")
    svc.alive()
    return paid, probed


async def _pay(url: str, paying: list[tuple[tuple[str, str, int, str, str], bytes]],
               start_at: float) -> tuple[dict[str, float], Counter[str]]:
    """Open loop: one webhook every 1/STREAMS_PAY_RATE s from `start_at` (wall clock), each on
    its own task; when each session's 200 came."""
    import aiohttp

    paid: dict[str, float] = {}
    errors: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        async def one(session_id: str, body: bytes) -> None:
            try:
                paid[session_id] = await _post(http, url, body)
            except Exception as error:  # counted; the run goes on
                errors[str(error) or type(error).__name__] += 1

        tasks = set()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        begin = time.monotonic()
        for i, ((session_id, *_), body) in enumerate(paying):
            await asyncio.sleep(max(0.0, begin + i / STREAMS_PAY_RATE - time.monotonic()))
            task = asyncio.create_task(one(session_id, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))
    return paid, errors


def wake_ups(paid: dict[str, float], watched: dict[str, object]) -> None:
    figure = FIGURES["idle_streams_wake_p99_ms"]
    last: dict[str, list[object]] = watched["last"]  # type: ignore[assignment]
    ends: dict[str, int] = watched["ends"]  # type: ignore[assignment]
    wakes, problems = [], Counter[str]()
    for session_id, at in paid.items():
        status, coins, received = last.get(session_id, ("no message", 0, 0.0))
        if status == COMPLETED and coins:
            wakes.append((float(received) - at) * 1000)  # type: ignore[arg-type]
        else:
            problems[f"last message {status}"] += 1
    wakes.sort()
    if wakes:
        figure.values.append(util.percentile(wakes, 0.99))
    else:
        figure.not_measurable("no watch saw COMPLETED")
    figure.note = (f"{len(wakes):,} wake-ups (p50 {fmt(util.percentile(wakes, 0.5))} ms, max"
                   f" {fmt(wakes[-1] if wakes else float('nan'))} ms); streams ended {ends}")
    log(f"  wake-ups, 200 -> COMPLETED: {_describe(wakes)}; streams ended {ends}")
    if problems or set(ends) != {"OK"}:
        FAILURES.append(f"streams: idle watches not ending COMPLETED then OK: {dict(problems)},"
                        f" ends {ends}")
        log(f"  !! {dict(problems)}")


async def _hold(target: str, token: str, path: str, warm: int) -> None:
    """The `hold` process: see Holder. Prints `warm`, waits for `go`, prints `open N SECONDS
    {failures}`, then `done {json}` once every stream ended or on `stop`."""
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    pairs = [line.split("\t") for line in Path(path).read_text().splitlines()]
    # Separate connections (a channel of its own pool each), as several callers would have.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(HOLD_CHANNELS)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 20)
    stubs = [billing_pb2_grpc.BillingServiceStub(channel) for channel in channels]
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    gate = asyncio.Semaphore(OPEN_IN_FLIGHT)
    failed: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    last: dict[str, tuple[int, int, float]] = {}
    calls: list[grpc.aio.UnaryStreamCall] = []  # type: ignore[type-arg]

    async def watch(i: int, user: str, session_id: str, opened: asyncio.Future[None] | None,
                    ) -> None:
        """Open one stream; `opened` done at its first message (or failure); then, unless
        `opened` is None (a warm-up stream, closed at once), read it to its end."""
        async with gate:
            call = stubs[i % len(stubs)].WatchPaymentStatus(
                pb.WatchPaymentStatusRequest(user_id=user, session_id=session_id),
                metadata=metadata)
            try:
                first = await call.read()
                if first is grpc.aio.EOF or first.status != PENDING:
                    failed["first message not PENDING"] += 1
                    return
            except grpc.aio.AioRpcError as error:
                failed[error.code().name] += 1
                return
            finally:
                if opened is not None and not opened.done():
                    opened.set_result(None)
        if opened is None:
            call.cancel()
            return
        calls.append(call)
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                last[session_id] = (message.status, message.coins_added, time.time())
            ends[(await call.code()).name] += 1
        except grpc.aio.AioRpcError as error:
            ends[error.code().name] += 1
        except asyncio.CancelledError:
            ends["stopped by the bench"] += 1

    warm_up = [asyncio.create_task(watch(i, pairs[i][0], pairs[i][1], None)) for i in range(warm)]
    await asyncio.gather(*warm_up)
    print(f"warm {json.dumps(dict(failed))}", flush=True)
    failed.clear()
    while await commands.get() != "go":
        pass
    started = time.monotonic()
    firsts = [loop.create_future() for _ in pairs[warm:]]
    tasks = [asyncio.create_task(watch(i, user, session_id, first))
             for i, ((user, session_id), first) in enumerate(zip(pairs[warm:], firsts,
                                                                 strict=True))]
    await asyncio.gather(*firsts)
    print(f"open {len(pairs) - warm - sum(failed.values())} {time.monotonic() - started:.3f}"
          f" {json.dumps(dict(failed))}", flush=True)
    everything = asyncio.gather(*tasks)
    stop = asyncio.ensure_future(_until(commands, "stop"))
    await asyncio.wait([everything, stop], return_when=asyncio.FIRST_COMPLETED)
    for call in calls:
        call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await everything
    stop.cancel()
    print("done " + json.dumps({"last": last, "ends": dict(ends)}), flush=True)
    for channel in channels:
        await channel.close(None)


async def _until(commands: asyncio.Queue[str], word: str) -> None:
    while await commands.get() != word:
        pass


# -- 3. the feed under the webhook load ------------------------------------------------------------
class Consumer(Child):
    """The StreamTransactions consumer (`consume`): every user, from_now. It keeps what it
    receives in its own memory, as a real consumer would, and reports on request (no line per
    row: on this shared machine a pipe and a parser per row would be load of the benchmark's
    own beside the service's): `count PREFIX` -> the rows of sessions starting with PREFIX;
    `rows PREFIX` -> them as (received, create_time, type, session_id), wall-clock seconds."""

    def __init__(self, target: str, token: str) -> None:
        self.cuts: list[str] = []
        super().__init__("consume", target, token)

    def on_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "C":
            self.cuts.append(rest)
        else:
            super().on_line(line)

    def ready(self) -> None:
        self.expect("ready", 30)

    def wait_for(self, prefix: str, count: int, timeout_s: float) -> list[
            tuple[float, float, int, str]]:
        """The rows of sessions starting with `prefix`, once there are `count` (or the
        deadline passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the consumer exited with {self.proc.returncode}")
            self.send(f"count {prefix}")
            if int(self.expect("count", 30)[0]) >= count:
                break
            time.sleep(0.1)  # polling the consumer's tally, not synchronising the service
        self.send(f"rows {prefix}")
        return [tuple(row) for row in json.loads(self.expect("rows", 60)[0])]


def feed_under_load(database: str, folder: Path, logs: Path) -> None:
    log(f"== 3. the feed under the webhook load (wrk -c{HTTP_CONNECTIONS}, {DURATION_S:.0f}s,"
        f" BILLING_WORKERS={WORKERS}): {STREAMS_PAIRS} pairs with and without one"
        " StreamTransactions consumer (every user, from_now), alternating which goes first")
    svc = service.Service(database, log_path=logs / "serve-streams-feed.log",
                          env={"BILLING_WORKERS": str(WORKERS)})
    lags, credits = FIGURES["feed_lag_p99_ms"], FIGURES["feed_credits_per_s"]
    samples: list[int] = []
    wrk_p99: list[float] = []
    consumer_cpu: list[float] = []
    tail_p99: list[float] = []
    try:
        svc.start()
        abuse.ensure_a_session(svc)
        for pair in range(1, STREAMS_PAIRS + 1):
            # Without first in odd pairs, with first in even ones: the database grows run by
            # run, and neither side should always run on the larger one.
            for with_consumer in (pair % 2 == 0, pair % 2 == 1):
                tag = _tag(f"feed{pair}{'c' if with_consumer else 'n'}")
                requests_file = webhook_load.prepare(svc, folder, WEBHOOK_SESSIONS, tag)
                consumer = Consumer(svc.target, svc.token) if with_consumer else None
                ticks, began, tail_lags = 0, time.monotonic(), {}
                try:
                    if consumer is not None:
                        consumer.ready()
                        ticks, began = util.proc_ticks(consumer.proc.pid) or 0, time.monotonic()
                        tail_lags = _buckets(svc, FEED_LAG)
                    result = throughput.service_credit_run(pair, svc, requests_file)
                    (credits.values if with_consumer else credits.limits).append(result.per_s)
                    if consumer is None:
                        log("      (no consumer)")
                        continue
                    cpu = ((util.proc_ticks(consumer.proc.pid) or 0) - ticks) / util.CLK_TCK / (
                        time.monotonic() - began) * 100
                    expected = int(util.execute(
                        database, "SELECT count(*) FROM ledger WHERE starts_with(session_id, %s)",
                        (f"cs_test_{tag}_",)))
                    rows = consumer.wait_for(f"cs_test_{tag}_", expected, DRAIN_S)
                    tail_p99.append(_bucket_p99(tail_lags, _buckets(svc, FEED_LAG)) * 1000)
                finally:
                    if consumer is not None:
                        consumer.close()
                delays = sorted((received - created) * 1000 for received, created, _, _ in rows)
                distinct = len({row[3] for row in rows})
                lags.values.append(util.percentile(delays, 0.99))
                samples.append(len(delays))
                wrk_p99.append(result.wrk.p99_ms)
                consumer_cpu.append(cpu)
                log(f"      consumer: {len(rows):,} rows of {expected:,} credited ({distinct:,}"
                    f" distinct), create_time -> delivery {_describe(delays)}; consumer CPU"
                    f" {cpu:.0f}%" + (f"; cut off and resumed: {consumer.cuts}"
                                      if consumer.cuts else ""))
                log(f"      the service's {FEED_LAG} (write -> its feed tail): p99 <="
                    f" {fmt(tail_p99[-1])} ms (histogram bucket)")
                if len(rows) != expected or distinct != expected:
                    FAILURES.append(f"streams: feed run {pair}: {len(rows)} rows delivered"
                                    f" ({distinct} distinct) for {expected} credited")
                    log("      !! not every row exactly once")
        svc.alive()
    finally:
        code = svc.stop()
        svc.close()
        if code not in (0, None):
            log(f"  !! billing serve exited {code} on SIGTERM")
    lags.note = (f"rows per run {util.join(samples)}; from create_time (before the commit and"
                 f" the 200: an upper bound); wrk's p99 per request {util.join(wrk_p99)} ms;"
                 f" to the service's feed tail (its {FEED_LAG}): p99 <= {util.join(tail_p99)} ms")
    ratios = [with_ / without for with_, without in zip(credits.values, credits.limits,
                                                         strict=False) if without]
    credits.note = (f"{len(credits.values)} + {len(credits.limits)} runs; with / without per"
                    f" pair {util.join(ratios)}; the consumer process's CPU"
                    f" {util.join(consumer_cpu)} % of a core, on the same machine")


def _buckets(svc: service.Service, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts on /metrics (upper bound -> count), summed over
    the workers."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{util.HOST}:{svc.admin_port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def _bucket_p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the 99th percentile of what was observed between
    two readings (nan if nothing was)."""
    deltas = sorted((bound, count - before.get(bound, 0.0)) for bound, count in after.items())
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return float("nan")
    return next(bound for bound, count in deltas if count >= 0.99 * total)


def _consume(target: str, token: str) -> None:
    """The `consume` process: see Consumer. Resumes from its last cursor when cut off
    (SLOW_CONSUMER, SHUTTING_DOWN, a dropped connection), printing `C CODE/REASON` each time."""
    import grpc

    from billing.adapters.grpc_api.errors import error_info
    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    out = sys.stdout
    rows: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()

    def answer() -> None:  # the commands, on a thread of their own
        for line in sys.stdin:
            command, _, prefix = line.strip().partition(" ")
            with lock:
                theirs = [row for row in rows if row[3].startswith(prefix)]
            if command == "count":
                out.write(f"count {len(theirs)}\n")
            elif command == "rows":
                out.write(f"rows {json.dumps(theirs)}\n")
            out.flush()

    threading.Thread(target=answer, daemon=True).start()
    channel = grpc.insecure_channel(target)
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    cursor, ready = "", False
    while True:
        call = stub.StreamTransactions(pb.StreamTransactionsRequest(
            after_cursor=cursor, from_now=not cursor), metadata=metadata)
        try:
            for message in call:
                received = time.time()
                cursor = message.cursor
                if message.HasField("transaction"):
                    row = message.transaction
                    created = row.create_time.seconds + row.create_time.nanos / 1e9
                    with lock:
                        rows.append((received, created, row.type, row.session_id))
                elif not ready:
                    ready = True
                    out.write("ready\n")
                    out.flush()
        except grpc.RpcError as error:
            info = error_info(error)
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            reason = info.reason if info is not None else ""
            out.write(f"C {code.name}/{reason}\n")
            out.flush()
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
            time.sleep(0.05)  # a resume's backoff, as billing.client's


# -- the table ---------------------------------------------------------------------------------
def table() -> None:
    """Issue 12's figures: value, same-run reference, bar, verdict."""
    log("== live updates (issue 12): figure, value, same-run reference, bar")
    section_table("streams")


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "hold":
        asyncio.run(_hold(args[0], args[1], args[2], int(args[3])))
    elif role == "consume":
        _consume(args[0], args[1])
    else:
        raise SystemExit(f"unknown role {role}: hold or consume (`python -m bench streams` runs"
                         " the section)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
