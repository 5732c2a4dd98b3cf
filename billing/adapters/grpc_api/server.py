"""Build the grpc.aio server: BillingService, health, reflection, interceptors, one port.

An asyncio server: a call waiting on Stripe, or a stream waiting for news, holds no thread. The
database work of a call runs on a bulkhead (billing.adapters.bulkheads), chosen by the servicer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from billing.adapters.grpc_api.interceptors import SERVICE
from billing.v1 import billing_pb2_grpc

# The asyncio health servicer the package exports as `health.aio` (grpc-stubs do not know it).
AioHealthServicer = health.aio.HealthServicer  # type: ignore[attr-defined]

# Every request of the contract is a few KiB at most (two 2 KiB URLs are the largest fields).
MAX_REQUEST_BYTES = 64 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True)
class GrpcEndpoint:
    server: grpc.aio.Server
    health: Any  # AioHealthServicer
    port: int

    async def stop(self, grace: float) -> None:
        """Refuse new calls now, give running ones `grace` seconds, then cancel them."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in (health.OVERALL_HEALTH, SERVICE):
            await self.health.set(name, status)


async def create_grpc_server(
    servicer: billing_pb2_grpc.BillingServiceServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    credentials: grpc.ServerCredentials | None,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
) -> GrpcEndpoint:
    """A server bound to host:port (not started). Raises RuntimeError if the port is taken.

    `reuse_port` is for the workers of one `billing serve` only: a second service on a taken
    port must fail, not share it.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server)
    health_servicer = AioHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {error}") from None
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}: address in use?")
    endpoint = GrpcEndpoint(server, health_servicer, bound)
    await endpoint.set_serving(True)
    return endpoint
