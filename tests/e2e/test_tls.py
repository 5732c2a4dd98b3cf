"""TLS and mutual TLS on the gRPC port, with a CA and certificates made by the test (openssl)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from billing.client import BillingClient, BillingClientError, ClientTls
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import ControllableGateway, RunningService, service_env, start_service

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
             cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
          "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    _leaf(d, "client", "ca", client_ext)
    _leaf(d, "rogue", "rogue-ca", client_ext)
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key", d / "rogue.crt", d / "rogue.key")


def _serve(tmp_path: Path, pki: Pki, *, mutual: bool) -> RunningService:
    env = service_env(tmp_path, STRIPE_API_BASE="http://127.0.0.1:9",
                      BILLING_TLS_CERT=str(pki.server_cert), BILLING_TLS_KEY=str(pki.server_key))
    if mutual:
        env["BILLING_TLS_CLIENT_CA"] = str(pki.ca)
    return start_service(env, gateway=ControllableGateway())


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningService]:
    running = _serve(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def mtls_service(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningService]:
    running = _serve(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield running
    assert running.stop() == 0


def _target(service: RunningService) -> str:
    return f"localhost:{service.settings.grpc_port}"  # the name in the server's certificate


def _balance(service: RunningService, credentials: grpc.ChannelCredentials | None) -> int:
    with service.stub(credentials, target=_target(service)) as stub:
        return int(stub.GetBalance(pb.GetBalanceRequest(user_id="tls-user"), timeout=5).balance)


def _refused(service: RunningService, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        _balance(service, credentials)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_serves_a_client_that_trusts_the_ca(tls_service, pki):
    assert _balance(tls_service, grpc.ssl_channel_credentials(pki.ca.read_bytes())) == 0


def test_tls_refuses_plaintext_and_clients_that_do_not_trust_the_server(tls_service, pki):
    _refused(tls_service, None)
    _refused(tls_service, grpc.ssl_channel_credentials(
        (pki.ca.parent / "rogue-ca.crt").read_bytes()))


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(mtls_service, pki):
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes())
    assert _balance(mtls_service, credentials) == 0


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_service, pki):
    _refused(mtls_service, grpc.ssl_channel_credentials(pki.ca.read_bytes()))


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls_service, pki):
    _refused(mtls_service, grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.rogue_key.read_bytes(), pki.rogue_cert.read_bytes()))


def test_the_client_speaks_mutual_tls(mtls_service, pki):
    tls = ClientTls(root_ca=pki.ca.read_bytes(), cert_chain=pki.client_cert.read_bytes(),
                    private_key=pki.client_key.read_bytes())
    with BillingClient(_target(mtls_service), tls=tls) as client:
        assert client.grant_coins("tls-client", 7, "welcome").balance == 7
    with BillingClient(_target(mtls_service), tls=ClientTls(root_ca=pki.ca.read_bytes()),
                       timeout=3) as client, pytest.raises(BillingClientError) as failure:
        client.get_balance("tls-client")
    assert failure.value.code is grpc.StatusCode.UNAVAILABLE
