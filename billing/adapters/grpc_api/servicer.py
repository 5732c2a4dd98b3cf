"""The BillingService servicer: decode the request, call one use case, encode the answer.

Errors are not handled here: domain errors propagate to the observing interceptor, which maps
them once (errors.py). The caller's name comes from the auth interceptor (`current_caller`).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from billing.adapters.grpc_api import codec
from billing.adapters.grpc_api.interceptors import current_caller
from billing.use_cases.cancel_checkout import CancelCheckout
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.get_payment_status import GetPaymentStatus
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.list_coin_packages import ListCoinPackages
from billing.use_cases.list_transactions import ListTransactions
from billing.use_cases.refund_payment import RefundCommand, RefundPayment
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
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


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, use_cases: BillingUseCases) -> None:
        self._do = use_cases

    def ListCoinPackages(
        self, request: pb.ListCoinPackagesRequest, context: grpc.ServicerContext
    ) -> pb.ListCoinPackagesResponse:
        packages = self._do.list_coin_packages()
        return pb.ListCoinPackagesResponse(packages=[codec.coin_package(p) for p in packages])

    def CreateCheckoutSession(
        self, request: pb.CreateCheckoutSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateCheckoutSessionResponse:
        created = self._do.create_checkout(
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

    def GetPaymentStatus(
        self, request: pb.GetPaymentStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetPaymentStatusResponse:
        view = self._do.get_payment_status(request.user_id, request.session_id)
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

    def CancelCheckoutSession(
        self, request: pb.CancelCheckoutSessionRequest, context: grpc.ServicerContext
    ) -> pb.CancelCheckoutSessionResponse:
        status = self._do.cancel_checkout(request.user_id, request.session_id)
        return pb.CancelCheckoutSessionResponse(status=codec.payment_status(status))

    def RefundPayment(
        self, request: pb.RefundPaymentRequest, context: grpc.ServicerContext
    ) -> pb.RefundPaymentResponse:
        result = self._do.refund_payment(
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

    def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.ServicerContext
    ) -> pb.GetBalanceResponse:
        balance = self._do.get_balance(request.user_id)
        return pb.GetBalanceResponse(user_id=request.user_id, balance=balance)

    def SpendCoins(
        self, request: pb.SpendCoinsRequest, context: grpc.ServicerContext
    ) -> pb.SpendCoinsResponse:
        entry = self._do.spend_coins(_coins_command(request))
        return pb.SpendCoinsResponse(
            transaction=codec.transaction(entry), balance=entry.balance_after
        )

    def GrantCoins(
        self, request: pb.GrantCoinsRequest, context: grpc.ServicerContext
    ) -> pb.GrantCoinsResponse:
        entry = self._do.grant_coins(_coins_command(request))
        return pb.GrantCoinsResponse(
            transaction=codec.transaction(entry), balance=entry.balance_after
        )

    def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> pb.ListTransactionsResponse:
        page = self._do.list_transactions(request.user_id, request.page_size, request.page_token)
        return pb.ListTransactionsResponse(
            transactions=[codec.transaction(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )


def _coins_command(request: pb.SpendCoinsRequest | pb.GrantCoinsRequest) -> CoinsCommand:
    return CoinsCommand(
        user_id=request.user_id,
        coins=request.coins,
        reason=request.reason,
        idempotency_key=request.idempotency_key,
        caller=current_caller(),
    )
