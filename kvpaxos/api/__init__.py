"""The gRPC edge: the KV and Cluster services, run by grpcio in its own thread."""
