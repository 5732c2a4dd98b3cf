"""`make check-prometheus`: the alert rules and a real scrape pass promtool.

Starts `billing serve` (SQLite and the in-process fake Stripe, in a temporary directory, on free
ports), makes a few calls so that every kind of metric has samples (a grant, a balance read, a
checkout through the fake Stripe, a refused webhook), scrapes /metrics from the admin port and
runs `promtool check metrics` on it, then `promtool check rules` on alerts.yml. Exits non-zero
if promtool finds a problem, or is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RULES = HERE / "alerts.yml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def exercise(grpc_port: int, http_port: int) -> None:
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        stub.GrantCoins(pb.GrantCoinsRequest(user_id="metrics-check", coins=5, reason="check",
                                             idempotency_key="check"), timeout=10)
        stub.GetBalance(pb.GetBalanceRequest(user_id="metrics-check"), timeout=10)
        stub.CreateCheckoutSession(pb.CreateCheckoutSessionRequest(
            user_id="metrics-check", package_id="coins_100", success_url="https://example.com/ok",
            cancel_url="https://example.com/no", request_id="check"), timeout=30)
    forged = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/payment/webhook", data=b"{}", method="POST",
        headers={"Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(forged, timeout=5)
    except urllib.error.HTTPError as refused:
        assert refused.code == 400, refused.code


def main() -> int:
    promtool = shutil.which("promtool")
    if promtool is None:
        print("check-prometheus: promtool is missing (apt-get install prometheus)")
        return 1
    rules = subprocess.run([promtool, "check", "rules", str(RULES)])
    with tempfile.TemporaryDirectory(prefix="billing-metrics-") as tmp:
        ports = {name: free_port() for name in ("GRPC", "HTTP", "ADMIN", "FAKE_STRIPE")}
        env = {**os.environ, "BILLING_DATABASE_URL": f"sqlite:///{tmp}/billing.db",
               "BILLING_FAKE_STRIPE_STATE": f"{tmp}/stripe-fake.db", "BILLING_LOG_LEVEL": "WARNING",
               **{f"BILLING_{name}_PORT": str(port) for name, port in ports.items()}}
        env.pop("BILLING_API_TOKENS", None)
        serve = subprocess.Popen([sys.executable, "-m", "billing", "serve"], cwd=tmp, env=env)
        try:
            admin = f"http://127.0.0.1:{ports['ADMIN']}"
            deadline = time.monotonic() + 30
            while get(f"{admin}/readyz")[0] != 200:
                if serve.poll() is not None or time.monotonic() > deadline:
                    print("check-prometheus: billing serve did not become ready")
                    return 1
                time.sleep(0.1)
            exercise(ports["GRPC"], ports["HTTP"])
            status, scraped = get(f"{admin}/metrics")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    if status != 200:
        print(f"check-prometheus: /metrics answered {status}")
        return 1
    print(f"Checking a scrape of /metrics ({len(scraped.splitlines())} lines)")
    metrics = subprocess.run([promtool, "check", "metrics"], input=scraped)
    return 1 if rules.returncode or metrics.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main())
