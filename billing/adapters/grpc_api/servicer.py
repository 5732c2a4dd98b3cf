"""The BillingService servicer (grpc.aio): decode the request, call one use case, encode.

Use cases that only touch the database are synchronous and run on a bulkhead: reads on one
pool, writes on another, so a burst of one never queues the other. Use cases that wait on Stripe
are async and await it on the loop, holding no thread. Errors are not handled here: domain
errors propagate to the observing interceptor, which maps them once (errors.py). The caller's
name comes from the auth interceptor (`current_caller`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc

from billing.adapters.grpc_api import codec
from billing.adapters.grpc_api.interceptors import current_caller
from billing.ports import Offload
from billing.use_cases.cancel_checkout import CancelCheckout
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.get_payment_status import GetPaymentStatus, PaymentStatusView
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.list_coin_packages import ListCoinPackages
from billing.use_cases.list_transactions import ListTransactions
from billing.use_cases.refund_payment import RefundCommand, RefundPayment
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
from billing.use_cases.stream_transactions import StreamTransactions
from billing.use_cases.watch_payment_status import WatchPaymentStatus
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingUseCases:
    list_coin_packages: ListCoinPackages
    create_checkout: CreateCheckout
    get_payment_status: GetPaymentStatus
    cancel_checkout: CancelCheckout
    refund_payment: RefundPayment
    get_balance: GetBalance
    spend_coins: SpendCoins
    grant_coins: GrantCoins
    list_transactions: ListTransactions
    watch_payment_status: WatchPaymentStatus
    stream_transactions: StreamTransactions


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseLanes:
    """Where the synchronous use cases run (billing.adapters.bulkheads)."""

    reads: Offload
    writes: Offload


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, use_cases: BillingUseCases, lanes: DatabaseLanes) -> None:
        self._do = use_cases
        self._reads = lanes.reads
        self._writes = lanes.writes

    async def ListCoinPackages(
        self, request: pb.ListCoinPackagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListCoinPackagesResponse:
        packages = self._do.list_coin_packages()
        return pb.ListCoinPackagesResponse(packages=[codec.coin_package(p) for p in packages])

    async def CreateCheckoutSession(
        self, request: pb.CreateCheckoutSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateCheckoutSessionResponse:
        created = await self._do.create_checkout(
            CreateCheckoutCommand(
                user_id=request.user_id,
                package_id=request.package_id,
                success_url=request.success_url,
                cancel_url=request.cancel_url,
                request_id=request.request_id,
            )
        )
        return pb.CreateCheckoutSessionResponse(
            session_id=created.session_id,
            checkout_url=created.checkout_url,
            expire_time=codec.timestamp(created.expires_at),
        )

    async def GetPaymentStatus(
        self, request: pb.GetPaymentStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPaymentStatusResponse:
        view = await self._reads(
            partial(self._do.get_payment_status, request.user_id, request.session_id)
        )
        return _payment_status(view)

    async def CancelCheckoutSession(
        self, request: pb.CancelCheckoutSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelCheckoutSessionResponse:
        status = await self._do.cancel_checkout(request.user_id, request.session_id)
        return pb.CancelCheckoutSessionResponse(status=codec.payment_status(status))

    async def RefundPayment(
        self, request: pb.RefundPaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RefundPaymentResponse:
        result = await self._do.refund_payment(
            RefundCommand(
                user_id=request.user_id,
                session_id=request.session_id,
                reason=request.reason,
                request_id=request.request_id,
                caller=current_caller(),
            )
        )
        return pb.RefundPaymentResponse(
            status=codec.payment_status(result.status),
            coins_debited=result.coins_debited,
            new_balance=result.new_balance,
        )

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBalanceResponse:
        balance = await self._reads(partial(self._do.get_balance, request.user_id))
        return pb.GetBalanceResponse(user_id=request.user_id, balance=balance)

    async def SpendCoins(
        self, request: pb.SpendCoinsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SpendCoinsResponse:
        entry = await self._writes(partial(self._do.spend_coins, _coins_command(request)))
        return pb.SpendCoinsResponse(
            transaction=codec.transaction(entry), balance=entry.balance_after
        )

    async def GrantCoins(
        self, request: pb.GrantCoinsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GrantCoinsResponse:
        entry = await self._writes(partial(self._do.grant_coins, _coins_command(request)))
        return pb.GrantCoinsResponse(
            transaction=codec.transaction(entry), balance=entry.balance_after
        )

    async def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTransactionsResponse:
        page = await self._reads(partial(
            self._do.list_transactions, request.user_id, request.page_size, request.page_token
        ))
        return pb.ListTransactionsResponse(
            transactions=[codec.transaction(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )

    async def WatchPaymentStatus(  # an async generator (grpc.aio)
        self, request: pb.WatchPaymentStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GetPaymentStatusResponse]:
        async for view in self._do.watch_payment_status(request.user_id, request.session_id):
            yield _payment_status(view)

    async def StreamTransactions(  # an async generator (grpc.aio)
        self, request: pb.StreamTransactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.TransactionEvent]:
        items = self._do.stream_transactions(
            request.user_id, request.after_cursor, request.from_now)
        async for item in items:
            if item.entry is None:  # a checkpoint
                yield pb.TransactionEvent(cursor=item.cursor)
            else:
                yield pb.TransactionEvent(
                    transaction=codec.transaction(item.entry), cursor=item.cursor)


def _payment_status(view: PaymentStatusView) -> pb.GetPaymentStatusResponse:
    session = view.session
    return pb.GetPaymentStatusResponse(
        session_id=session.stripe_session_id,
        status=codec.payment_status(session.status),
        coins_added=session.coins_credited,
        new_balance=view.balance,
        amount=codec.money(session.amount),
        package_id=session.package_id,
        coins_refunded=session.coins_refunded,
    )


def _coins_command(request: pb.SpendCoinsRequest | pb.GrantCoinsRequest) -> CoinsCommand:
    return CoinsCommand(
        user_id=request.user_id,
        coins=request.coins,
        reason=request.reason,
        idempotency_key=request.idempotency_key,
        caller=current_caller(),
    )
