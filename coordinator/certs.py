"""Certificates for mutual TLS (``hsm-coordinator certs``): a cluster CA and
the certificates it issues, made with ``cryptography``'s x509.

Every party proves who it is with a certificate signed by the cluster's CA:

* the **identity** is the certificate's common name (CN): a replica's id,
  an agent's id (agentd's ``agent_id`` must equal it), an admin's or
  user's name;
* the **role** is the organizational unit (OU), one of :data:`ROLES`, set
  by whoever holds the CA key when the certificate is issued;
* the **hosts** a server certificate is valid for are its subject
  alternative names (DNS names and IP addresses): clients check them.

Keys are ECDSA P-256 (small, and quick TLS handshakes); private keys are
written mode 0600 and never overwritten. Validity defaults: 10 years for the
CA, 825 days for the others (the longest browsers accept, a habit sites
know). Nothing here talks to the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.roles import ROLES
from hsm.tls import identity_of
from hsm.wire import name_problem

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 825
#: a certificate's CN: the identity it proves (X.509 bounds a common name
#: to 64 characters, RFC 5280 ub-common-name)
MAX_IDENTITY = 64


class CertError(Exception):
    """A certificate request that cannot be done (said in one line)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create *path* with *mode*; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertError(f"{path} already exists; not overwritten (remove it first to replace it)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def check_identity(name: str, role: str, hosts: tuple[str, ...] = ()) -> None:
    problem = name_problem(name, "name", MAX_IDENTITY)
    if problem:
        raise CertError(problem)
    if "," in name or "=" in name or "/" in name:
        raise CertError(f"name {name!r}: no ',', '=' or '/' (it is a certificate's common name)")
    if role not in ROLES:
        raise CertError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    for h in hosts:
        problem = name_problem(h, "host", 253)
        if problem or " " in h:
            raise CertError(problem or f"host {h!r} has a space")


def init_ca(directory: Path, name: str = "hsm-coordinator CA", days: int = CA_DAYS) -> Path:
    """Create the cluster CA in *directory*: ``ca.pem`` (give it to every
    party) and ``ca.key`` (mode 0600: keep it off the cluster's hosts)."""
    problem = name_problem(name, "CA name", MAX_IDENTITY)
    if problem:
        raise CertError(problem)
    if days < 1:
        raise CertError("--days must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    for f in (CA_CERT, CA_KEY):
        if (directory / f).exists():
            raise CertError(f"{directory / f} already exists; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_new(directory / CA_KEY, _key_pem(key), 0o600)
    _write_new(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return directory / CA_CERT


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {ca_dir}: {exc.filename} is missing (hsm-coordinator certs init)") from None
    except ValueError as exc:
        raise CertError(f"the CA in {ca_dir} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{ca_dir / CA_KEY} is not an EC key")
    return cert, key


def issue(ca_dir: Path, name: str, role: str, out_dir: Path | None = None, hosts: tuple[str, ...] = (),
          days: int = CERT_DAYS, not_before: dt.datetime | None = None) -> tuple[Path, Path]:
    """Issue a certificate for *name* with *role*, signed by the CA in
    *ca_dir*; written as ``NAME.pem`` and ``NAME.key`` (0600) in *out_dir*
    (default *ca_dir*). *hosts*: the DNS names and IP addresses a server
    (a replica) answers on. Returns (certificate, key)."""
    check_identity(name, role, hosts)
    if days < 1:
        raise CertError("--days must be at least 1")
    ca_cert, ca_key = _load_ca(ca_dir)
    out = out_dir or ca_dir
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise CertError(f"{p} already exists; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                  x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]))
         .issuer_name(ca_cert.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start)
         .not_valid_after(start + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                      crl_sign=False, content_commitment=False, data_encipherment=False,
                                      key_agreement=True, encipher_only=False, decipher_only=False),
                        critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if hosts:
        b = b.add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def describe(path: Path, ca_dir: Path | None = None) -> str:
    """One paragraph about a certificate file: who, which role, hosts,
    validity, and (with *ca_dir*) whether the CA there signed it."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from None
    who = identity_of(cert)
    now = _now()
    state = ("expired" if now > who.not_after else
             "not yet valid" if now < cert.not_valid_before_utc else "valid")
    lines = [f"{path}: {who.name or '(no CN)'}, role {who.role or '(none)'}",
             f"  valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {who.not_after:%Y-%m-%d %H:%M} UTC: {state}",
             f"  hosts: {', '.join(who.hosts) or '(none: a client certificate)'}",
             f"  serial {who.serial:x}, issuer {cert.issuer.rfc4514_string()}"]
    if ca_dir is not None:
        ca_cert, _ = _load_ca(ca_dir)
        try:
            cert.verify_directly_issued_by(ca_cert)
            lines.append(f"  signed by the CA in {ca_dir}")
        except (ValueError, TypeError, InvalidSignature):
            lines.append(f"  NOT signed by the CA in {ca_dir}")
    return "\n".join(lines)
