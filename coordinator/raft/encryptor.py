"""Message sealing (pysyncobj's ``encryptor``): ``_HmacSealer``, the
authenticate-only stand-in for pysyncobj's Fernet encryptor, and the key it
uses (``_derive_key``); ``_Keyring``, one or the other per password (the
first seals, any opens), which ``RaftShard`` gives ``SyncObj`` as its
``encryptor`` (``make_sealer``, ``tuning.encrypt``).

Security
========

``password`` is mandatory: peers exchange pickled messages, so an open Raft
port would let anyone on the network run code in the coordinator. By
default (``tuning.encrypt``) every message is encrypted and authenticated
with Fernet (AES-128-CBC + HMAC-SHA256, the ``cryptography`` package) under
a key derived from the password and the shard index; a message that fails
is dropped before it is unpickled. With ``encrypt=False`` messages are only
authenticated (HMAC-SHA256 under a PBKDF2 key, checked before unpickling)
and readable on the wire. pysyncobj's per-connection random keys reject
replays. Raft binds only to ``bind_addr`` (default ``self_addr``), never to
every interface.

Rotating the password
=====================

``password`` may hold several passwords, one per line (the password file
``cluster.password_file``, up to ``MAX_PASSWORDS``): every message is
sealed with the first and accepted when any of them opens it
(``_Keyring``). A rolling rotation never loses a quorum: (a) every replica
in turn gets the new password on a second line and restarts; (b) every
replica in turn gets it on the first line (the old one second) and
restarts, sealing with it, which every replica accepts since (a); (c) the
old line is removed, replica by replica. A replica that knows only the old
password afterwards is refused: its messages open under no accepted
password and are dropped before they are unpickled (docs/cluster-config.md
shows the files and commands)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from typing import Any, NoReturn

#: the package's logger name, as before it was split into modules (log lines
#: and log settings name "coordinator.raft")
log = logging.getLogger("coordinator.raft")


_KEY_ITERATIONS = 50_000


class _HmacSealer:
    """Stands in for pysyncobj's Fernet encryptor (same three methods, as
    used by ``TcpConnection``): authenticates every message with
    HMAC-SHA256 and refuses it before it is unpickled when the tag is
    wrong. The payload is readable on the wire (no confidentiality)."""

    _HEAD = struct.Struct(">BQ")
    _TAG = 32
    _VERSION = 1

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        body = self._HEAD.pack(self._VERSION, max(0, int(current_time))) + data
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def _body(self, token: bytes) -> bytes:
        if len(token) < self._HEAD.size + self._TAG or token[0] != self._VERSION:
            self._refused()
        body, tag = token[: -self._TAG], token[-self._TAG:]
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest(), tag):
            self._refused()
        return body

    def extract_timestamp(self, token: bytes) -> int:
        return int(self._HEAD.unpack_from(self._body(token))[1])

    def decrypt(self, token: bytes) -> bytes:
        return self._body(token)[self._HEAD.size:]

    @staticmethod
    def _refused() -> NoReturn:
        # (the keyring around it says so in the log, once for all its passwords)
        raise ValueError("Raft message authentication failed")


def _derive_key(password: str, shard: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"hsm-coordinator/raft/v1/shard-%d" % shard,
                               _KEY_ITERATIONS)


#: passwords one password file may hold (the one sealing, and the others
#: accepted): each one more costs a failed check per message sealed with
#: the last one, and a key derivation per shard at start
MAX_PASSWORDS = 4


def split_passwords(text: str) -> list[str]:
    """The passwords of a password file's *text*: one per non-empty line,
    the first the one messages are sealed with. A text of one line is one
    password exactly as given (as before rotations existed)."""
    if "\n" not in text and "\r" not in text:
        return [text] if text else []
    return [line.strip() for line in text.splitlines() if line.strip()]


class _Keyring:
    """The sealer of a shard (pysyncobj's encryptor: the three methods
    ``TcpConnection`` calls): seals with the first of its sealers (one per
    password) and opens a message with whichever of them authenticates it,
    so that replicas with the new password first and replicas with it
    second understand each other during a rotation. A message none opens
    is refused before it is unpickled (and logged, at most every 10 s)."""

    def __init__(self, sealers: list[Any], shard: int) -> None:
        if not sealers:
            raise ValueError("a keyring needs at least one password")
        self._sealers = sealers
        self._shard = shard
        self._last_warning = 0.0
        #: the token extract_timestamp last opened, and the sealer that did:
        #: pysyncobj calls decrypt on the same token next (tick thread only)
        self._hit: tuple[bytes, Any] | None = None

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        return bytes(self._sealers[0].encrypt_at_time(data, current_time))

    def extract_timestamp(self, token: bytes) -> int:
        for sealer in self._sealers:
            try:
                stamp = int(sealer.extract_timestamp(token))
            except Exception:  # InvalidToken, ValueError: not this password's
                continue
            self._hit = (token, sealer)
            return stamp
        self._refused()

    def decrypt(self, token: bytes) -> bytes:
        hit = self._hit
        self._hit = None
        if hit is not None and hit[0] is token:
            return bytes(hit[1].decrypt(token))
        for sealer in self._sealers:
            try:
                return bytes(sealer.decrypt(token))
            except Exception:
                continue
        self._refused()

    def _refused(self) -> NoReturn:
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning("shard %d: refused a Raft message that failed authentication under %s (a peer with "
                        "another password, or something that is not a Raft peer of this shard); connection "
                        "dropped", self._shard,
                        "the cluster password" if len(self._sealers) == 1
                        else f"every one of the {len(self._sealers)} accepted passwords")
        raise ValueError("Raft message authentication failed")


def make_sealer(password: str, shard: int, encrypt: bool) -> _Keyring:
    """The sealer of shard *shard* for *password* (one password per line,
    the first sealing): Fernet (pysyncobj's, under a key per password and
    shard) when *encrypt*, else the HMAC sealer."""
    passwords = split_passwords(password)
    if not 1 <= len(passwords) <= MAX_PASSWORDS:
        raise ValueError(f"shard {shard}: 1 to {MAX_PASSWORDS} Raft passwords (one per line), not {len(passwords)}")
    sealers: list[Any] = []
    for pw in passwords:
        if encrypt:
            from pysyncobj.encryptor import getEncryptor
            sealers.append(getEncryptor(f"{pw}\0hsm-coordinator shard {shard}"))
        else:
            sealers.append(_HmacSealer(_derive_key(pw, shard)))
    return _Keyring(sealers, shard)
