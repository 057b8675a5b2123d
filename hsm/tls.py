"""Mutual TLS for every gRPC connection: the files a party presents, the
credentials gRPC takes, and who the peer of a call is.

A party (replica, agent, client, bridge) has three PEM files, made by
``hsm-coordinator certs``: the cluster CA's certificate (``ca``), its own
certificate (``cert``) and its private key (``key``). Replicas require a
client certificate signed by the CA on every connection; clients check the
replica's certificate against the CA and the address they dialled.

The peer's identity is its certificate's common name, its role the
certificate's organizational unit (``coordinator.certs``). They are read
from the call's auth context (the peer certificate gRPC verified), parsed
once per certificate.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

#: environment variables the command-line tools read (flags override them)
ENV_CA, ENV_CERT, ENV_KEY = "HSM_TLS_CA", "HSM_TLS_CERT", "HSM_TLS_KEY"


class TlsError(ValueError):
    """TLS files missing or unreadable (one line for the admin)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of a party's CA certificate, certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, p in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            try:
                out.append(p.read_bytes())
            except OSError as exc:
                raise TlsError(f"tls {what}: cannot read {p}: {exc.strerror or exc}") from None
            if b"-----BEGIN" not in out[-1]:
                raise TlsError(f"tls {what}: {p} is not a PEM file")
        return out[0], out[1], out[2]

    @classmethod
    def from_args(cls, ca: str | None, cert: str | None, key: str | None,
                  env: Mapping[str, str] = os.environ) -> TlsFiles | None:
        """From flags, else the HSM_TLS_* variables; None when none is given
        (the caller decides whether plain text is allowed); TlsError when
        only some are."""
        ca = ca or env.get(ENV_CA) or None
        cert = cert or env.get(ENV_CERT) or None
        key = key or env.get(ENV_KEY) or None
        given = [x for x in (ca, cert, key) if x]
        if not given:
            return None
        if len(given) < 3:
            missing = [n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if not v]
            raise TlsError(f"TLS needs a CA certificate, a certificate and a key; missing: {', '.join(missing)} "
                           f"(flags --tls-ca/--tls-cert/--tls-key or {ENV_CA}/{ENV_CERT}/{ENV_KEY})")
        return cls(Path(ca), Path(cert), Path(key))  # type: ignore[arg-type]


def server_credentials(files: TlsFiles) -> Any:
    import grpc

    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> Any:
    import grpc

    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(ca, key, cert)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is."""

    name: str
    role: str
    hosts: tuple[str, ...]
    not_after: dt.datetime
    serial: int


def identity_of(cert: x509.Certificate) -> Identity:
    """The name (CN), role (OU) and hosts (SANs) a certificate states, not
    whether it is valid: TLS checks the signature, the dates and the hosts."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    hosts: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    return Identity(name=str(cns[0].value) if cns else "", role=str(ous[0].value) if ous else "",
                    hosts=tuple(hosts), not_after=cert.not_valid_after_utc, serial=cert.serial_number)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who called: the certificate's common name and role ("" and "" on a
    plain-text connection)."""

    name: str
    role: str


_PEERS: dict[bytes, Peer] = {}
_PEERS_MAX = 4096


def peer_of(auth_context: Mapping[str, Sequence[bytes]]) -> Peer | None:
    """The verified peer of a call, or None when the connection carries no
    client certificate."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return None
    pem = pems[0]
    known = _PEERS.get(pem)
    if known is not None:
        return known
    from cryptography import x509

    who = identity_of(x509.load_pem_x509_certificate(pem))
    peer = Peer(who.name, who.role)
    if len(_PEERS) >= _PEERS_MAX:
        _PEERS.pop(next(iter(_PEERS)))
    _PEERS[pem] = peer
    return peer
