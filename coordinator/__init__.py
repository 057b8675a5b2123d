"""The coordinator replica: API servers, shard state machines, Raft adapter,
ring, scheduler, policy."""

import hsm  # noqa: F401  (first: chooses the compiled or the pure build, hsm/compiled.py)
