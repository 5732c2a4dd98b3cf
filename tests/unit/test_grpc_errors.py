"""The one mapping from domain errors to gRPC statuses, checked against DESIGN.md's table."""

from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from billing.adapters.grpc_api import codec
from billing.adapters.grpc_api.errors import (
    CODES,
    DOMAIN,
    CallRefused,
    internal_status,
    status_for,
)
from billing.adapters.grpc_api.interceptors import Authenticator, Caller
from billing.domain import errors
from billing.domain.errors import ErrorKind

C = grpc.StatusCode
# DESIGN.md's error table: reason -> code, for every error the domain raises.
TABLE = [
    (errors.InvalidField("user_id", "is required"), "INVALID_FIELD", C.INVALID_ARGUMENT),
    (errors.UnknownPackage("no coin package 'x'"), "UNKNOWN_PACKAGE", C.INVALID_ARGUMENT),
    (errors.InvalidPageToken("malformed"), "INVALID_PAGE_TOKEN", C.INVALID_ARGUMENT),
    (errors.NotSessionOwner("another user's"), "NOT_SESSION_OWNER", C.PERMISSION_DENIED),
    (errors.SessionNotFound("no session"), "SESSION_NOT_FOUND", C.NOT_FOUND),
    (errors.IdempotencyKeyReused("reused"), "IDEMPOTENCY_KEY_REUSED", C.ALREADY_EXISTS),
    (errors.InsufficientCoins("short"), "INSUFFICIENT_COINS", C.FAILED_PRECONDITION),
    (errors.AlreadyPaid("paid"), "ALREADY_PAID", C.FAILED_PRECONDITION),
    (errors.NotRefundable("unpaid"), "NOT_REFUNDABLE", C.FAILED_PRECONDITION),
    (errors.CoinsAlreadySpent("spent"), "COINS_ALREADY_SPENT", C.FAILED_PRECONDITION),
    (errors.GatewayUnavailable("down"), "GATEWAY_UNAVAILABLE", C.UNAVAILABLE),
    (errors.GatewayRejected("refused"), "GATEWAY_REJECTED", C.FAILED_PRECONDITION),
    (errors.StoreUnavailable("down"), "STORE_UNAVAILABLE", C.UNAVAILABLE),
]


def _details(status: grpc.Status) -> tuple[status_pb2.Status, list[error_details_pb2.ErrorInfo]]:
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    infos = []
    for detail in rich.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        infos.append(info)
    return rich, infos


def test_every_error_kind_has_a_status_code():
    assert set(CODES) == set(ErrorKind)


@pytest.mark.parametrize(("error", "reason", "code"), TABLE, ids=[r for _, r, _ in TABLE])
def test_each_domain_error_maps_to_its_code_with_exactly_one_error_info(error, reason, code):
    status = status_for(error)
    assert status.code is code
    assert status.details == error.message
    rich, infos = _details(status)
    assert rich.code == code.value[0] and rich.message == error.message
    assert len(infos) == 1
    assert (infos[0].reason, infos[0].domain) == (reason, DOMAIN)
    assert dict(infos[0].metadata) == error.metadata


def test_invalid_field_names_the_field_in_the_metadata():
    _, (info,) = _details(status_for(errors.InvalidField("page_size", "must be ≤ 500")))
    assert dict(info.metadata) == {"field": "page_size"}


def test_an_unexpected_error_is_internal_and_says_nothing_more():
    status = internal_status()
    assert status.code is C.INTERNAL
    assert status.details == "internal error"
    _, (info,) = _details(status)
    assert info.reason == "INTERNAL"


# -- authentication ----------------------------------------------------------------------------
AUTH = Authenticator(
    [
        Caller.of("admin", "admin-secret-1"),
        Caller.of("shop", "shop-secret-1", frozenset({"GetBalance"})),
    ]
)


def _refusal(rpc: str, metadata) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(CallRefused) as refused:
        AUTH.authenticate(rpc, metadata)
    _, (info,) = _details(refused.value.status)
    return refused.value.status.code, info.reason


def test_a_valid_token_names_its_caller():
    assert AUTH.authenticate("GrantCoins", [("authorization", "Bearer admin-secret-1")]) == "admin"
    assert AUTH.authenticate("GetBalance", [("authorization", "bearer shop-secret-1")]) == "shop"


@pytest.mark.parametrize("metadata", [[], [("authorization", "")], [("x-other", "1")]])
def test_no_token_is_missing_token(metadata):
    assert _refusal("GetBalance", metadata) == (C.UNAUTHENTICATED, "MISSING_TOKEN")


@pytest.mark.parametrize(
    "header", ["Bearer wrong", "Basic admin-secret-1", "admin-secret-1", "Bearer ", "Bearer admin"]
)
def test_a_wrong_token_is_invalid_token(header):
    assert _refusal("GetBalance", [("authorization", header)]) == (
        C.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )


def test_a_token_outside_its_rpcs_is_rpc_not_allowed():
    assert _refusal("GrantCoins", [("authorization", "Bearer shop-secret-1")]) == (
        C.PERMISSION_DENIED,
        "RPC_NOT_ALLOWED",
    )


def test_refusals_never_echo_the_token():
    with pytest.raises(CallRefused) as refused:
        AUTH.authenticate("GrantCoins", [("authorization", "Bearer shop-secret-1")])
    assert "shop-secret-1" not in str(refused.value) + refused.value.status.details


# -- the codec's timestamps ---------------------------------------------------------------------
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))])))
def test_a_timestamp_is_exactly_what_protobuf_makes_of_the_datetime(moment):
    expected = Timestamp()
    expected.FromDatetime(moment)
    assert codec.timestamp(moment) == expected
