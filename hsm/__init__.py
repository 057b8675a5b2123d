"""Code shared by the coordinator, agentd and hsmctl: FIDs, HSM flags,
generated gRPC stubs (hsm.v1), the client library, config loading."""

__version__ = "0.1.0"
