"""agentd: the mover daemon. Pulls HSM actions from the coordinator cluster
over gRPC streams and runs them with mover plugins (posix, command) on a
filesystem backend (simfs here, lustre later)."""

import hsm  # noqa: F401, E402  (first: chooses the compiled or the pure build, hsm/compiled.py)
