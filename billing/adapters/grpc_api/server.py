"""Build the grpcio server: BillingService, health, reflection, interceptors, one port.

A thread-pool server: the use cases are synchronous with blocking database I/O, so each call
runs on a worker thread, and the pool bounds how many run at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from billing.adapters.grpc_api.interceptors import SERVICE
from billing.v1 import billing_pb2_grpc

# Every request of the contract is a few KiB at most (two 2 KiB URLs are the largest fields).
MAX_REQUEST_BYTES = 64 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True)
class GrpcEndpoint:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    workers: ThreadPoolExecutor

    def stop(self, grace: float) -> None:
        """Refuse new calls now, give running ones `grace` seconds, then release the workers
        (blocks until done)."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.workers.shutdown(wait=False, cancel_futures=True)

    def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in (health.OVERALL_HEALTH, SERVICE):
            self.health.set(name, status)


def create_grpc_server(
    servicer: billing_pb2_grpc.BillingServiceServicer,
    interceptors: Sequence[grpc.ServerInterceptor],
    credentials: grpc.ServerCredentials | None,
    host: str,
    port: int,
    *,
    max_workers: int = 16,
) -> GrpcEndpoint:
    """A server bound to host:port (not started). Raises RuntimeError if the port is taken."""
    workers = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    server = grpc.server(
        workers,
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ],
    )
    billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
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
    endpoint = GrpcEndpoint(server, health_servicer, bound, workers)
    endpoint.set_serving(True)
    return endpoint
