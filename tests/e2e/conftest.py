from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    API_TOKENS,
    ControllableGateway,
    RunningService,
    service_env,
    start_service,
)


@pytest.fixture(scope="module")
def gateway() -> ControllableGateway:
    return ControllableGateway()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, gateway: ControllableGateway
) -> Iterator[RunningService]:
    """One service per module: tokens on, SQLite, the in-memory Stripe (no fake started)."""
    env = service_env(
        tmp_path_factory.mktemp("service"),
        BILLING_API_TOKENS=API_TOKENS,
        STRIPE_API_BASE="http://127.0.0.1:9",  # never called: the gateway is in memory
    )
    running = start_service(env, gateway=gateway)
    yield running
    assert running.stop() == 0


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"
