from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.harness import ControllableGateway, RunningService, module_service


@pytest.fixture(scope="module")
def gateway() -> ControllableGateway:
    return ControllableGateway()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, gateway: ControllableGateway
) -> Iterator[RunningService]:
    yield from module_service(tmp_path_factory, gateway)


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"
