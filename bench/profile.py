"""`python -m bench profile [SECONDS]`: py-spy profiles of `billing serve` (on a throwaway
Postgres database, fake Stripe) under the SpendCoins, webhook and GetBalance loads of the
benchmarks. For each load it writes the collapsed stacks (py-spy's raw format: open them in
speedscope.app or feed them to flamegraph.pl) to /tmp/bench-profile-<load>.txt, plus the same
with --gil (only the thread holding the GIL: what serialises a Python process), and prints the
top functions by own time and by inclusive time.

py-spy is not a project dependency: install it into the virtualenv to profile
(`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import grpc_load, service, util, wrk

OUT = Path("/tmp")
TOP = 25


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: int, out: Path, gil: bool) -> None:
    args = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
            "--output", str(out), "--rate", "200", "--subprocesses"]  # every worker
    if gil:
        args.append("--gil")
    subprocess.run(args, check=True, capture_output=True, timeout=seconds + 60)


_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('function')} ({path})"


def summarize(collapsed: Path) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = [_name(frame) for frame in stack.split(";") if frame]
        # py-spy starts each stack with the thread's name: ignore frames without a file.
        frames = [frame for frame in frames if "(" in frame]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"  {total} samples"]
    lines.append("  top by own time:")
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in own.most_common(TOP)]
    lines.append("  top by inclusive time (billing code and its direct libraries):")
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in inclusive.most_common(TOP * 3)
              if "billing/" in name or "sqlalchemy" in name or "grpc" in name
              or "aiohttp" in name or "psycopg2" in name][:TOP]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    seconds = int(argv[0]) if argv else 10
    py_spy()
    with util.throwaway_database("profile") as database, \
            tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        util.migrate(database)
        svc = service.Service(database)
        try:
            svc.start()
            service.prepare(svc, sessions=50)
            for load in ("spend", "webhook", "balance"):
                for gil in (False, True):
                    out = OUT / f"bench-profile-{load}{'-gil' if gil else ''}.txt"
                    runner = _start_load(load, svc, seconds + 4, Path(tmp), gil)
                    time.sleep(2.5)
                    record(svc.pid, seconds, out, gil)
                    summary = runner()
                    print(f"== {load}{' (--gil: the thread holding the GIL)' if gil else ''}:"
                          f" {summary}; collapsed stacks in {out}")
                    print(summarize(out), flush=True)
        finally:
            svc.stop()
            svc.close()
    return 0


def _start_load(load: str, svc: service.Service, seconds: float, folder: Path, gil: bool):
    """Start a load in the background; returns a function that waits and describes it."""
    if load == "webhook":
        tag = f"prof{int(time.time())}{int(gil)}"
        requests_file = folder / f"{tag}.txt"
        wrk.write_requests(requests_file, svc.webhook_bodies(20_000, tag))
        runner = wrk.Wrk(svc.http_port, requests_file, seconds, distinct=True)
        runner.start()
        return lambda: runner.result(seconds + 60).describe()
    box: dict[str, str] = {}

    def run() -> None:
        result = grpc_load.run_load(svc.target, load, duration_s=seconds - 1.5, warmup_s=0.0,
                                    token=svc.token, key_prefix=f"prof{time.time()}")
        box["summary"] = result.describe()

    thread = threading.Thread(target=run)
    thread.start()

    def wait() -> str:
        thread.join(seconds + 60)
        return box.get("summary", "(no result)")

    return wait
