"""Fixtures: one background loop per run; per test a receiver and a fake Stripe on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stripe_harness import BlockingGateway, FakeStripeServer, LoopThread, Receiver


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def receiver(loop_thread: LoopThread) -> Iterator[Receiver]:
    receiver = Receiver()
    loop_thread.run(receiver.start())
    yield receiver
    loop_thread.run(receiver.stop())


@pytest.fixture
def start_fake(loop_thread: LoopThread, tmp_path: Path,
               receiver: Receiver) -> Iterator[Callable[..., FakeStripeServer]]:
    """Start a fake (sending to the receiver unless webhook_url is given); stopped after."""
    started: list[FakeStripeServer] = []

    def start(**options: Any) -> FakeStripeServer:
        webhook_url = options.pop("webhook_url", receiver.url)
        state = options.pop("state_path", str(tmp_path / f"stripe-{len(started)}.db"))
        server = FakeStripeServer(loop_thread, state, webhook_url, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fake(start_fake: Callable[..., FakeStripeServer]) -> FakeStripeServer:
    return start_fake()


@pytest.fixture
def gateway(fake: FakeStripeServer) -> BlockingGateway:
    return fake.gateway()
