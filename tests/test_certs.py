"""hsm-coordinator certs: the cluster CA and its certificates, and a real
mutual-TLS handshake with them (grpc, loopback): a certificate of the CA
gets in and names its holder; no certificate, another CA's certificate or
an expired one does not."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator import certs
from coordinator.cluster import free_ports
from hsm.tls import identity_of


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", "certs", *args], capture_output=True,
                          text=True, timeout=60)


def test_init_issue_show_from_the_command_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    r = cli("init", "--dir", str(ca))
    assert r.returncode == 0, r.stderr
    assert "keep it off the cluster's hosts" in r.stdout
    r = cli("issue", "--dir", str(ca), "--name", "hsm-0", "--role", "replica", "--host", "127.0.0.1",
            "--host", "hsm-0.example.org")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca / "hsm-0.key").stat().st_mode) == 0o600
    r = cli("show", str(ca / "hsm-0.pem"), "--ca", str(ca))
    assert r.returncode == 0, r.stderr
    assert "hsm-0, role replica" in r.stdout and "hosts: hsm-0.example.org, 127.0.0.1" in r.stdout
    assert ": valid" in r.stdout and f"signed by the CA in {ca}" in r.stdout
    # never overwritten; bad names and roles are refused with one line, exit 2
    for args, words in ((["init", "--dir", str(ca)], "already exists"),
                        (["issue", "--dir", str(ca), "--name", "hsm-0", "--role", "replica"], "already exists"),
                        (["issue", "--dir", str(ca), "--name", "a\nb", "--role", "agent"], "U+000A"),
                        (["issue", "--dir", str(ca), "--name", "CN=x,OU=admin", "--role", "user"], "no ','"),
                        (["issue", "--dir", str(ca), "--name", "x", "--role", "root"], "invalid choice"),
                        (["issue", "--dir", str(tmp_path / "none"), "--name", "x", "--role", "user"], "no CA in")):
        r = cli(*args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_a_certificate_states_its_holder_role_and_hosts(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    pem, key = certs.issue(tmp_path, "mover1", "agent", days=30)
    who = identity_of(x509.load_pem_x509_certificate(pem.read_bytes()))
    assert (who.name, who.role, who.hosts) == ("mover1", "agent", ())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(pem.read_bytes()).verify_directly_issued_by(ca)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path / "ca")
    certs.issue(tmp_path / "ca", "r1", "replica", hosts=("127.0.0.1",))
    certs.issue(tmp_path / "ca", "alice", "operator")
    certs.issue(tmp_path / "ca", "old", "admin", days=1,
                not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    certs.init_ca(tmp_path / "other", name="someone else's CA")
    certs.issue(tmp_path / "other", "mallory", "admin")
    return tmp_path


@pytest.fixture
def tls_server(pki: Path) -> Iterator[tuple[str, list[dict[str, list[bytes]]]]]:
    """A gRPC server requiring client certificates of the CA; records the
    auth context of every call it serves."""
    seen: list[dict[str, list[bytes]]] = []

    class Recording(health.HealthServicer):  # type: ignore[misc]
        def Check(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            seen.append(context.auth_context())
            return super().Check(request, context)

    ca = pki / "ca"
    creds = grpc.ssl_server_credentials([((ca / "r1.key").read_bytes(), (ca / "r1.pem").read_bytes())],
                                        root_certificates=(ca / "ca.pem").read_bytes(), require_client_auth=True)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    h = Recording()
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    port = free_ports(1)
    assert server.add_secure_port(f"127.0.0.1:{port}", creds) == port
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(0)


def check(address: str, pki: Path, ca: str, name: str | None) -> health_pb2.HealthCheckResponse:
    key = (pki / ca / f"{name}.key").read_bytes() if name else None
    pem = (pki / ca / f"{name}.pem").read_bytes() if name else None
    creds = grpc.ssl_channel_credentials((pki / "ca" / "ca.pem").read_bytes(), key, pem)
    with grpc.secure_channel(address, creds) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_mutual_tls_lets_in_a_certificate_of_the_ca_and_names_its_holder(
        tls_server: tuple[str, list[dict[str, list[bytes]]]], pki: Path) -> None:
    address, seen = tls_server
    assert check(address, pki, "ca", "alice").status == health_pb2.HealthCheckResponse.SERVING
    [ctx] = seen
    assert ctx["x509_common_name"] == [b"alice"]
    assert b"OU=operator" in ctx["x509_subject"][0]


@pytest.mark.parametrize("ca, name", [("ca", None), ("other", "mallory"), ("ca", "old")],
                         ids=["no certificate", "another CA", "expired"])
def test_mutual_tls_refuses_a_client_without_a_valid_certificate_of_the_ca(
        tls_server: tuple[str, list[dict[str, list[bytes]]]], pki: Path, ca: str, name: str | None) -> None:
    address, seen = tls_server
    with pytest.raises(grpc.RpcError) as err:
        check(address, pki, ca, name)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not seen  # no call reached the service


def test_a_name_longer_than_a_common_name_may_be_is_a_clear_error(tmp_path: Path) -> None:
    """X.509 allows 64 characters in a common name: 65 used to end in a raw
    ValueError from the x509 library (a traceback from certs issue)."""
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "a" * 64, "agent")
    with pytest.raises(certs.CertError, match="64"):
        certs.issue(tmp_path, "b" * 65, "agent")
