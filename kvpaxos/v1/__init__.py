"""Generated protobuf and gRPC code for kvpaxos.v1 (from proto/kvpaxos/v1/); do not edit."""
