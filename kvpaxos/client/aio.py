"""
L{AsyncClient}: the asyncio twin of the blocking client, on C{grpc.aio},
driving the same retry policy and session pool
(L{kvpaxos.client.blocking}).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, AsyncIterator, Callable, Iterable, Optional, Sequence, Union

import grpc
import grpc.aio

from kvpaxos.api.endpoints import CHANNEL_OPTIONS, parse_endpoint
from kvpaxos.client import requests
from kvpaxos.client.auth import authenticate_operation
from kvpaxos.client.concurrency import AsyncRecipeMethods
from kvpaxos.client.blocking import (
    DEFAULT_REFRESH_S, GRANT_ATTEMPTS, Connection, Reply, _Base, _call_with, _granted_earlier, tls_channel_factory,
)
from kvpaxos.client.errors import (
    AuthNotEnabled, Compacted, LeaseExists, LeaseNotFound, Unavailable, member_error, rpc_failure,
)
from kvpaxos.client.lease import AsyncLease
from kvpaxos.client.requests import BytesLike, Operation, RangePager, RangeResult
from kvpaxos.client.retry import Backoff, Pause, Refresh, Session
from kvpaxos.client.stream import Multiplexer
from kvpaxos.client.watch import AsyncWatch, watch_request
from kvpaxos.v1 import kv_pb2, lease_pb2

__all__ = ["AsyncClient", "open_aio_channel"]


def open_aio_channel(endpoint: str, credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.aio.Channel:
    """
    Return a C{grpc.aio} channel to C{endpoint} with the API's
    C{CHANNEL_OPTIONS}, over TLS with C{credentials}, else plaintext.  Call
    it inside the running event loop the channel will be used from.
    """
    if credentials is not None:
        return grpc.aio.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


class AsyncClient(AsyncRecipeMethods, _Base):
    """
    The asyncio twin of L{Client} on C{grpc.aio}: the same arguments
    (C{stream} multiplexes concurrent coroutines' KV requests over one
    C{KV.Stream} per member; C{sleep} is a coroutine function, default C{asyncio.sleep}) and the
    same methods as coroutines; C{range_pages} is an async iterator,
    C{close} a coroutine, and it is an async context manager.  Use one
    AsyncClient from one event loop; concurrent coroutines share the
    session pool as threads do with L{Client}.  Channels are opened on
    first use, inside the running loop.  C{user} and C{password} as
    L{Client}'s; the auth methods (L{kvpaxos.client.auth.AuthMethods})
    return awaitables.  C{lease(ttl)} returns an L{AsyncLease} to await,
    or to use as an async context manager, renewed by a task.
    """

    _aio = True

    def __init__(
        self, endpoints: Union[Sequence[str], str], timeout_s: float = 5.0, session: bool = True,
        channel_factory: Optional[Callable[[str], Any]] = None, sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic, rng: Optional[random.Random] = None,
        backoff: Optional[Backoff] = None, refresh_s: Optional[float] = DEFAULT_REFRESH_S, stream: bool = True,
        cacert: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None,
        user: Optional[str] = None, password: Optional[str] = None,
    ) -> None:
        channel_factory = channel_factory or tls_channel_factory(open_aio_channel, cacert, cert, key)
        super().__init__(endpoints, timeout_s, session, channel_factory, clock, rng, backoff,
                         refresh_s, Multiplexer if stream else None, user, password)
        self._sleep = sleep
        #: Made in the running loop, at the first Authenticate.
        self._single_flight: Optional[asyncio.Lock] = None

    async def _metadata(self, operation: Operation, deadline: float) -> Optional[tuple]:
        """See L{Client._metadata}: one coroutine at a time authenticates."""
        credentials = self._credentials
        if credentials is None or not operation.credential:
            return None
        needs, metadata, _ = credentials.current()
        if not needs:
            return metadata
        if self._single_flight is None:
            self._single_flight = asyncio.Lock()
        try:
            await asyncio.wait_for(self._single_flight.acquire(), max(0.0, deadline - self._clock()))
        except asyncio.TimeoutError:
            raise Unavailable("no token before the deadline: another call's Authenticate did not finish",
                              None, []) from None
        try:
            needs, metadata, generation = credentials.current()
            if not needs:
                return metadata
            try:
                token = (await self._attempt(authenticate_operation(credentials), None, deadline, False)).response.token
            except AuthNotEnabled:
                token = None
            credentials.authenticated(token, generation)
        finally:
            self._single_flight.release()
        return credentials.current()[1]

    async def _attempt(self, operation: Operation, request: Any, deadline: float, in_session: bool) -> Reply:
        attempts = self._policy.attempts(operation, deadline, in_session)
        request = operation.request if request is None else request
        metadata, renewed = await self._metadata(operation, deadline), False
        while True:
            step = attempts.next_step(self._clock())
            if isinstance(step, Pause):
                await self._sleep(step.delay_s)
                continue
            if isinstance(step, Refresh):
                try:
                    listing = await self._connection(step.endpoint).cluster.MemberList(
                        kv_pb2.MemberListRequest(), timeout=step.timeout_s)
                except grpc.RpcError:
                    continue  # not the request's failure
                attempts.listed(step.endpoint, listing)
                continue
            try:
                response = await self._send(self._connection(step.endpoint), operation, request, step.timeout_s,
                                            metadata)
            except grpc.RpcError as error:
                failure = rpc_failure(error)
                if self._renews(operation, failure, metadata, renewed):
                    attempts.renewed()
                    metadata, renewed = await self._metadata(operation, deadline), True
                    continue  # the same request (session fields included), with a new token
                attempts.failed(step.endpoint, failure)
                continue
            attempts.answered(step.endpoint, response.header)
            return Reply(step.endpoint, response)

    @staticmethod
    async def _send(connection: Connection, operation: Operation, request: Any, timeout_s: float,
                    metadata: Optional[tuple] = None) -> Any:
        stream, kind = connection.stream, connection.streamed_kind(operation)
        if stream is not None and kind is not None:
            try:
                return await stream.request(kind, request, timeout_s)
            except grpc.RpcError as error:
                connection.stream_failed(stream, error)
        return await _call_with(getattr(getattr(connection, operation.service), operation.rpc), request,
                                timeout_s, metadata)

    async def call(self, operation: Operation) -> Reply:
        """See L{Client.call}."""
        deadline = self._policy.deadline(self._clock())
        if not operation.write or not operation.session or self._sessions is None:
            return await self._attempt(operation, operation.request, deadline, False)
        resent = False
        while True:
            session = self._sessions.take()
            if session is None:
                opened = await self._attempt(requests.OPEN_SESSION, requests.OPEN_SESSION.request, deadline, False)
                session = Session(opened.response.client_id)
            request = operation.stamped(session.client_id, session.next_sequence())
            try:
                reply = await self._attempt(operation, request, deadline, True)
            except BaseException as error:
                if self._sessions.settle(session, error, resent):
                    resent = True
                    continue
                raise
            self._sessions.settle(session, None, resent)
            return reply

    def _auth_result(self, operation: Operation, read: Callable[[Any], Any]) -> Any:
        async def result():
            return read((await self.call(operation)).response)
        return result()

    async def get(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[bytes]:
        """See L{Client.get}."""
        response = (await self.call(requests.get_operation(key, consistency))).response
        return response.value if response.found else None

    async def get_kv(self, key: BytesLike, consistency: Union[str, int] = "linearizable") -> Optional[kv_pb2.KeyValue]:
        """See L{Client.get_kv}."""
        response = (await self.call(requests.get_operation(key, consistency))).response
        return response.kv if response.found else None

    async def put(self, key: BytesLike, value: BytesLike, prev_kv: bool = False, lease=0) -> kv_pb2.PutResponse:
        """See L{Client.put} (C{lease}: an id or a held L{AsyncLease})."""
        operation = requests.put_operation(key, value, prev_kv, lease)
        try:
            return (await self.call(operation)).response
        except LeaseNotFound as error:
            if isinstance(lease, AsyncLease):
                raise lease.gone(error) from None
            raise

    async def delete(self, key: BytesLike, prev_kv: bool = False) -> kv_pb2.DeleteResponse:
        """See L{Client.delete}."""
        return (await self.call(requests.delete_operation(key, prev_kv))).response

    async def append(self, key: BytesLike, value: BytesLike) -> bytes:
        """See L{Client.append}."""
        return (await self.call(requests.append_operation(key, value))).response.value

    async def range_pages(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                          limit: int = 0, keys_only: bool = False, count_only: bool = False,
                          consistency: Union[str, int] = "linearizable") -> AsyncIterator[kv_pb2.RangeResponse]:
        """See L{Client.range_pages}."""
        pager = RangePager(requests.range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = requests.to_leader(consistency)
        while (request := pager.next_request()) is not None:
            response = (await self.call(Operation("kv", "Range", request, leader=leader))).response
            pager.add(response)
            yield response

    async def range(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                    limit: int = 0, keys_only: bool = False, count_only: bool = False,
                    consistency: Union[str, int] = "linearizable") -> RangeResult:
        """See L{Client.range}."""
        pager = RangePager(requests.range_request(key, range_end, prefix, limit, keys_only, count_only, consistency))
        leader = requests.to_leader(consistency)
        while (request := pager.next_request()) is not None:
            pager.add((await self.call(Operation("kv", "Range", request, leader=leader))).response)
        return pager.result

    async def txn(self, compares: Iterable[kv_pb2.Compare], success: Iterable[kv_pb2.RequestOp] = (),
                  failure: Iterable[kv_pb2.RequestOp] = ()) -> kv_pb2.TxnResponse:
        """See L{Client.txn}."""
        return (await self.call(requests.txn_operation(compares, success, failure))).response

    async def cas(self, key: BytesLike, value: BytesLike, *, expected_value: Optional[BytesLike] = None,
                  expected_version: Optional[int] = None,
                  expected_absent: bool = False) -> tuple[bool, Optional[kv_pb2.KeyValue]]:
        """See L{Client.cas}."""
        operation = requests.cas_operation(key, value, expected_value=expected_value, expected_version=expected_version,
                                  expected_absent=expected_absent)
        return requests.cas_result((await self.call(operation)).response)

    async def compact(self, revision: int) -> int:
        """See L{Client.compact}."""
        try:
            return (await self.call(requests.compact_operation(revision))).response.compact_revision
        except Compacted as refusal:
            compacted = requests.compacted_by_retry(revision, refusal)
            if compacted is None:
                raise
            return compacted

    def watch(self, key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False, no_put: bool = False,
              no_delete: bool = False) -> AsyncWatch:
        """See L{Client.watch}: an async iterator (C{async for}), an async context manager."""
        return AsyncWatch(self, watch_request(key, range_end, prefix, start_revision, prev_kv, no_put, no_delete))

    def lease(self, ttl: int, lease_id: int = 0, *, keep_alive: bool = True, revoke_on_close: bool = True,
              on_lost: Optional[Callable[[AsyncLease], Any]] = None) -> AsyncLease:
        """
        See L{Client.lease}: C{lease = await client.lease(ttl)}, or C{async
        with client.lease(ttl) as lease:}; renewed by a task of the running
        loop until closed.
        """
        return AsyncLease(self, ttl, lease_id, keep_alive=keep_alive, revoke_on_close=revoke_on_close,
                          on_lost=on_lost)

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> lease_pb2.LeaseGrantResponse:
        """See L{Client.lease_grant}."""
        picked = lease_id == 0
        refusal = None
        for _ in range(GRANT_ATTEMPTS if picked else 1):
            chosen = self._pick_lease_id() if picked else lease_id
            try:
                return (await self.call(requests.lease_grant_operation(ttl, chosen))).response
            except LeaseExists as error:
                if not picked:
                    raise
                refusal = error
                if error.maybe_applied:
                    return _granted_earlier(chosen, await self.lease_time_to_live(chosen), error)
        raise refusal

    async def lease_revoke(self, lease_id: int) -> None:
        """See L{Client.lease_revoke}."""
        try:
            await self.call(requests.lease_revoke_operation(lease_id))
        except LeaseNotFound as error:
            if not error.maybe_applied:
                raise

    async def lease_keep_alive(self, lease_id: int) -> int:
        """See L{Client.lease_keep_alive}."""
        return (await self.call(requests.lease_keep_alive_operation(lease_id))).response.ttl

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> lease_pb2.LeaseTimeToLiveResponse:
        """See L{Client.lease_time_to_live}."""
        return (await self.call(requests.lease_time_to_live_operation(lease_id, keys))).response

    async def leases(self) -> list[int]:
        """See L{Client.leases}."""
        return list((await self.call(requests.leases_operation())).response.ids)

    async def status(self) -> kv_pb2.StatusResponse:
        """See L{Client.status}."""
        return (await self.call(requests.status_operation())).response

    async def member_list(self) -> kv_pb2.MemberListResponse:
        """See L{Client.member_list}."""
        reply = await self.call(requests.member_list_operation())
        self._policy.directory.listed(reply.endpoint, reply.response)
        return reply.response

    async def member_status(self, endpoint: str) -> kv_pb2.StatusResponse:
        """See L{Client.member_status}."""
        endpoint = parse_endpoint(endpoint)
        try:
            response = await self._connection(endpoint).cluster.Status(
                kv_pb2.StatusRequest(), timeout=self._policy.timeout_s)
        except grpc.RpcError as error:
            raise member_error(endpoint, rpc_failure(error)) from None
        self._policy.directory.answered(endpoint, response.header)
        return response

    async def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        for connection in self._take_connections():
            if connection.stream is not None:
                await connection.stream.close()
            await connection.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
