"""`billing serve` with BILLING_WORKERS=N > 1: one supervisor, N worker processes on the same ports.

One Python process is bound to one core by the GIL; N workers use N. Each worker is a whole
`billing serve` (gRPC, webhook, admin) started as a fresh interpreter (grpc does not survive a
fork), and binds the ports with SO_REUSEPORT, so the kernel spreads connections among them.

- SO_REUSEPORT is only shared among one supervisor's own workers: before starting any, the
  supervisor binds each port once *without* it, so a port another service holds makes `billing
  serve` fail as it does with one process; and a second `billing serve` fails the same way on
  ports our workers hold.
- Workers die with their supervisor (PR_SET_PDEATHSIG: SIGTERM, which drains them), and the
  supervisor forwards SIGTERM/SIGINT to them and waits for them to drain.
- A worker that exits unexpectedly is started again; a worker that cannot start (bad
  configuration, a port taken) stops the whole service with its exit code.
- /metrics answers for the whole service: prometheus-client's multiprocess mode, in a directory
  made for this run. The in-process fake Stripe and the reconcile loop run in worker 0 only.
- Postgres only: SQLite serves one process (its writers take the whole database).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from billing.adapters.metrics import MULTIPROCESS_DIR_ENV
from billing.settings import Settings

log = logging.getLogger("billing.supervisor")

# Set by the supervisor in each worker's environment (internal: not configuration).
WORKER_INDEX_ENV = "BILLING_WORKER_INDEX"
SUPERVISOR_PID_ENV = "BILLING_SUPERVISOR_PID"

EXIT_OK, EXIT_START_FAILED, EXIT_CONFIG = 0, 1, 2
RESTART_DELAY_S = 1.0
STOP_MARGIN_S = 10.0  # beyond the drain grace, before a worker that hangs is killed
_PR_SET_PDEATHSIG = 1


def worker_index() -> int | None:
    """This process's index among the workers of a supervisor, or None when it runs alone."""
    raw = os.environ.get(WORKER_INDEX_ENV, "")
    return int(raw) if raw.isdigit() else None


def die_with_supervisor() -> None:
    """In a worker: get SIGTERM (a graceful drain) when the supervisor dies, however it dies."""
    supervisor = int(os.environ.get(SUPERVISOR_PID_ENV, "0") or 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if supervisor and os.getppid() != supervisor:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def check_ports_free(settings: Settings) -> str | None:
    """Why the service cannot listen, or None: each port bound once without SO_REUSEPORT."""
    ports = {"gRPC": settings.grpc_port, "the webhook": settings.http_port,
             "admin": settings.admin_port}
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for name, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((settings.host, port))
            except OSError as error:
                return f"cannot listen for {name} on port {port}: {error.strerror}"
    return None


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._metrics_dir = ""

    def run(self) -> int:
        settings = self._settings
        if settings.is_sqlite:
            log.error("billing cannot start: BILLING_WORKERS=%d needs Postgres: SQLite serves one "
                      "process only (set BILLING_WORKERS=1, or BILLING_DATABASE_URL to Postgres)",
                      settings.workers)
            return EXIT_CONFIG
        taken = check_ports_free(settings)
        if taken is not None:
            log.error("billing cannot start: %s", taken)
            return EXIT_START_FAILED
        self._metrics_dir = tempfile.mkdtemp(prefix="billing-metrics-")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(settings.workers):
                self._start(index)
            log.info("billing supervisor: %d workers on gRPC %s, HTTP %s, admin %s",
                     settings.workers, settings.grpc_port, settings.http_port,
                     settings.admin_port, extra={"workers": settings.workers})
            return self._watch()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
        self._stopping = True

    def _start(self, index: int) -> None:
        env = {**os.environ, WORKER_INDEX_ENV: str(index), SUPERVISOR_PID_ENV: str(os.getpid()),
               MULTIPROCESS_DIR_ENV: self._metrics_dir}
        process = subprocess.Popen([sys.executable, "-m", "billing", "serve"], env=env)
        self._workers[index] = _Worker(index, process)

    def _watch(self) -> int:
        """Until a stop signal: restart workers that die; give up if one cannot start."""
        while not self._stopping:
            time.sleep(0.2)
            for index, worker in list(self._workers.items()):
                code = worker.process.poll()
                if code is None or self._stopping:
                    continue
                self._forget(worker)
                if code in (EXIT_CONFIG, EXIT_START_FAILED) and (
                        time.monotonic() - worker.started_at < 30):
                    log.error("worker %d could not start (exit %d): stopping", index, code)
                    return code
                log.error("worker %d exited unexpectedly (code %s): starting it again",
                          index, code, extra={"worker": index, "code": code})
                time.sleep(RESTART_DELAY_S)
                self._start(index)
        return EXIT_OK

    def _forget(self, worker: _Worker) -> None:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(worker.process.pid, self._metrics_dir)
        self._workers.pop(worker.index, None)

    def _stop_all(self) -> None:
        """SIGTERM to every worker (they drain within the grace), then wait; kill a laggard."""
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace_s + STOP_MARGIN_S
        for worker in list(self._workers.values()):
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.wait()
            self._forget(worker)


def supervise(settings: Settings) -> int:
    """Run BILLING_WORKERS workers until SIGTERM/SIGINT; the exit code of `billing serve`."""
    return Supervisor(settings).run()
