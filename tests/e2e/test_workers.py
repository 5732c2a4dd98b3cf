"""`billing serve` with BILLING_WORKERS=2 on Postgres, as real processes: the workers share the
ports, /metrics answers for all of them, a second service on the same ports fails, the workers
die with their supervisor, SIGTERM drains them all, and SQLite refuses more than one."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.harness import http_get, wait_for
from tests.e2e.test_cli import BILLING, LISTEN_WITHIN_S, _environment, _serving

WORKERS = 2


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` has a listening socket on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def env(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    return _environment(tmp_path, BILLING_DATABASE_URL=postgres_url,
                        BILLING_WORKERS=str(WORKERS), BILLING_SHUTDOWN_GRACE_S="5")


@pytest.fixture
def supervisor(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([BILLING, "serve"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        target = f"127.0.0.1:{env['BILLING_GRPC_PORT']}"
        wait_for(lambda: (len(_children(process.pid)) == WORKERS and _serving(target))
                 or process.poll() is not None, LISTEN_WITHIN_S * 2, "the workers to serve")
        assert process.poll() is None, process.communicate()[1]
        ports = {int(env[f"BILLING_{name}_PORT"]) for name in ("GRPC", "HTTP", "ADMIN")}
        for child in _children(process.pid):  # every worker listens, not only the first
            wait_for(lambda child=child: ports <= _listening_ports(child), LISTEN_WITHIN_S,
                     f"worker {child} to listen on {ports}")
        yield process
    finally:
        for child in _children(process.pid) if process.poll() is None else []:
            os.kill(child, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_the_workers_share_the_ports_and_metrics_count_every_call(supervisor, env):
    target = f"127.0.0.1:{env['BILLING_GRPC_PORT']}"
    calls = 20
    for n in range(calls):  # a new connection each: the kernel spreads them over the workers
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            billing_pb2_grpc.BillingServiceStub(ch).GrantCoins(pb.GrantCoinsRequest(
                user_id="workers", coins=1, reason="w", idempotency_key=f"w-{n}"), timeout=10)

    status, text = http_get(f"http://127.0.0.1:{env['BILLING_ADMIN_PORT']}/metrics")

    assert status == 200
    counted = [line for line in text.splitlines()
               if line.startswith('billing_rpc_total{code="OK",method="GrantCoins"}')]
    assert [float(line.split()[-1]) for line in counted] == [calls]


def test_a_second_service_on_the_same_ports_fails(supervisor, env, tmp_path):
    for workers in ("1", "2"):
        second = subprocess.run([BILLING, "serve"], cwd=tmp_path,
                                env={**env, "BILLING_WORKERS": workers}, capture_output=True,
                                text=True, timeout=60, check=False)
        assert second.returncode == 1, second.stderr
        assert "already in use" in second.stderr
    assert supervisor.poll() is None


def test_the_workers_die_with_their_supervisor(supervisor):
    workers = _children(supervisor.pid)

    supervisor.kill()  # SIGKILL: no chance to stop them itself
    supervisor.wait()

    wait_for(lambda: not any(_alive(worker) for worker in workers), 30,
             "the orphaned workers to exit")


def test_sigterm_drains_every_worker_and_exits_0(supervisor):
    workers = _children(supervisor.pid)

    supervisor.send_signal(signal.SIGTERM)
    _, stderr = supervisor.communicate(timeout=30)

    assert supervisor.returncode == 0, stderr
    assert stderr.count("billing stopped") == WORKERS
    assert not any(_alive(worker) for worker in workers)


def test_sqlite_refuses_more_than_one_worker(tmp_path):
    refused = subprocess.run([BILLING, "serve"], cwd=tmp_path,
                             env=_environment(tmp_path, BILLING_WORKERS="2"),
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2
    assert "BILLING_WORKERS=2 needs Postgres" in refused.stderr
