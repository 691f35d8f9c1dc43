"""
The gRPC edge alone: kvpaxos's real L{GrpcServer} in front of a node that
answers at once from a dict in the reactor thread (no Paxos, no disk, no
peers).  What the load generator measures against it is the ceiling the
edge puts on a real node of this process model.

    .venv/bin/python bench/edge_ceiling.py --port 0 &       # prints "serving on PORT"
    .venv/bin/python bench/kv_bench.py --endpoints 127.0.0.1:PORT -w W1,W3 --runs 1

Not a test and not part of the product: a measuring instrument.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import defer
from zope.interface import implementer

from kvpaxos.kv.commands import KeyValue, Op, RangeResult, Result, TxnResult
from kvpaxos.node.interfaces import IKeyValueNode, NodeStatus


@implementer(IKeyValueNode)
class DictNode:
    """A one-member "cluster" that leads itself and keeps keys in a dict."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.revision = 0

    def submit(self, request, timeout_s):
        if request.op is Op.PUT:
            existed = request.key in self.data
            self.data[request.key] = request.value
            self.revision += 1
            return defer.succeed(Result(existed=existed, revision=self.revision))
        if request.op is Op.TXN:
            for op in request.txn.success:
                self.data[op.key] = op.value
            self.revision += 1
            return defer.succeed(TxnResult(True, (), self.revision))
        return defer.succeed(Result(revision=self.revision))

    def get(self, key, timeout_s, consistency="linearizable"):
        return defer.succeed(self.data.get(key))

    def range(self, query, timeout_s, consistency="linearizable"):
        value = self.data.get(query.key)
        if value is None:
            return defer.succeed(RangeResult(revision=self.revision))
        kv = KeyValue(query.key, value, 1, 1, 1)
        return defer.succeed(RangeResult((kv,), 1, False, self.revision))

    def status(self):
        return NodeStatus(1, "leader", 1, (1,), (), self.revision, self.revision)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="gRPC handler threads (default: the server's)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    from kvpaxos.api.server import GrpcServer

    server = GrpcServer(DictNode(), f"127.0.0.1:{args.port}", reactor, **({"max_workers": args.workers} if args.workers else {}))
    server.startService()
    print(f"serving on {server.port}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
