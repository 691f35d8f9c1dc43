"""
The etcd port: etcd's v3 gRPC API (C{etcdserverpb}, L{kvpaxos.etcdpb})
on an address of its own (C{--etcd-addr}, off by default), so that etcd's
clients (etcdctl, clientv3) drive kvpaxos.  L{kvpaxos.api.server.GrpcServer}
runs it as a second grpc.aio server on its thread and loop, through the
same crossing into the reactor; L{add_services} registers the servicers.

The services: C{KV} (L{kvpaxos.api.etcd_kv}), C{Watch}
(L{kvpaxos.api.etcd_watch}), C{Lease} (L{kvpaxos.api.etcd_lease}),
C{Cluster} and C{Maintenance} (L{kvpaxos.api.etcd_cluster}).
Revisions are kvpaxos's + 1 (etcd starts at 1); errors are etcd's
(L{kvpaxos.api.etcd_errors}); what is not served answers UNIMPLEMENTED or
INVALID_ARGUMENT with a sentence, never a silently different result
(README.md, "etcd's API", lists them).  Credentials travel as on the
kvpaxos port: a token in the C{token} metadata (etcd's key).
"""

from __future__ import annotations

from kvpaxos.api.etcd_cluster import ClusterServicer, MaintenanceServicer
from kvpaxos.api.etcd_kv import EtcdCalls, KVServicer
from kvpaxos.api.etcd_lease import LeaseServicer
from kvpaxos.api.etcd_watch import WatchServicer
from kvpaxos.etcdpb import rpc_pb2, rpc_pb2_grpc

__all__ = ["EtcdCalls", "SERVICE_NAMES", "add_services"]

#: The full names of the etcd port's services.
SERVICE_NAMES = tuple(rpc_pb2.DESCRIPTOR.services_by_name[name].full_name
                      for name in ("KV", "Watch", "Lease", "Cluster", "Maintenance"))


def add_services(server, node, calls: EtcdCalls) -> None:
    """Register every etcd servicer, in front of C{node} through C{calls}, on grpc.aio C{server}."""
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(node, calls), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchServicer(node, calls), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseServicer(node, calls), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(node, calls), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(node, calls), server)
