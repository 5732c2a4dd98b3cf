"""BoundedPaymentGateway: Stripe calls in flight are bounded (OVERLOADED past the bound, before
anything is written), each is timed by min(timeout, the caller's deadline), and a call whose
caller left frees its slot. Driven on a real event loop with a gateway that waits on a gate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from billing.adapters import deadlines
from billing.adapters.bounded_gateway import BoundedPaymentGateway
from billing.adapters.memory import InMemoryPaymentGateway
from billing.adapters.metrics import Metrics
from billing.domain.errors import GatewayUnavailable, Overloaded
from billing.ports import CheckoutParams, CheckoutSnapshot
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.refund_payment import RefundCommand, RefundPayment
from tests.unit.world import World, paid

T = TypeVar("T")


class GatedGateway(InMemoryPaymentGateway):
    """Stripe in memory whose create_checkout waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0
        self.arrived = asyncio.Condition()

    async def create_checkout(self, params: CheckoutParams) -> CheckoutSnapshot:
        async with self.arrived:
            self.waiting += 1
            self.arrived.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().create_checkout(params)

    async def until_waiting(self, count: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.waiting >= count)


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def command(n: int) -> CreateCheckoutCommand:
    return CreateCheckoutCommand(user_id="alice", package_id="coins_100",
                                 success_url="https://game.example/ok",
                                 cancel_url="https://game.example/no", request_id=f"r-{n}")


def test_a_call_past_the_bound_is_shed_at_once_and_writes_nothing() -> None:
    world, metrics, inner = World(), Metrics(), GatedGateway()
    bounded = BoundedPaymentGateway(inner, limit=2, timeout_s=30, metrics=metrics)
    create = CreateCheckout(world.units, bounded, world.catalog)

    async def scenario() -> None:
        held = [asyncio.create_task(create(command(n))) for n in (1, 2)]
        await inner.until_waiting(2)
        assert bounded.in_flight == 2 == sample(metrics, "billing_stripe_calls_in_flight")

        with pytest.raises(Overloaded) as shed:
            await create(command(3))

        assert (shed.value.reason, shed.value.metadata) == ("OVERLOADED", {"limit": "stripe_calls"})
        assert sample(metrics, "billing_stripe_shed_total") == 1
        requests = {p.request_id for p in world.store.state.payments.values()}
        assert requests == {"r-1", "r-2"}  # the shed request left no row
        inner.gate.set()
        await asyncio.gather(*held)
        assert bounded.in_flight == 0 == sample(metrics, "billing_stripe_calls_in_flight")
        assert await create(command(3))  # room again: the retry goes through

    run(scenario)
    assert sample(metrics, "billing_stripe_call_seconds_count",
                  endpoint="create_checkout", outcome="ok") == 3


def test_a_shed_refund_debits_nothing() -> None:
    world = World()
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    balance = world.balance("alice")
    metrics, inner = Metrics(), GatedGateway()
    bounded = BoundedPaymentGateway(inner, limit=1, timeout_s=30, metrics=metrics)
    refund = RefundPayment(world.units, bounded)

    async def scenario() -> None:
        held, release = asyncio.Event(), asyncio.Event()

        async def another_call() -> None:
            async with bounded.reserve():  # the only slot
                held.set()
                await release.wait()

        other = asyncio.create_task(another_call())
        await held.wait()
        with pytest.raises(Overloaded):
            await refund(RefundCommand(user_id="alice", session_id=created.session_id,
                                       reason="", request_id="refund-1"))
        release.set()
        await other

    run(scenario)
    assert world.balance("alice") == balance
    assert not world.store.state.refunds


def test_calls_made_while_holding_a_slot_use_it() -> None:
    metrics = Metrics()
    bounded = BoundedPaymentGateway(InMemoryPaymentGateway(), limit=1, timeout_s=30,
                                    metrics=metrics)

    async def scenario() -> None:
        async with bounded.reserve():
            assert await bounded.undelivered_events() == []
            assert bounded.in_flight == 1

    run(scenario)
    assert bounded.in_flight == 0


def test_a_call_slower_than_the_timeout_is_unavailable_and_frees_its_slot() -> None:
    metrics, inner = Metrics(), GatedGateway()  # the gate never opens
    bounded = BoundedPaymentGateway(inner, limit=1, timeout_s=0.05, metrics=metrics)

    with pytest.raises(GatewayUnavailable, match="did not answer within"):
        run(lambda: CreateCheckout(World().units, bounded, World().catalog)(command(1)))

    assert bounded.in_flight == 0
    assert sample(metrics, "billing_stripe_call_seconds_count",
                  endpoint="create_checkout", outcome="timeout") == 1


def test_the_callers_deadline_bounds_the_call_below_the_timeout() -> None:
    metrics, inner = Metrics(), GatedGateway()
    bounded = BoundedPaymentGateway(inner, limit=1, timeout_s=30, metrics=metrics)

    async def scenario() -> None:
        token = deadlines.set_remaining(0.01)
        try:
            with pytest.raises(GatewayUnavailable):
                await CreateCheckout(World().units, bounded, World().catalog)(command(1))
        finally:
            deadlines.reset(token)

    run(scenario)  # with a 30 s timeout only, this would wait 30 s: the deadline ended it
    assert bounded.in_flight == 0


def test_a_caller_that_leaves_frees_the_slot_and_its_retry_gets_the_same_session() -> None:
    world, metrics, inner = World(), Metrics(), GatedGateway()
    bounded = BoundedPaymentGateway(inner, limit=1, timeout_s=30, metrics=metrics)
    create = CreateCheckout(world.units, bounded, world.catalog)

    async def scenario() -> None:
        leaving = asyncio.create_task(create(command(1)))
        await inner.until_waiting(1)
        leaving.cancel()  # what grpc.aio does when the caller's deadline passes
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert bounded.in_flight == 0
        (pending,) = world.store.state.payments.values()
        assert not pending.stripe_session_id  # the PENDING row stays for the retry (rule 2)
        inner.gate.set()
        retried = await create(command(1))
        assert retried.payment_id == pending.payment_id

    run(scenario)
    assert len(inner.sessions) == 1
    assert sample(metrics, "billing_stripe_call_seconds_count",
                  endpoint="create_checkout", outcome="cancelled") == 1
