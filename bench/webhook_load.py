"""One webhook credit run: wrk sends distinct signed, paid `checkout.session.completed` events
(one per PENDING session, never one twice) to a target (`billing serve`, or the peer) for a fixed
time; the figure is credits per second, read back from the target's own database, not from wrk's
200s. Over the same window it records the target's CPU (every process of it), its Postgres
backends' CPU and transactions, and any counter it is given (the service's round trips).
The service and the peer go through this same function, so the ratio between them compares the
same work under the same load, on the same machine, minutes apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench import util, wrk


class Target(Protocol):
    """What a credit run needs of `billing serve` (bench.service) or the peer (bench.peer)."""

    database: str
    http_port: int
    secret: str

    def pids(self) -> list[int]: ...

    def credits(self) -> int: ...

    def webhook_bodies(self, count: int, tag: str) -> list[bytes]: ...


@dataclass
class CreditRun:
    credits: int
    per_s: float
    sessions: int
    connections: int
    wrk: wrk.WrkResult
    cpu: util.CpuWindow
    costs: util.OpCosts

    @property
    def exhausted(self) -> bool:
        """Every session was paid before wrk's time was up (the rate is then over less time)."""
        return self.credits >= self.sessions - self.connections

    def describe(self) -> str:
        return (f"{self.credits} credits = {self.per_s:.0f} credits/s ({self.sessions} distinct"
                f" paid sessions); wrk {self.wrk.describe()}"
                + (" [every session used: raise BENCH_WEBHOOK_SESSIONS]" if self.exhausted
                   else ""))


def prepare(target: Target, folder: Path, sessions: int, tag: str) -> Path:
    """The requests file: `sessions` new PENDING sessions and the signed event paying each."""
    requests_file = folder / f"webhooks-{tag}.txt"
    wrk.write_requests(requests_file, target.webhook_bodies(sessions, tag), target.secret)
    return requests_file


def run(target: Target, name: str, requests_file: Path, *, duration_s: float,
        connections: int, counters: dict[str, Callable[[], float | None]] | None = None,
        ) -> CreditRun:
    """wrk for `duration_s` on a requests file from `prepare`; `name` labels the target's CPU."""
    sessions = sum(1 for _ in requests_file.open("rb"))
    wrk.resign(requests_file, target.secret)
    before = target.credits()
    runner = wrk.Wrk(target.http_port, requests_file, duration_s, distinct=True,
                     connections=connections)
    wrk_pid = runner.start()
    cpu = util.CpuWindow(groups={name: target.pids(), "wrk": [wrk_pid]}, database=target.database,
                         counters={"credits": target.credits, **(counters or {})})
    cpu.over_middle(duration_s)
    result = runner.result(timeout_s=duration_s + 60)
    time.sleep(0.2)  # the last answers' commits
    credits = target.credits() - before
    # Each credit answered 200 within wrk's time (the few in flight when wrk stopped are
    # credited after it and not counted); wrk's time is shorter if every session was used.
    per_s = min(credits, result.requests - result.non_2xx) / result.duration_s
    costs = cpu.costs(name, cpu.deltas["credits"] / cpu.elapsed)
    return CreditRun(credits, per_s, sessions, connections, result, cpu, costs)
