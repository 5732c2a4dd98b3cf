"""A typed client for internal callers of BillingService.

    with BillingClient("billing:50051", token="…", tls=ClientTls(root_ca=ca_pem)) as billing:
        checkout = billing.create_checkout_session("user-1", "coins_500",
                                                   "https://game/ok", "https://game/cancel")
        balance = billing.get_balance("user-1")

    for info in billing.watch_payment_status("user-1", checkout.session_id):
        ...  # PENDING, then COMPLETED with info.coins_added; the iterator then ends
    for event in billing.stream_transactions("user-1", after_cursor=saved_cursor):
        if event.transaction is not None:
            apply(event.transaction)
        saved_cursor = event.cursor  # after processing: a resume sends nothing twice

Every unary call has a deadline (`timeout`, 5 s by default). Calls that fail with UNAVAILABLE are
retried by gRPC itself (a few attempts, exponential backoff): every RPC of the contract is safe to
repeat — reads change nothing, cancel is naturally idempotent, and the writes carry a request id
or idempotency key, which this client generates once per call when the caller passes none, so a
retry replays the first answer instead of charging twice. Errors raise `BillingClientError`
carrying the status code and the ErrorInfo `reason` (e.g. "INSUFFICIENT_COINS").
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import grpc

from billing.adapters.grpc_api.errors import error_info
from billing.domain.catalog import CoinPackage
from billing.domain.ledger import TransactionType
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc

DEFAULT_TIMEOUT_S = 5.0
_SERVICE = "billing.v1.BillingService"
_RETRY_POLICY = {
    "methodConfig": [{
        "name": [{"service": _SERVICE}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
}


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckoutSession:
    session_id: str
    checkout_url: str
    expires_at: datetime
    request_id: str  # the one sent: reuse it to retry the same purchase


@dataclass(frozen=True, slots=True)
class PaymentInfo:
    session_id: str
    status: PaymentStatus
    coins_added: int
    new_balance: int
    amount: Money
    package_id: str
    coins_refunded: int


@dataclass(frozen=True, slots=True)
class RefundInfo:
    status: PaymentStatus
    coins_debited: int
    new_balance: int


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    user_id: str
    type: TransactionType
    coins: int
    balance_after: int
    session_id: str
    description: str
    created_at: datetime
    caller: str


@dataclass(frozen=True, slots=True)
class CoinsResult:
    transaction: Transaction
    balance: int


@dataclass(frozen=True, slots=True)
class TransactionsPage:
    transactions: list[Transaction]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One message of the ledger feed: a row, or (transaction None) a checkpoint. Either way
    `cursor` is where to resume after it."""

    cursor: str
    transaction: Transaction | None


# -- errors --------------------------------------------------------------------------------------
class BillingClientError(Exception):
    """A failed call: the gRPC code, the ErrorInfo reason ("" if none) and its metadata."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]
    ) -> None:
        super().__init__(f"{code.name} {reason or '-'}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> BillingClientError:
        info = error_info(error)
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        message = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        if info is None:
            return cls(code, message, "", {})
        return cls(code, message, info.reason, dict(info.metadata))


# -- the client ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """TLS to the server: its CA (None: the system's roots), and a client certificate for
    mutual TLS."""

    root_ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None  # override the name checked in the server's certificate

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_ca, self.private_key, self.cert_chain)


@dataclass(slots=True)
class BillingClient:
    target: str
    token: str | None = None
    tls: ClientTls | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    _channel: grpc.Channel = field(init=False, repr=False)
    _stub: Any = field(init=False, repr=False)
    _metadata: tuple[tuple[str, str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(_RETRY_POLICY)),
        ]
        if self.tls is not None:
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
            self._channel = grpc.secure_channel(self.target, self.tls.credentials(), options)
        else:
            self._channel = grpc.insecure_channel(self.target, options)
        self._stub = billing_pb2_grpc.BillingServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def __repr__(self) -> str:  # never the token
        return f"BillingClient({self.target!r}, tls={self.tls is not None})"

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise BillingClientError.from_rpc_error(error) from None

    # -- RPCs ------------------------------------------------------------------------------------
    def list_coin_packages(self, *, timeout: float | None = None) -> list[CoinPackage]:
        response = self._call("ListCoinPackages", pb.ListCoinPackagesRequest(), timeout)
        return [
            CoinPackage(p.id, p.coins, p.bonus, _money(p.price), p.display_name)
            for p in response.packages
        ]

    def create_checkout_session(
        self, user_id: str, package_id: str, success_url: str, cancel_url: str,
        *, request_id: str | None = None, timeout: float | None = None,
    ) -> CheckoutSession:
        request_id = request_id or _new_key()
        response = self._call("CreateCheckoutSession", pb.CreateCheckoutSessionRequest(
            user_id=user_id, package_id=package_id, success_url=success_url,
            cancel_url=cancel_url, request_id=request_id,
        ), timeout)
        return CheckoutSession(
            response.session_id, response.checkout_url, response.expire_time.ToDatetime(
                tzinfo=UTC), request_id,
        )

    def get_payment_status(
        self, user_id: str, session_id: str, *, timeout: float | None = None
    ) -> PaymentInfo:
        r = self._call("GetPaymentStatus", pb.GetPaymentStatusRequest(
            user_id=user_id, session_id=session_id), timeout)
        return PaymentInfo(r.session_id, _status(r.status), r.coins_added, r.new_balance,
                           _money(r.amount), r.package_id, r.coins_refunded)

    def cancel_checkout_session(
        self, user_id: str, session_id: str, *, timeout: float | None = None
    ) -> PaymentStatus:
        r = self._call("CancelCheckoutSession", pb.CancelCheckoutSessionRequest(
            user_id=user_id, session_id=session_id), timeout)
        return _status(r.status)

    def refund_payment(
        self, user_id: str, session_id: str, reason: str = "",
        *, request_id: str | None = None, timeout: float | None = None,
    ) -> RefundInfo:
        r = self._call("RefundPayment", pb.RefundPaymentRequest(
            user_id=user_id, session_id=session_id, reason=reason,
            request_id=request_id or _new_key()), timeout)
        return RefundInfo(_status(r.status), r.coins_debited, r.new_balance)

    def get_balance(self, user_id: str, *, timeout: float | None = None) -> int:
        r = self._call("GetBalance", pb.GetBalanceRequest(user_id=user_id), timeout)
        balance: int = r.balance
        return balance

    def spend_coins(
        self, user_id: str, coins: int, reason: str = "",
        *, idempotency_key: str | None = None, timeout: float | None = None,
    ) -> CoinsResult:
        r = self._call("SpendCoins", pb.SpendCoinsRequest(
            user_id=user_id, coins=coins, reason=reason,
            idempotency_key=idempotency_key or _new_key()), timeout)
        return CoinsResult(_transaction(r.transaction), r.balance)

    def grant_coins(
        self, user_id: str, coins: int, reason: str = "",
        *, idempotency_key: str | None = None, timeout: float | None = None,
    ) -> CoinsResult:
        r = self._call("GrantCoins", pb.GrantCoinsRequest(
            user_id=user_id, coins=coins, reason=reason,
            idempotency_key=idempotency_key or _new_key()), timeout)
        return CoinsResult(_transaction(r.transaction), r.balance)

    def list_transactions(
        self, user_id: str, page_size: int = 0, page_token: str = "",
        *, timeout: float | None = None,
    ) -> TransactionsPage:
        r = self._call("ListTransactions", pb.ListTransactionsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token), timeout)
        return TransactionsPage([_transaction(t) for t in r.transactions], r.next_page_token)

    def watch_payment_status(
        self, user_id: str, session_id: str, *, timeout: float | None = None
    ) -> Iterator[PaymentInfo]:
        """The session's status now, then each change, ending once it settles (COMPLETED,
        FAILED, EXPIRED, CANCELLED; REFUNDED and DISPUTED are sent once). `timeout` bounds the
        whole watch (None: the server ends it after BILLING_MAX_WATCH_S)."""
        call = self._stub.WatchPaymentStatus(pb.WatchPaymentStatusRequest(
            user_id=user_id, session_id=session_id), timeout=timeout, metadata=self._metadata)
        try:
            for r in call:
                yield PaymentInfo(r.session_id, _status(r.status), r.coins_added, r.new_balance,
                                  _money(r.amount), r.package_id, r.coins_refunded)
        except grpc.RpcError as error:
            raise BillingClientError.from_rpc_error(error) from None
        finally:
            call.cancel()

    def stream_transactions(
        self, user_id: str = "", *, after_cursor: str = "", from_now: bool = False,
        resume: bool = True, max_backoff_s: float = 5.0,
    ) -> Iterator[FeedEvent]:
        """Ledger rows in feed order (one user's, or with no user_id everyone's, which needs the
        StreamAllTransactions scope), then live ones, forever; checkpoints included.

        The iterator keeps the cursor of the last event it handed out and, when `resume` is on,
        reconnects from it by itself after a dropped connection, SHUTTING_DOWN, SLOW_CONSUMER
        or OVERLOADED (with jittered backoff): a caller that processes each event before asking
        for the next sees every row exactly once. Other errors raise BillingClientError."""
        cursor, failures = after_cursor, 0
        while True:
            call = self._stub.StreamTransactions(pb.StreamTransactionsRequest(
                user_id=user_id, after_cursor=cursor, from_now=from_now and not cursor),
                metadata=self._metadata)
            try:
                for message in call:
                    failures = 0
                    cursor = message.cursor
                    yield FeedEvent(message.cursor, _transaction(message.transaction)
                                    if message.HasField("transaction") else None)
            except grpc.RpcError as error:
                failure = BillingClientError.from_rpc_error(error)
                if not (resume and _resumable(failure)):
                    raise failure from None
            finally:
                call.cancel()
            failures += 1
            time.sleep(random.uniform(0.5, 1.0) * min(max_backoff_s, 0.05 * 2**failures))

    def iter_transactions(self, user_id: str, page_size: int = 0) -> Iterator[Transaction]:
        """Every transaction of the user, newest first, page by page."""
        token = ""
        while True:
            page = self.list_transactions(user_id, page_size, token)
            yield from page.transactions
            if not page.next_page_token:
                return
            token = page.next_page_token


def _resumable(failure: BillingClientError) -> bool:
    """Where a feed consumer picks up from its cursor: the connection or the replica went away,
    or the server shed or cut off the stream."""
    if failure.code is grpc.StatusCode.UNAVAILABLE:
        return True
    return failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED and failure.reason in (
        "SLOW_CONSUMER", "OVERLOADED")


# -- decoding ------------------------------------------------------------------------------------
def _new_key() -> str:
    return uuid.uuid4().hex


def _money(value: pb.Money) -> Money:
    return Money(value.currency, value.amount_minor)


def _status(value: int) -> PaymentStatus:
    return PaymentStatus(pb.PaymentStatus.Name(value).removeprefix("PAYMENT_STATUS_"))


def _transaction(t: pb.Transaction) -> Transaction:
    return Transaction(
        id=t.id,
        user_id=t.user_id,
        type=TransactionType(pb.TransactionType.Name(t.type).removeprefix("TRANSACTION_TYPE_")),
        coins=t.coins,
        balance_after=t.balance_after,
        session_id=t.session_id,
        description=t.description,
        created_at=t.create_time.ToDatetime(tzinfo=UTC),
        caller=t.caller,
    )
