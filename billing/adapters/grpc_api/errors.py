"""Domain errors to gRPC statuses: the one place this mapping is made.

Every non-OK status carries a clear message and exactly one `google.rpc.ErrorInfo` (domain
`billing.v1`) in the rich status details, so callers branch on `reason`, never on the text.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from billing.domain.errors import BillingError, ErrorKind

DOMAIN = "billing.v1"
INTERNAL_MESSAGE = "internal error"

CODES: Mapping[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class CallRefused(Exception):
    """Raised at the edge (auth) with the status the call ends with."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, caller: str = ""
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.caller = caller  # who was refused, when the token was valid (for the log line)
        self.status = rich_status(code, reason, message)


def rich_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    numeric: int = code.value[0]
    return rpc_status.to_status(status_pb2.Status(code=numeric, message=message, details=[detail]))


def status_for(error: BillingError) -> grpc.Status:
    return rich_status(CODES[error.kind], error.reason, error.message, error.metadata)


def internal_status() -> grpc.Status:
    """For a bug: no trace, no exception text (it may hold data the caller must not see)."""
    return rich_status(grpc.StatusCode.INTERNAL, "INTERNAL", INTERNAL_MESSAGE)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call (client side), or None when it carries none."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None

