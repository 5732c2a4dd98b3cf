"""wrk with a Lua script that sends pre-signed Stripe webhook bodies.

The requests file holds one request per line: `<Stripe-Signature header>\t<JSON body>`. wrk's
threads split it (line i goes to thread i mod threads). In `cycle` mode a thread goes round its
share forever (the HTTP limit); in `distinct` mode it sends each line once and then stops, so no
event is ever delivered twice (the service's credits/s).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import util

PATH = "/api/payment/webhook"
SECRET = "whsec_dev_only_not_secret"
THREADS = 2
CONNECTIONS = 32

_LUA = r"""
local path = "%(path)s"
local file = "%(file)s"
local nthreads = %(threads)d
local cycle = %(cycle)s
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if i %% nthreads == id then
      local tab = line:find("\t", 1, true)
      reqs[#reqs + 1] = wrk.format("POST", path,
        {["Content-Type"] = "application/json", ["Stripe-Signature"] = line:sub(1, tab - 1)},
        line:sub(tab + 1))
    end
    i = i + 1
  end
  nextreq = 0
  answered = 0
end

function request()
  nextreq = nextreq + 1
  if nextreq > #reqs then
    if cycle then nextreq = 1 else nextreq = #reqs end
  end
  return reqs[nextreq]
end

%(response)s

function done(summary, latency, requests)
  io.write(string.format(
    "WRKSTATS requests=%%d duration_us=%%d status=%%d connect=%%d read=%%d write=%%d timeout=%%d"
    .. " p50_us=%%d p99_us=%%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

_RESPONSE_DISTINCT = """
function response(status, headers, body)
  answered = answered + 1
  if answered >= #reqs then wrk.thread:stop() end
end
"""


def sign(body: bytes, timestamp: int, secret: str = SECRET) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def write_requests(path: Path, bodies: list[bytes], secret: str = SECRET) -> None:
    timestamp = int(time.time())
    with path.open("wb") as out:
        for body in bodies:
            assert b"\n" not in body and b"\t" not in body
            out.write(sign(body, timestamp, secret).encode() + b"\t" + body + b"\n")


def resign(path: Path, secret: str = SECRET) -> None:
    """Sign a requests file's bodies again, now: a signature's timestamp must be fresh when it is
    sent (receivers refuse one older than 300 s)."""
    bodies = [line.split(b"\t", 1)[1].rstrip(b"\n") for line in path.open("rb")]
    write_requests(path, bodies, secret)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    per_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_percent: float

    def describe(self) -> str:
        errors = f", non-2xx {self.non_2xx}" if self.non_2xx else ""
        errors += f", socket errors {self.socket_errors}" if self.socket_errors else ""
        return (f"{self.requests} requests in {self.duration_s:.1f}s = {self.per_s:.0f}/s, "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms{errors}")


class Wrk:
    """One wrk run, started in the background so its CPU can be sampled alongside the others."""

    def __init__(self, port: int, requests_file: Path, duration_s: float, *, distinct: bool,
                 connections: int = CONNECTIONS, threads: int = THREADS) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-wrk-")
        script = Path(self._dir.name) / "webhook.lua"
        script.write_text(_LUA % {
            "path": PATH, "file": str(requests_file), "threads": threads,
            "cycle": "false" if distinct else "true",
            "response": _RESPONSE_DISTINCT if distinct else "",
        })
        self.args = [ensure_wrk(), f"-t{threads}", f"-c{connections}",
                     f"-d{max(1, round(duration_s))}s", "--timeout", "10s", "-s", str(script),
                     f"http://{util.HOST}:{port}{PATH}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._ticks0 = 0
        self._t0 = 0.0

    def start(self) -> int:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._t0 = time.monotonic()
        return self.proc.pid

    def result(self, timeout_s: float) -> WrkResult:
        assert self.proc is not None
        try:
            ticks = util.proc_ticks(self.proc.pid) or 0
            output, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        finally:
            self._dir.cleanup()
        elapsed = time.monotonic() - self._t0
        text = output.decode(errors="replace")
        found = re.search(r"WRKSTATS (.*)", text)
        if self.proc.returncode != 0 or found is None:
            raise RuntimeError(f"wrk failed ({self.proc.returncode}):\n{text}")
        stats = {k: int(v) for k, v in (kv.split("=") for kv in found.group(1).split())}
        duration = stats["duration_us"] / 1e6
        return WrkResult(
            requests=stats["requests"], duration_s=duration,
            per_s=stats["requests"] / duration, non_2xx=stats["status"],
            socket_errors=stats["connect"] + stats["read"] + stats["write"] + stats["timeout"],
            p50_ms=stats["p50_us"] / 1000, p99_ms=stats["p99_us"] / 1000,
            # Ticks read just before wrk exited: close enough to its total.
            cpu_percent=ticks / util.CLK_TCK / max(elapsed, 1e-6) * 100,
        )


def checkout_completed_event(*, event_id: str, session_id: str, payment_id: str, amount: int,
                             currency: str, user_id: str, created: int,
                             pad_to: int = 0, metadata: dict[str, str] | None = None) -> bytes:
    """A `checkout.session.completed` event as Stripe sends it (payment_status=paid), with
    `metadata` as the checkout set it (by default ours: payment_id and user_id)."""
    event: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "data": {"object": {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": "https://example.com/cancel",
            "client_reference_id": user_id,
            "created": created,
            "currency": currency.lower(),
            "customer": None,
            "customer_details": {"email": "buyer@example.com", "name": "Bench Buyer"},
            "customer_email": None,
            "expires_at": created + 1800,
            "livemode": False,
            "locale": None,
            "metadata": metadata or {"payment_id": payment_id, "user_id": user_id},
            "mode": "payment",
            "payment_intent": "pi_" + event_id[4:],
            "payment_method_types": ["card"],
            "payment_status": "paid",
            "status": "complete",
            "success_url": "https://example.com/success?session_id={CHECKOUT_SESSION_ID}",
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": None,
        }},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
    }
    body = json.dumps(event, separators=(",", ":")).encode()
    if pad_to and len(body) < pad_to:
        # Real events carry more fields than we read; pad to a realistic ~2 KB.
        event["data"]["object"]["custom_text"] = {"submit": {"message": "x" * (pad_to - len(
            body) - 40)}}
        body = json.dumps(event, separators=(",", ":")).encode()
    return body
