"""The committed gRPC stubs in billing/v1 are exactly what the pinned grpcio-tools generates."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "proto/billing/v1/billing.proto"
GENERATED = ["billing_pb2.py", "billing_pb2.pyi", "billing_pb2_grpc.py"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    # The same command as `make proto`, writing into a temporary directory instead.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ],
        cwd=ROOT,
        check=True,
    )
    return out / "billing" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_committed_stub_matches_the_proto(regenerated: Path, name: str) -> None:
    committed = ROOT / "billing" / "v1" / name
    assert committed.exists(), f"billing/v1/{name} is missing: run make proto"
    assert committed.read_bytes() == (regenerated / name).read_bytes(), (
        f"billing/v1/{name} is out of date with {PROTO}: run make proto"
    )


def test_grpc_stubs_import_the_messages_as_billing_v1() -> None:
    from billing.v1 import billing_pb2, billing_pb2_grpc

    assert billing_pb2_grpc.billing_dot_v1_dot_billing__pb2 is billing_pb2
    assert billing_pb2.DESCRIPTOR.package == "billing.v1"
