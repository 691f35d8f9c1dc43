"""
The ceiling of any Python gRPC edge on this machine: a bare grpc.aio server
(no kvpaxos code, no Twisted, no threads of ours) whose handlers answer from
a dict, speaking kvpaxos's proto so that L{kv_bench} can drive it.  Whatever
the generator measures here, no Python node of the same shape can beat.

    .venv/bin/python bench/grpc_ceiling.py --port 0 &       # prints "serving on PORT"
    .venv/bin/python bench/kv_bench.py --endpoints 127.0.0.1:PORT -w W1,W2,W5 --runs 1

Serves Put, Get and Txn (puts only) and Status; not a test and not part of
the product: a measuring instrument.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from kvpaxos.v1 import kv_pb2, kv_pb2_grpc


class DictKV(kv_pb2_grpc.KVServicer):
    """Put, Get and Txn over a dict; every answer carries a header as kvpaxos's do."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def _header(self) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(member_id=1, leader_id=1, revision=len(self.data))

    async def Put(self, request, context):
        existed = request.key in self.data
        self.data[request.key] = request.value
        return kv_pb2.PutResponse(header=self._header(), existed=existed)

    async def Get(self, request, context):
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(header=self._header(), found=value is not None, value=value or b"")

    async def Txn(self, request, context):
        responses = []
        for op in request.success:
            self.data[op.request_put.key] = op.request_put.value
            responses.append(kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse()))
        return kv_pb2.TxnResponse(header=self._header(), succeeded=True, responses=responses)


class OneMember(kv_pb2_grpc.ClusterServicer):
    async def Status(self, request, context):
        header = kv_pb2.ResponseHeader(member_id=1, leader_id=1)
        return kv_pb2.StatusResponse(header=header, member_id=1, role="leader", leader_id=1, voters=[1])


async def serve(port: int) -> None:
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(DictKV(), server)
    kv_pb2_grpc.add_ClusterServicer_to_server(OneMember(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving on {bound}", flush=True)
    await server.wait_for_termination()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
