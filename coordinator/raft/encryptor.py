"""Message sealing (pysyncobj's ``encryptor``): ``_HmacSealer``, the
authenticate-only stand-in for pysyncobj's Fernet encryptor, and the key it
uses (``_derive_key``). ``RaftShard`` overrides ``SyncObj.encryptor`` with
one or the other (``tuning.encrypt``).

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
every interface."""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time

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

    def __init__(self, key: bytes, shard: int) -> None:
        self._key = key
        self._shard = shard
        self._last_warning = 0.0

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

    def _refused(self) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning("shard %d: refused a Raft message that failed authentication (a peer with "
                        "another password, or something that is not a Raft peer of this shard); "
                        "connection dropped", self._shard)
        raise ValueError("Raft message authentication failed")


def _derive_key(password: str, shard: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"hsm-coordinator/raft/v1/shard-%d" % shard,
                               _KEY_ITERATIONS)
