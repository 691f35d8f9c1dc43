"""
The gRPC edge: L{GrpcServer}, a Twisted service that runs a grpc.aio server
(the C{kvpaxos.v1.KV} and C{kvpaxos.v1.Cluster} services of
L{kvpaxos.api.servicers}, C{Auth}, C{Watch} and C{Lease}
(L{kvpaxos.api.lease_servicer}), health checking and server reflection) on an
asyncio event loop of its own, in a thread of its own, beside the reactor;
and, when given an etcd address, a second grpc.aio server on the same loop
serving etcd's v3 API there (L{kvpaxos.api.etcd}).

Threads.  The handlers are coroutines on the gRPC thread's loop.  The node
(L{kvpaxos.node.interfaces.IKeyValueNode}) is called only in the reactor
thread.  Handlers reach it through a L{ReactorCrossing}: a handler queues its
call with the callback that takes its outcome; the first call queued after a
drain asks the reactor (C{callFromThread}) for one drain, which runs every
call queued by then, and the outcomes enter the loop in batches too
(L{LoopPost}).  So a burst of requests costs one wake-up each way, not one
per request.

Every wait is bounded: a handler waits at most C{min(client deadline,
request_timeout_s)} and then answers UNAVAILABLE, and stopping the service
fails every waiting request at once, so a node whose Deferred never fires
cannot keep the process alive past SIGTERM.  The reactor thread never waits
on grpcio (the server's stop is waited for in a thread of its own).

This module translates and decides nothing: what a request means is the
node's business; L{kvpaxos.api.convert} turns messages into commands and
results into messages (paging ranges under the message limit),
L{kvpaxos.api.statuses} names the status (code, message, ErrorInfo) for
each failure or refusal, and L{kvpaxos.api.crossing} carries calls into
the reactor.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from kvpaxos.api.crossing import LoopPost, ReactorCrossing  # noqa: F401 (tests import it from here)
from kvpaxos.api.endpoints import CHANNEL_OPTIONS, parse_endpoint
from kvpaxos.api.errors import SHUTTING_DOWN as SHUTTING_DOWN_REASON, Unavailable
from kvpaxos.api.servicers import ClusterServicer, KVServicer, _NodeCalls
from kvpaxos.api.statuses import SHUTTING_DOWN
from kvpaxos.api.auth_servicer import AuthServicer
from kvpaxos.api.lease_servicer import LeaseServicer
from kvpaxos.api.watch_servicer import WatchServicer
from kvpaxos.api import etcd
from kvpaxos.v1 import (
    auth_pb2, auth_pb2_grpc, kv_pb2, kv_pb2_grpc, lease_pb2, lease_pb2_grpc, watch_pb2, watch_pb2_grpc,
)

#: Full names of the services this server offers.
KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
CLUSTER_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["Cluster"].full_name
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name
WATCH_SERVICE = watch_pb2.DESCRIPTOR.services_by_name["Watch"].full_name
LEASE_SERVICE = lease_pb2.DESCRIPTOR.services_by_name["Lease"].full_name
SERVICE_NAMES = (KV_SERVICE, CLUSTER_SERVICE, AUTH_SERVICE, WATCH_SERVICE, LEASE_SERVICE, health.SERVICE_NAME,
                 reflection.SERVICE_NAME)

#: How much longer than the grace period the stop waits for grpcio's threads.
STOP_WAIT_SLACK_S = 2.0
#: The longest the start waits for the gRPC thread to bind.
START_WAIT_S = 30.0

_log = Logger()

#: Requests in flight or queued per node before RESOURCE_EXHAUSTED.
MAX_CONCURRENT_RPCS = 4096


class ShuttingDown(Unavailable):
    """The node stopped while a request waited (UNAVAILABLE, reason SHUTTING_DOWN)."""

    reason = SHUTTING_DOWN_REASON


class GrpcServer(Service):
    """
    Serves the kvpaxos gRPC API for one node: a grpc.aio server on an
    asyncio event loop of its own, in a thread of its own (C{kvpaxos-grpc}).

    @ivar port: the bound port once started (useful with port 0), else None.
    @ivar crossing: the L{ReactorCrossing} requests take into the reactor.
    """

    def __init__(
        self,
        node,
        address: str,
        reactor,
        max_workers: int = 64,
        request_timeout_s: float = 5.0,
        stop_grace_s: float = 1.0,
        metrics=None,
        credentials=None,
        cert_names_user: bool = False,
        etcd_address: Optional[str] = None,
        etcd_credentials=None,
        peer_tls: bool = False,
    ) -> None:
        """
        @param node: provides L{kvpaxos.node.interfaces.IKeyValueNode}; called
            only in the reactor thread.
        @param address: C{host:port} to listen on; port 0 picks a free port;
            an empty host (C{":2379"}) means every interface.
        @param reactor: provides C{callFromThread}.
        @param max_workers: unused since the edge is asynchronous (kept
            for callers of the threaded edge); L{MAX_CONCURRENT_RPCS}
            bounds the requests in flight.
        @param request_timeout_s: the longest a request waits for the node,
            whatever the client's deadline; then it gets UNAVAILABLE.
        @param stop_grace_s: how long L{stopService} lets in-flight RPCs
            finish their replies before grpcio cancels them.
        @param metrics: counts every answered request by method and code
            (C{grpc_request(method, code_name)}:
            L{kvpaxos.node.metrics.NodeMetrics}), or None.
        @param credentials: C{grpc.ServerCredentials} to serve TLS with
            (L{kvpaxos.tls.grpc_server_credentials}), or None: plaintext.
        @param cert_names_user: whether a verified client certificate's
            common name names the user of a request that brings no token
            (etcd's rule with C{--client-cert-auth}).
        @param etcd_address: C{host:port} to serve etcd's v3 API on, or
            None: not served.
        @param etcd_credentials: C{grpc.ServerCredentials} of the etcd port
            (made from the client port's files: one credentials object
            serves one port), or None: plaintext.
        @param peer_tls: whether the peer links are TLS (the etcd member
            list's peer URLs say C{https}).
        @raise kvpaxos.api.endpoints.BadEndpoint: C{address} or
            C{etcd_address} is not C{host:port}.
        """
        self.address = parse_endpoint(address)
        self.port: Optional[int] = None
        #: The etcd port's address, and its bound port once started (None: not served).
        self.etcd_address = parse_endpoint(etcd_address) if etcd_address is not None else None
        self.etcd_port: Optional[int] = None
        self.crossing = ReactorCrossing(reactor)
        self._reactor = reactor
        self._stop_grace_s = stop_grace_s
        self._calls = _NodeCalls(node, self.crossing, request_timeout_s)
        self._calls.metrics = metrics
        self._calls.cert_names_user = cert_names_user
        self._etcd_calls = etcd.EtcdCalls(node, self.crossing, request_timeout_s)
        self._etcd_calls.metrics = metrics
        self._etcd_calls.cert_names_user = cert_names_user
        self._etcd_calls.peer_scheme = "https" if peer_tls else "http"
        self._etcd_server = None
        self._node = node
        self._credentials = credentials
        self._etcd_credentials = etcd_credentials
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server = None
        self._health = None
        #: The C{kvpaxos.v1.KV} servicer, once started.
        self.kv_servicer: Optional[KVServicer] = None

    def startService(self) -> None:
        """
        Start the gRPC thread, bind and start the server there (this waits
        for the bind, once, before the reactor serves anything).

        @raise CannotListenError: the address cannot be bound.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kvpaxos-grpc", daemon=True)
        thread.start()
        try:
            bound = asyncio.run_coroutine_threadsafe(self._start(), loop).result(START_WAIT_S)
        except BaseException:
            _stop_loop(loop, thread)
            raise
        try:  # for the ErrorInfo of requests refused before they reach the node
            self._calls.member_id = self._etcd_calls.member_id = self._node.status().member_id
        except Exception:
            pass
        self.port = bound
        self._loop, self._thread = loop, thread
        super().startService()
        _log.info("serving gRPC clients on {address} (port {port}{tls})", address=self.address, port=bound,
                  tls=", TLS" if self._credentials is not None else "")
        if self.etcd_port is not None:
            _log.info("serving etcd's v3 API on {address} (port {port}{tls})", address=self.etcd_address,
                      port=self.etcd_port, tls=", TLS" if self._etcd_credentials is not None else "")

    async def _start(self) -> int:
        # SO_REUSEPORT off: a second node on the same port must fail to bind,
        # not silently share the port.  A bound on the requests in flight:
        # beyond it clients get RESOURCE_EXHAUSTED instead of the node
        # buffering without limit.
        self._calls.post = self._etcd_calls.post = LoopPost(asyncio.get_running_loop())
        server = grpc.aio.server(
            options=CHANNEL_OPTIONS + (("grpc.so_reuseport", 0),),
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        self.kv_servicer = KVServicer(self._node, self._calls)
        kv_pb2_grpc.add_KVServicer_to_server(self.kv_servicer, server)
        kv_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self._node, self._calls), server)
        auth_pb2_grpc.add_AuthServicer_to_server(AuthServicer(self._node, self._calls), server)
        watch_pb2_grpc.add_WatchServicer_to_server(WatchServicer(self._node, self._calls), server)
        lease_pb2_grpc.add_LeaseServicer_to_server(LeaseServicer(self._node, self._calls), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        bound = self._bind(server, self.address, self._credentials)
        etcd_server = None
        if self.etcd_address is not None:
            etcd_server = grpc.aio.server(
                options=CHANNEL_OPTIONS + (("grpc.so_reuseport", 0),),
                maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
            )
            etcd.add_services(etcd_server, self._node, self._etcd_calls)
            reflection.enable_server_reflection(etcd.SERVICE_NAMES + (reflection.SERVICE_NAME,), etcd_server)
            self.etcd_port = self._bind(etcd_server, self.etcd_address, self._etcd_credentials)
            scheme = "https" if self._etcd_credentials is not None else "http"
            host = self.etcd_address.rpartition(":")[0]
            self._etcd_calls.client_urls = (f"{scheme}://{host}:{self.etcd_port}",)
        for name in ("", KV_SERVICE, CLUSTER_SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        if etcd_server is not None:
            await etcd_server.start()
        self._server, self._health, self._etcd_server = server, health_servicer, etcd_server
        return bound

    @staticmethod
    def _bind(server, address: str, credentials) -> int:
        """Bind C{server} to C{address} (TLS with C{credentials}, if any); return the port."""
        host, _, port = address.rpartition(":")
        try:
            if credentials is not None:
                bound = server.add_secure_port(address, credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as error:
            raise CannotListenError(host, int(port), error) from error
        if not bound:
            raise CannotListenError(host, int(port), "grpc could not bind")
        return bound

    def stopService(self) -> defer.Deferred:
        """
        Stop serving.  Requests waiting on the node fail at once with
        UNAVAILABLE ("node shutting down"); new ones are refused.  Returns a
        Deferred that fires once grpcio has stopped (waited for in a thread
        of its own, never in the reactor thread), at most C{stop_grace_s}
        plus L{STOP_WAIT_SLACK_S} seconds later.
        """
        super().stopService()
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return defer.succeed(None)
        self.crossing.close(lambda: ShuttingDown(SHUTTING_DOWN, self._calls.leader))
        server, health_servicer, etcd_server = self._server, self._health, self._etcd_server
        grace_s = self._stop_grace_s

        async def stop() -> None:
            await health_servicer.enter_graceful_shutdown()
            stops = [server.stop(grace_s)] + ([etcd_server.stop(grace_s)] if etcd_server is not None else [])
            await asyncio.gather(*stops)

        stopped = asyncio.run_coroutine_threadsafe(stop(), loop)
        done: defer.Deferred = defer.Deferred()
        wait_s = grace_s + STOP_WAIT_SLACK_S

        def wait_for_grpc() -> None:
            try:
                stopped.result(wait_s)
            except Exception:
                self._reactor.callFromThread(
                    _log.warn, "gRPC server did not stop within {wait_s}s", wait_s=wait_s
                )
            _stop_loop(loop, thread)
            self._reactor.callFromThread(done.callback, None)

        threading.Thread(target=wait_for_grpc, name="kvpaxos-grpc-stop", daemon=True).start()
        return done


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop C{loop} (run by C{thread}), wait for the thread, and close the loop."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join(STOP_WAIT_SLACK_S)
    if not thread.is_alive():
        loop.close()
