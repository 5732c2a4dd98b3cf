import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATUS_UNSPECIFIED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PENDING: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_COMPLETED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_FAILED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_EXPIRED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CANCELLED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_REFUNDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_DISPUTED: _ClassVar[PaymentStatus]

class TransactionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_TYPE_UNSPECIFIED: _ClassVar[TransactionType]
    TRANSACTION_TYPE_PURCHASE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_USAGE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_GRANT: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REFUND: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REFUND_REVERSAL: _ClassVar[TransactionType]
    TRANSACTION_TYPE_DISPUTE: _ClassVar[TransactionType]
    TRANSACTION_TYPE_DISPUTE_REVERSAL: _ClassVar[TransactionType]
PAYMENT_STATUS_UNSPECIFIED: PaymentStatus
PAYMENT_STATUS_PENDING: PaymentStatus
PAYMENT_STATUS_COMPLETED: PaymentStatus
PAYMENT_STATUS_FAILED: PaymentStatus
PAYMENT_STATUS_EXPIRED: PaymentStatus
PAYMENT_STATUS_CANCELLED: PaymentStatus
PAYMENT_STATUS_REFUNDED: PaymentStatus
PAYMENT_STATUS_DISPUTED: PaymentStatus
TRANSACTION_TYPE_UNSPECIFIED: TransactionType
TRANSACTION_TYPE_PURCHASE: TransactionType
TRANSACTION_TYPE_USAGE: TransactionType
TRANSACTION_TYPE_GRANT: TransactionType
TRANSACTION_TYPE_REFUND: TransactionType
TRANSACTION_TYPE_REFUND_REVERSAL: TransactionType
TRANSACTION_TYPE_DISPUTE: TransactionType
TRANSACTION_TYPE_DISPUTE_REVERSAL: TransactionType

class Money(_message.Message):
    __slots__ = ("currency", "amount_minor")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    currency: str
    amount_minor: int
    def __init__(self, currency: _Optional[str] = ..., amount_minor: _Optional[int] = ...) -> None: ...

class CoinPackage(_message.Message):
    __slots__ = ("id", "coins", "bonus", "price", "display_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    COINS_FIELD_NUMBER: _ClassVar[int]
    BONUS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    coins: int
    bonus: int
    price: Money
    display_name: str
    def __init__(self, id: _Optional[str] = ..., coins: _Optional[int] = ..., bonus: _Optional[int] = ..., price: _Optional[_Union[Money, _Mapping]] = ..., display_name: _Optional[str] = ...) -> None: ...

class ListCoinPackagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCoinPackagesResponse(_message.Message):
    __slots__ = ("packages",)
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    packages: _containers.RepeatedCompositeFieldContainer[CoinPackage]
    def __init__(self, packages: _Optional[_Iterable[_Union[CoinPackage, _Mapping]]] = ...) -> None: ...

class CreateCheckoutSessionRequest(_message.Message):
    __slots__ = ("user_id", "package_id", "success_url", "cancel_url", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_URL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_URL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    package_id: str
    success_url: str
    cancel_url: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., package_id: _Optional[str] = ..., success_url: _Optional[str] = ..., cancel_url: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateCheckoutSessionResponse(_message.Message):
    __slots__ = ("session_id", "checkout_url", "expire_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKOUT_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    checkout_url: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., checkout_url: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPaymentStatusRequest(_message.Message):
    __slots__ = ("user_id", "session_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class GetPaymentStatusResponse(_message.Message):
    __slots__ = ("session_id", "status", "coins_added", "new_balance", "amount", "package_id", "coins_refunded")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COINS_ADDED_FIELD_NUMBER: _ClassVar[int]
    NEW_BALANCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    COINS_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    status: PaymentStatus
    coins_added: int
    new_balance: int
    amount: Money
    package_id: str
    coins_refunded: int
    def __init__(self, session_id: _Optional[str] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., coins_added: _Optional[int] = ..., new_balance: _Optional[int] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., package_id: _Optional[str] = ..., coins_refunded: _Optional[int] = ...) -> None: ...

class CancelCheckoutSessionRequest(_message.Message):
    __slots__ = ("user_id", "session_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class CancelCheckoutSessionResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: PaymentStatus
    def __init__(self, status: _Optional[_Union[PaymentStatus, str]] = ...) -> None: ...

class RefundPaymentRequest(_message.Message):
    __slots__ = ("user_id", "session_id", "reason", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    reason: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RefundPaymentResponse(_message.Message):
    __slots__ = ("status", "coins_debited", "new_balance")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COINS_DEBITED_FIELD_NUMBER: _ClassVar[int]
    NEW_BALANCE_FIELD_NUMBER: _ClassVar[int]
    status: PaymentStatus
    coins_debited: int
    new_balance: int
    def __init__(self, status: _Optional[_Union[PaymentStatus, str]] = ..., coins_debited: _Optional[int] = ..., new_balance: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("user_id", "balance")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    balance: int
    def __init__(self, user_id: _Optional[str] = ..., balance: _Optional[int] = ...) -> None: ...

class SpendCoinsRequest(_message.Message):
    __slots__ = ("user_id", "coins", "reason", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COINS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    coins: int
    reason: str
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., coins: _Optional[int] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SpendCoinsResponse(_message.Message):
    __slots__ = ("transaction", "balance")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    balance: int
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ..., balance: _Optional[int] = ...) -> None: ...

class GrantCoinsRequest(_message.Message):
    __slots__ = ("user_id", "coins", "reason", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COINS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    coins: int
    reason: str
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., coins: _Optional[int] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GrantCoinsResponse(_message.Message):
    __slots__ = ("transaction", "balance")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    balance: int
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ..., balance: _Optional[int] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("id", "user_id", "type", "coins", "balance_after", "session_id", "description", "create_time", "caller")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    COINS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    type: TransactionType
    coins: int
    balance_after: int
    session_id: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    caller: str
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., type: _Optional[_Union[TransactionType, str]] = ..., coins: _Optional[int] = ..., balance_after: _Optional[int] = ..., session_id: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ...) -> None: ...

class WatchPaymentStatusRequest(_message.Message):
    __slots__ = ("user_id", "session_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class StreamTransactionsRequest(_message.Message):
    __slots__ = ("user_id", "after_cursor", "from_now")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_NOW_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    after_cursor: str
    from_now: bool
    def __init__(self, user_id: _Optional[str] = ..., after_cursor: _Optional[str] = ..., from_now: _Optional[bool] = ...) -> None: ...

class TransactionEvent(_message.Message):
    __slots__ = ("transaction", "cursor")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    cursor: str
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ..., cursor: _Optional[str] = ...) -> None: ...
