"""Fixtures of the fault suites: fresh migrated databases, `billing serve` processes that are
always stopped, and a throwaway Postgres cluster that is always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.faults.processes import (
    FakeStripeProcess,
    PostgresCluster,
    ServeProcess,
    base_env,
    migrate,
)
from tests.faults.storm import StripeLikeSender

if TYPE_CHECKING:
    from tests.conftest import PostgresServer


@pytest.fixture
def fresh_database(postgres_server: PostgresServer, tmp_path: Path) -> str:
    """A new database on the test server, migrated by `billing migrate` (dropped at the end of
    the run with the others)."""
    url = postgres_server.create_database()
    migrate(base_env(tmp_path, url), tmp_path)
    return url


@pytest.fixture
def throwaway_cluster() -> Iterator[PostgresCluster]:
    """A Postgres cluster of this test's own, removed even when the test fails."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[ServeFactory]:
    """make(env, name) -> a ServeProcess (not started); every one is stopped at the end."""
    made: list[ServeProcess] = []

    def make(env: dict[str, str], name: str = "serve") -> ServeProcess:
        serve = ServeProcess(env, tmp_path / name, name)
        made.append(serve)
        return serve

    yield make
    for serve in made:
        serve.stop()


@pytest.fixture
def fake_stripe_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], FakeStripeProcess]]:
    made: list[FakeStripeProcess] = []

    def make(env: dict[str, str]) -> FakeStripeProcess:
        fake = FakeStripeProcess(env, tmp_path / "stripe-fake")
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


@pytest.fixture(autouse=True)
def _no_sender_outlives_its_test() -> Iterator[None]:
    yield
    StripeLikeSender.cancel_all()
