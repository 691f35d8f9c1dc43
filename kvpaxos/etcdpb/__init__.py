"""
Generated protobuf and gRPC code for etcd's v3 API as kvpaxos's etcd port
serves it (proto packages C{etcdserverpb} and C{mvccpb}, from
proto/kvpaxos/etcdpb/); do not edit.
"""
