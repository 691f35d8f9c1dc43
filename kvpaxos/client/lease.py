"""
Leases in the clients (C{kvpaxos.v1.Lease}, C{proto/kvpaxos/v1/lease.proto}):
L{Lease}, a lease the blocking client holds and keeps alive from a thread
of its own, and L{AsyncLease}, its asyncio twin (a task); the schedule of
their keep-alives (L{Renewals}, pure); and L{LeaseStub}, the service's stub
with one keep-alive as a call of its own (C{KeepAliveOnce}).

    with client.lease(10) as lease:                 # granted; kept alive every ttl/3
        client.put(b"k", b"v", lease=lease)         # deleted when the lease ends
        ...                                         # leaving the block revokes it

A held lease is renewed every third of its TTL, from when the last renewal
was sent.  Each renewal is one request of the client (its retry policy:
to the leader, on to another member after UNAVAILABLE, with backoff, within
the client's C{timeout_s}), so renewals go on across a change of leader
(a new leader gives every lease its TTL plus an election timeout afresh).
A renewal that failed is tried again after L{RETRY_S} (at most a third of
the TTL); its error is kept in C{error}.  Once the cluster says the lease
is gone (a renewal answers TTL 0, a time-to-live -1, a put naming it
NOT_FOUND), the lease is lost: C{lost} holds the L{LeaseExpired} every
later operation on it raises, C{on_lost(lease)} is called (from the
renewing thread or task), and renewals stop.  C{valid_until} is the
client's clock reading up to which the lease surely lasts (the sending
of the last answered renewal plus its TTL): a holder that must not act
without its lease checks it.

Pure I/O over the client's calls: nothing here knows how the cluster works.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

import grpc

from kvpaxos.api import errors as api_errors
from kvpaxos.client.errors import ClientError, LeaseExpired, LeaseNotFound
from kvpaxos.v1 import lease_pb2_grpc

__all__ = ["AsyncLease", "Lease", "LeaseStub", "RETRY_S", "Renewals"]

#: How soon a renewal that failed is tried again (seconds; at most a third of the TTL).
RETRY_S = 0.5


class _NoAnswer(grpc.RpcError):
    """A keep-alive stream that ended without answering: UNAVAILABLE, as a lost connection (retried)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the keep-alive stream ended without an answer"

    def trailing_metadata(self):
        return ()


def _metadata_argument(metadata) -> dict:
    return {} if metadata is None else {"metadata": metadata}


class LeaseStub:
    """
    C{kvpaxos.v1.Lease}'s stub on C{channel}, and C{KeepAliveOnce(request,
    timeout, metadata)}: one keep-alive over a C{KeepAlive} stream of its
    own, read as a unary call (the answer, or the stream's error), so that
    the client's retry policy drives it as any request.  C{aio}: the
    channel is grpc.aio's (C{KeepAliveOnce} is then a coroutine function).
    """

    def __init__(self, channel, aio: bool = False) -> None:
        stub = lease_pb2_grpc.LeaseStub(channel)
        self.Grant, self.Revoke, self.TimeToLive, self.Leases = stub.Grant, stub.Revoke, stub.TimeToLive, stub.Leases
        self.KeepAlive = stub.KeepAlive
        self.KeepAliveOnce = self._aio_once if aio else self._once

    def _once(self, request, timeout: Optional[float] = None, metadata=None):
        call = self.KeepAlive(iter((request,)), timeout=timeout, **_metadata_argument(metadata))
        answer = None
        for response in call:  # the answer, then the end of the stream (the member ends it at our end)
            if answer is None:
                answer = response
        if answer is None:
            raise _NoAnswer()
        return answer

    async def _aio_once(self, request, timeout: Optional[float] = None, metadata=None):
        call = self.KeepAlive(iter((request,)), timeout=timeout, **_metadata_argument(metadata))
        answer = None
        async for response in call:
            if answer is None:
                answer = response
        if answer is None:
            raise _NoAnswer()
        return answer


class Renewals:
    """
    When a held lease's next renewal is due (pure: told the time): a third
    of its TTL after the last answered one was sent, or L{RETRY_S} (at most
    a third of the TTL) after one failed.  C{valid_until}: the time up to
    which the lease surely lasts.
    """

    def __init__(self, ttl: int, now: float) -> None:
        self.ttl = ttl
        self.due = now + self.interval_s
        self.valid_until = now + ttl

    @property
    def interval_s(self) -> float:
        return self.ttl / 3

    def delay_s(self, now: float) -> float:
        """How long from C{now} until the next renewal is due (0: now)."""
        return max(0.0, self.due - now)

    def answered(self, ttl: int, sent_at: float) -> None:
        """A renewal sent at C{sent_at} was answered C{ttl} (> 0)."""
        self.ttl = ttl
        self.due = sent_at + self.interval_s
        self.valid_until = max(self.valid_until, sent_at + ttl)

    def failed(self, now: float) -> None:
        """A renewal failed at C{now} (no answer): try again soon."""
        self.due = now + min(RETRY_S, self.interval_s)


class _Held:
    """What both held leases share: the state, and how it is lost."""

    def __init__(self, client, lease_id: Optional[int], ttl: int, revoke_on_close: bool,
                 on_lost: Optional[Callable[[Any], Any]]) -> None:
        self._client = client
        #: The lease's id and TTL (seconds, as last answered).
        self.id = lease_id
        self.ttl = ttl
        self.revoke_on_close = revoke_on_close
        self.on_lost = on_lost
        #: The L{LeaseExpired} every operation raises once the lease is gone (None while held).
        self.lost: Optional[LeaseExpired] = None
        #: The last renewal's error (None once one was answered since).
        self.error: Optional[ClientError] = None
        #: How many renewals were answered.
        self.renewed = 0
        self._renewals: Optional[Renewals] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "lost" if self.lost is not None else "held"
        lease = "?" if self.id is None else f"{self.id:016x}"
        return f"<{type(self).__name__} {lease} ttl={self.ttl} {state}>"

    @property
    def expired(self) -> bool:
        """Whether the lease is gone (see C{lost})."""
        return self.lost is not None

    @property
    def valid_until(self) -> Optional[float]:
        """The client's clock reading up to which the lease surely lasts (None before it was granted)."""
        renewals = self._renewals
        return None if renewals is None else renewals.valid_until

    def check(self) -> None:
        """Raise C{lost} if the lease is gone."""
        if self.lost is not None:
            raise self.lost

    def _granted(self, lease_id: int, ttl: int, at: float) -> None:
        self.id, self.ttl = lease_id, ttl
        self._renewals = Renewals(ttl, at)

    def _answered(self, ttl: int, sent_at: float) -> None:
        with self._lock:
            self.ttl, self.error = ttl, None
            self.renewed += 1
            self._renewals.answered(ttl, sent_at)

    def _failed(self, error: ClientError) -> None:
        with self._lock:
            self.error = error
            self._renewals.failed(self._client._clock())

    def _lose(self, why: str, cause: Optional[BaseException] = None, notify: bool = True) -> LeaseExpired:
        """The lease is gone (C{why}): set C{lost} (once) and return it; call C{on_lost} the first time."""
        with self._lock:
            first = self.lost is None
            if first:
                message = f"lease {self.id:016x} is gone: {why}"
                self.lost = LeaseExpired(message, grpc.StatusCode.NOT_FOUND, message, api_errors.LEASE_NOT_FOUND,
                                         self.id)
                if cause is not None:
                    self.lost.__cause__ = cause
            lost = self.lost
        if first and notify and self.on_lost is not None:
            self.on_lost(self)
        return lost

    def gone(self, error: LeaseNotFound) -> LeaseExpired:
        """A request naming this lease was refused C{error} (not found): the lease is lost; return C{lost}."""
        return self._lose("a request naming it was refused: not found", error)

    def _read_answer(self, ttl: int, sent_at: float) -> int:
        if ttl <= 0:
            raise self._lose("a keep-alive found no such lease (it ran out, or was revoked)")
        self._answered(ttl, sent_at)
        return ttl

    def _read_time_to_live(self, response):
        if response.ttl < 0:
            raise self._lose("a time-to-live found no such lease (it ran out, or was revoked)")
        return response


class Lease(_Held):
    """
    A lease the blocking L{kvpaxos.client.Client} holds (C{client.lease(ttl)}),
    renewed from a thread of its own while open (see the module docstring).
    A context manager: leaving it closes the lease.

    @ivar id: the lease's id.
    @ivar ttl: its TTL in seconds, as last granted or renewed.
    @ivar lost: None while held; once gone, the L{LeaseExpired} that every
        later operation raises.
    @ivar error: the last renewal's failure (None once one was answered).
    @ivar on_lost: called with the lease, from the renewing thread, once it is lost.
    @ivar revoke_on_close: whether L{close} revokes it.
    """

    def __init__(self, client, lease_id: int, ttl: int, *, keep_alive: bool = True, revoke_on_close: bool = True,
                 on_lost: Optional[Callable[["Lease"], Any]] = None,
                 wait: Optional[Callable[[float], bool]] = None, granted_at: Optional[float] = None) -> None:
        """
        @param client: the L{kvpaxos.client.Client} that granted it.
        @param keep_alive: renew it from a thread until closed (False: only
            when L{keep_alive} is called).
        @param wait: how the thread waits between renewals: C{wait(delay_s)}
            returns True once the lease is closed (tests pass a fake); the
            default waits on the lease's closing.
        @param granted_at: the client's clock reading when the grant was sent (default: now).
        """
        super().__init__(client, lease_id, ttl, revoke_on_close, on_lost)
        self._closed = threading.Event()
        self._wait = wait or self._closed.wait
        self._granted(lease_id, ttl, client._clock() if granted_at is None else granted_at)
        self._thread: Optional[threading.Thread] = None
        if keep_alive:
            self._thread = threading.Thread(target=self._run, name=f"kvpaxos-lease-{lease_id:016x}", daemon=True)
            self._thread.start()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _run(self) -> None:
        while not self._closed.is_set() and self.lost is None:
            if self._wait(self._renewals.delay_s(self._client._clock())) or self._closed.is_set():
                return
            if self._client._closed:
                return
            try:
                self._renew()
            except LeaseExpired:
                return
            except ClientError:
                continue  # kept in self.error; tried again soon

    def _renew(self) -> int:
        sent_at = self._client._clock()
        try:
            ttl = self._client.lease_keep_alive(self.id)
        except ClientError as error:
            self._failed(error)
            raise
        return self._read_answer(ttl, sent_at)

    def keep_alive(self) -> int:
        """
        Renew the lease once, now; return its TTL.

        @raise LeaseExpired: the lease is gone (now found, or before).
        @raise ClientError: the renewal failed (L{Unavailable}, ...).
        """
        self.check()
        return self._renew()

    def time_to_live(self, keys: bool = False):
        """
        The lease's C{LeaseTimeToLiveResponse} (C{ttl}: whole seconds left, as
        the leader counts them; C{granted_ttl}; with C{keys}, its keys).

        @raise LeaseExpired: the lease is gone.
        """
        self.check()
        return self._read_time_to_live(self._client.lease_time_to_live(self.id, keys))

    def revoke(self) -> None:
        """
        Stop renewing and revoke the lease now: its keys are deleted.  Later
        operations raise L{LeaseExpired}.

        @raise LeaseExpired: it was gone already.
        """
        self.check()
        self._stop()
        try:
            self._client.lease_revoke(self.id)
        except LeaseNotFound as error:
            raise self._lose("it was not there to revoke", error) from None
        self._lose("this client revoked it", notify=False)

    def _stop(self) -> None:
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._client._policy.timeout_s + 1.0)

    def close(self, revoke: Optional[bool] = None) -> None:
        """
        Stop renewing; revoke the lease if C{revoke} (default
        C{revoke_on_close}) and it is still held.  A revoke that fails is
        not raised: the lease then runs out after its TTL.
        """
        self._stop()
        if self.lost is None and (self.revoke_on_close if revoke is None else revoke):
            try:
                self.revoke()
            except ClientError:
                pass


class AsyncLease(_Held):
    """
    The asyncio twin of L{Lease}, for an L{kvpaxos.client.AsyncClient}:
    C{lease = await client.lease(ttl)} or C{async with client.lease(ttl) as
    lease:} grants it and starts renewing it in a task of the running loop;
    the operations are coroutines.  C{wait}: a coroutine function
    C{wait(delay_s) -> bool} (True: closed), for tests.
    """

    def __init__(self, client, ttl: int, lease_id: int = 0, *, keep_alive: bool = True,
                 revoke_on_close: bool = True, on_lost: Optional[Callable[["AsyncLease"], Any]] = None,
                 wait: Optional[Callable[[float], Any]] = None) -> None:
        super().__init__(client, None, ttl, revoke_on_close, on_lost)
        self._asked = (ttl, lease_id)
        self._keep_alive = keep_alive
        self._wait = wait
        self._closed = False
        self._closing: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    def __await__(self):
        return self._grant().__await__()

    async def __aenter__(self) -> "AsyncLease":
        return await self._grant()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def _grant(self) -> "AsyncLease":
        if self.id is not None:
            return self
        sent_at = self._client._clock()
        response = await self._client.lease_grant(*self._asked)
        self._granted(response.id, response.ttl, sent_at)
        self._closing = asyncio.Event()
        if self._keep_alive:
            self._task = asyncio.ensure_future(self._run())
        return self

    async def _sleep(self, delay_s: float) -> bool:
        if self._wait is not None:
            return await self._wait(delay_s)
        try:
            await asyncio.wait_for(self._closing.wait(), delay_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while not self._closed and self.lost is None:
            if await self._sleep(self._renewals.delay_s(self._client._clock())) or self._closed:
                return
            if self._client._closed:
                return
            try:
                await self._renew()
            except LeaseExpired:
                return
            except ClientError:
                continue

    async def _renew(self) -> int:
        sent_at = self._client._clock()
        try:
            ttl = await self._client.lease_keep_alive(self.id)
        except ClientError as error:
            self._failed(error)
            raise
        return self._read_answer(ttl, sent_at)

    def _granted_or_raise(self) -> None:
        if self.id is None:
            raise ClientError("the lease is not granted yet: await client.lease(ttl) first")
        self.check()

    async def keep_alive(self) -> int:
        """See L{Lease.keep_alive}."""
        self._granted_or_raise()
        return await self._renew()

    async def time_to_live(self, keys: bool = False):
        """See L{Lease.time_to_live}."""
        self._granted_or_raise()
        return self._read_time_to_live(await self._client.lease_time_to_live(self.id, keys))

    async def revoke(self) -> None:
        """See L{Lease.revoke}."""
        self._granted_or_raise()
        await self._stop()
        try:
            await self._client.lease_revoke(self.id)
        except LeaseNotFound as error:
            raise self._lose("it was not there to revoke", error) from None
        self._lose("this client revoked it", notify=False)

    async def _stop(self) -> None:
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def close(self, revoke: Optional[bool] = None) -> None:
        """See L{Lease.close}."""
        await self._stop()
        if self.id is not None and self.lost is None and (self.revoke_on_close if revoke is None else revoke):
            try:
                await self.revoke()
            except ClientError:
                pass
