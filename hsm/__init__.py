"""Code shared by the coordinator, agentd and hsmctl: FIDs, HSM flags,
generated gRPC stubs (hsm.v1), the client library, config loading."""

__version__ = "0.1.0"

# the compiled (mypyc) or the pure build of the hot modules: chosen before any
# of them is imported (hsm/compiled.py)
from hsm import compiled as _compiled  # noqa: E402

_compiled.select()
