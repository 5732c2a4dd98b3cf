"""Start-up refusals, health following the database, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import grpc
import pytest
from dependency_injector import providers
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.adapters.sql import SqlStore
from billing.container import build_container
from billing.server import BillingServer
from billing.settings import parse
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ControllableGateway,
    create_request,
    http_get,
    service_env,
    start_service,
    wait_for,
)

NO_FAKE = {"STRIPE_API_BASE": "http://127.0.0.1:9"}


def _run_to_exit(env: dict[str, str], timeout: float = 15.0) -> int:
    """Run the server as `billing serve` would, expecting it to give up on its own."""
    server = BillingServer(build_container(parse(env)))
    return asyncio.run(asyncio.wait_for(server.run(handle_signals=False), timeout))


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(answer.status)


def test_auth_off_on_a_public_address_refuses_to_start(tmp_path, caplog):
    env = service_env(tmp_path, BILLING_HOST="0.0.0.0", **NO_FAKE)
    assert _run_to_exit(env) == 2
    assert "BILLING_HOST" in caplog.text and "not a loopback" in caplog.text


def test_a_live_key_without_tokens_refuses_to_start(tmp_path, caplog):
    env = service_env(tmp_path, STRIPE_SECRET_KEY="sk_live_x", STRIPE_WEBHOOK_SECRET="whsec_x")
    assert _run_to_exit(env) == 2
    assert "BILLING_API_TOKENS: required with a live" in caplog.text
    assert "sk_live_x" not in caplog.text


def test_a_taken_port_is_a_clear_start_failure(tmp_path, caplog):
    env = service_env(tmp_path, **NO_FAKE)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["BILLING_HTTP_PORT"])))
        squatter.listen()
        assert _run_to_exit(env) == 1
    assert f"port {env['BILLING_HTTP_PORT']}" in caplog.text
    # Nothing is left listening: the gRPC port it had opened is free again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(env["BILLING_GRPC_PORT"])))


def test_postgres_without_the_schema_refuses_to_start_saying_to_migrate(
    tmp_path, caplog, empty_postgres_url
):
    env = service_env(tmp_path, BILLING_DATABASE_URL=empty_postgres_url, **NO_FAKE)
    assert _run_to_exit(env) == 1
    assert "billing migrate" in caplog.text


def test_sqlite_default_is_created_and_migrated_on_start(tmp_path):
    env = service_env(tmp_path, **NO_FAKE)
    database = tmp_path / "var" / "billing.db"
    assert not database.parent.exists()
    service = start_service(env, gateway=ControllableGateway())
    try:
        assert database.is_file()
    finally:
        assert service.stop() == 0


class SwitchableStore(SqlStore):
    """A real SQLite store whose health probe can be told the database is gone."""

    down = False

    def ping(self) -> bool:
        return not self.down and super().ping()


def test_health_is_not_serving_while_the_database_does_not_answer(tmp_path):
    env = service_env(tmp_path, **NO_FAKE)
    store = SwitchableStore(env["BILLING_DATABASE_URL"])
    service = start_service(
        env, gateway=ControllableGateway(),
        configure=lambda c: c.store.override(providers.Object(store)),
    )
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert _health(service.grpc_target) == serving
        store.down = True
        wait_for(lambda: _health(service.grpc_target, "billing.v1.BillingService") == not_serving,
                 5, "NOT_SERVING")
        assert _health(service.grpc_target) == not_serving
        assert http_get(f"{service.admin_base}/readyz")[0] == 503
        store.down = False
        wait_for(lambda: _health(service.grpc_target) == serving, 5, "SERVING again")
        assert http_get(f"{service.admin_base}/readyz")[0] == 200
    finally:
        assert service.stop() == 0


def test_shutdown_drains_an_in_flight_call_and_refuses_new_ones(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    gateway = ControllableGateway()
    service = start_service(service_env(tmp_path, BILLING_SHUTDOWN_GRACE_S="10", **NO_FAKE),
                            gateway=gateway)
    gateway.delay_s = 1.5
    with service.stub() as stub:
        in_flight = stub.CreateCheckoutSession.future(create_request("drain-user"), timeout=10)
        assert gateway.entered.wait(5)
        stopping = threading.Thread(target=service.stop)
        stopping.start()

        def refused_now() -> bool:
            try:
                stub.GetBalance(pb.GetBalanceRequest(user_id="late"), timeout=1)
            except grpc.RpcError as error:
                return error.code() is grpc.StatusCode.UNAVAILABLE
            return False

        wait_for(refused_now, 5, "new calls to be refused")
        assert not in_flight.done()  # still draining
        assert in_flight.result(timeout=10).session_id.startswith("cs_")
        stopping.join(15)
    assert service.outcome["code"] == 0
    assert "billing stopped" in caplog.text


def test_a_call_longer_than_the_grace_is_cut_and_the_server_still_exits(tmp_path):
    gateway = ControllableGateway()
    service = start_service(service_env(tmp_path, BILLING_SHUTDOWN_GRACE_S="0.3", **NO_FAKE),
                            gateway=gateway)
    gateway.delay_s = 3
    with service.stub() as stub:
        in_flight = stub.CreateCheckoutSession.future(create_request("slow-user"), timeout=10)
        assert gateway.entered.wait(5)
        assert service.stop(timeout=10) == 0
        with pytest.raises(grpc.RpcError):
            in_flight.result(timeout=10)
