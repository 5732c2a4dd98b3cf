"""`billing serve` as a subprocess, the way `make run` starts it, poked with grpcurl the way the
README's walk-through does; and the other `billing` commands."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.harness import free_port, http_post, service_env, wait_for

VENV_BIN = Path(sys.executable).parent
BILLING = str(VENV_BIN / "billing")
GRPCURL = str(VENV_BIN / "grpcurl")
LISTEN_WITHIN_S = 10.0


@dataclass
class Serve:
    process: subprocess.Popen[str]
    env: dict[str, str]
    cwd: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.env['BILLING_GRPC_PORT']}"

    def grpcurl(self, *args: str, data: dict[str, object] | None = None) -> str:
        command = [GRPCURL, "-plaintext"]
        if data is not None:
            command += ["-d", json.dumps(data)]
        result = subprocess.run([*command, self.target, *args], capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def billing(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BILLING, *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=30, check=False)


def _environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_"))}
    ports = service_env(tmp_path)
    # As `make run`: the default database (var/billing.db in the working directory), fake Stripe.
    for name in ("BILLING_DATABASE_URL", "BILLING_FAKE_STRIPE_STATE"):
        ports.pop(name)
    env.update(ports)
    env.update(overrides)
    return env


def _serving(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=0.5)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    env = _environment(tmp_path)
    process = subprocess.Popen([BILLING, "serve"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = Serve(process, env, tmp_path)
    try:
        started = time.monotonic()
        wait_for(lambda: _serving(running.target) or process.poll() is not None,
                 LISTEN_WITHIN_S, "billing serve to be SERVING")
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() - started < LISTEN_WITHIN_S
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_billing_serve_listens_serves_health_and_exits_0_on_sigterm(serve):
    assert (serve.cwd / "var" / "billing.db").is_file()  # created and migrated on start
    serve.process.send_signal(signal.SIGTERM)
    _, stderr = serve.process.communicate(timeout=20)
    assert serve.process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # JSON lines
    messages = [line["message"] for line in lines]
    assert any(m.startswith("billing listening") for m in messages)
    assert any("AUTH IS OFF" in m for m in messages)
    assert any(m.startswith("fake Stripe listening") for m in messages)
    assert messages[-1] == "billing stopped"
    assert "whsec_dev_only_not_secret" not in stderr and "sk_test_fake" not in stderr


def test_the_readme_walk_through_with_grpcurl(serve):
    services = serve.grpcurl("list").split()
    assert {"billing.v1.BillingService", "grpc.health.v1.Health"} <= set(services)
    description = serve.grpcurl("describe", "billing.v1.BillingService")
    assert "rpc GetBalance ( .billing.v1.GetBalanceRequest )" in description
    assert json.loads(serve.grpcurl("grpc.health.v1.Health/Check")) == {"status": "SERVING"}

    packages = json.loads(serve.grpcurl("billing.v1.BillingService/ListCoinPackages"))
    assert "coins_500" in [p["id"] for p in packages["packages"]]
    created = json.loads(serve.grpcurl(
        "billing.v1.BillingService/CreateCheckoutSession",
        data={"user_id": "alice", "package_id": "coins_500",
              "success_url": "https://example.com/ok", "cancel_url": "https://example.com/no",
              "request_id": "order-1"}))
    form = urllib.parse.urlencode({"card_number": "4242424242424242"}).encode()
    status, _ = http_post(created["checkout_url"], form,
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200

    def completed() -> dict[str, object] | None:
        answer: dict[str, object] = json.loads(serve.grpcurl(
            "billing.v1.BillingService/GetPaymentStatus",
            data={"user_id": "alice", "session_id": created["session_id"]}))
        return answer if answer["status"] == "PAYMENT_STATUS_COMPLETED" else None

    paid = wait_for(completed, 10, "the purchase to complete")
    assert (paid["coins_added"], paid["new_balance"]) == ("550", "550")
    balance = json.loads(serve.grpcurl("billing.v1.BillingService/GetBalance",
                                       data={"user_id": "alice"}))
    assert balance == {"user_id": "alice", "balance": "550"}


def test_the_fake_stripe_helpers_drive_a_session(serve):
    created = json.loads(serve.grpcurl(
        "billing.v1.BillingService/CreateCheckoutSession",
        data={"user_id": "bob", "package_id": "coins_100",
              "success_url": "https://example.com/ok", "cancel_url": "https://example.com/no",
              "request_id": "order-2"}))
    result = serve.billing("stripe-fake", "pay", created["session_id"])
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    wait_for(lambda: json.loads(serve.grpcurl("billing.v1.BillingService/GetBalance",
                                              data={"user_id": "bob"})).get("balance") == "100",
             10, "the payment to be credited")
    unknown = serve.billing("stripe-fake", "pay", "cs_test_unknown")
    assert unknown.returncode == 1 and unknown.stderr.startswith("billing: ")


def _billing(tmp_path, *args, **env):
    return subprocess.run([BILLING, *args], cwd=tmp_path, env=_environment(tmp_path, **env),
                          capture_output=True, text=True, timeout=60, check=False)


def test_operations_commands_work_on_the_embedded_database(tmp_path):
    audit = _billing(tmp_path, "audit")
    assert (audit.returncode, "OK: every invariant holds" in audit.stdout) == (0, True), audit
    listing = _billing(tmp_path, "events", "list", "--failed")
    assert listing.returncode == 0 and listing.stdout.startswith("EVENT"), listing
    replay = _billing(tmp_path, "events", "replay", "evt_missing")
    assert replay.returncode == 1 and "no inbox event 'evt_missing'" in replay.stderr
    # Nothing is stale; the fake Stripe is not running, so listing lost events fails: exit 1.
    reconcile = _billing(tmp_path, "reconcile", BILLING_FAKE_STRIPE_PORT=str(free_port()))
    assert reconcile.returncode == 1, reconcile
    assert '"errors"' in reconcile.stdout and "_undelivered" in reconcile.stdout


def test_audit_exits_non_zero_with_a_readable_report_on_a_violation(tmp_path):
    assert _billing(tmp_path, "migrate").returncode == 0
    with sqlite3.connect(tmp_path / "var" / "billing.db") as db:
        db.execute("INSERT INTO accounts (user_id, balance) VALUES ('mallory', 1000)")
    audit = _billing(tmp_path, "audit")
    assert audit.returncode == 1
    assert "account 'mallory' holds 1000, its ledger sums to 0" in audit.stdout


def test_migrate_creates_the_default_sqlite_database(tmp_path):
    result = subprocess.run([BILLING, "migrate"], cwd=tmp_path, env=_environment(tmp_path),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "billing.db").is_file()


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    env = _environment(tmp_path, BILLING_GRPC_PORT="fifty")
    result = subprocess.run([BILLING, "serve"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "BILLING_GRPC_PORT: must be an integer" in result.stderr
