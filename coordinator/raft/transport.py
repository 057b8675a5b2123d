"""The Raft transport (pysyncobj's ``transport``): ``_DurableTransport``, a
``TCPTransport`` subclass that makes the journal (``coordinator.raft.journal``)
durable before a follower acknowledges AppendEntries, so that an entry
counts towards a commit only once it is on this replica's disk. Messages are
sealed by the encryptor ``RaftShard`` gives its ``SyncObj``
(``coordinator.raft.encryptor``)."""

from __future__ import annotations

from typing import Any

from pysyncobj.transport import TCPTransport


class _DurableTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that makes the journal durable before a follower
    acknowledges AppendEntries (or a snapshot)."""

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            self._syncObj._hsm_journal.sync()
        return bool(super().send(node, message))
