"""Generated protobuf and gRPC code for hsm.v1 (make proto)."""
