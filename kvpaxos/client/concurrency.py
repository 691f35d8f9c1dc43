"""
Locks and leader elections for the asyncio client (etcd's
C{clientv3/concurrency}), built from a lease, transactions and watches:
L{AsyncLock}, L{AsyncElection} and L{AsyncObservation}.  The blocking
twins are L{kvpaxos.client.concurrency_blocking}'s; what both keep between
steps is L{kvpaxos.client.concurrency_state}'s.  Every decision (what to send,
which key to wait on, when the lock is ours) is
L{kvpaxos.client.concurrency_core}'s, which both drive with their own I/O.

    async with client.lock("jobs") as lock:            # waits for its turn
        await client.txn([lock.guard()], [put_op(b"job-state", b"mine")])
    election = client.election("primary")
    await election.campaign(b"node-1")                 # returns once leading
    await election.proclaim(b"node-1, v2")
    await election.resign()

The lease.  A contender's key lives under a lease kept alive by the
client (etcd's C{Session}): by default each turn (an acquisition, a
campaign) grants one of C{ttl} seconds and revokes it when the turn ends;
C{lease=} names a held lease (C{await client.lease(ttl)}) to use instead,
which its owner keeps and closes (several locks and elections may share
one; two contenders on one lease and one name would share one key, and
are refused).  Closing or losing the lease releases everything held under it.

A lock held under a lease is only as good as the lease: a holder cut off
from the cluster keeps believing it holds the lock after its lease ran out
and the next contender took it (its key was deleted; it cannot tell before
it hears from the cluster).  Guard every write the lock protects with
C{lock.guard()} in the same transaction (the key's create revision: the
fencing token), and check that the transaction succeeded; then no write
of a holder that lost the lock is ever applied.

Waits have no deadline unless given one (C{timeout_s}; 0 tries once
without waiting); a wait that ends without the lock (timeout,
cancellation, error) takes the contender's key away again, so it never
holds the lock by accident later.  A wait ends with the lease's
L{LeaseExpired} as soon as the lease is found gone (a renewal finds it so).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

from kvpaxos.client import concurrency_core as core
from kvpaxos.client.concurrency_core import LockLost, NotElected
from kvpaxos.client.concurrency_state import DEFAULT_TTL, HeldLease, LockTimeout, Queued, held_lease, txn_args
from kvpaxos.client.errors import ClientError
from kvpaxos.client.requests import BytesLike, _bytes
from kvpaxos.client.watch import WatchCompacted

__all__ = ["AsyncElection", "AsyncLock", "AsyncObservation", "DEFAULT_TTL", "HeldLease", "LockLost",
           "LockTimeout", "NotElected", "held_lease"]


async def _await_delete(client, held: HeldLease, step: core.AwaitDelete, deadline: Optional[float]) -> bool:
    """
    Wait until C{step.key} is deleted (or its watch is compacted): True;
    False once C{deadline} (the client's clock) passed; raise the lease's
    L{LeaseExpired} as soon as it is found gone.
    """
    watch = client.watch(step.key, start_revision=step.start_revision, no_put=True)

    async def deleted() -> None:
        try:
            async for event in watch:
                if event.kind == "delete":
                    return
        except WatchCompacted:
            return  # read the keys again
        raise ClientError("the watch ended before the key was deleted")

    gone = asyncio.Event()
    stop_listening = held.listen(gone.set)
    waiter, lost = asyncio.ensure_future(deleted()), asyncio.ensure_future(gone.wait())
    timeout_s = None if deadline is None else max(0.0, deadline - client._clock())
    try:
        done, _ = await asyncio.wait((waiter, lost), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_listening()
        for task in (waiter, lost):
            task.cancel()
        await watch.close()
    held.check()
    if waiter not in done:
        return False
    waiter.result()
    return True


async def contend(client, held: HeldLease, contender: core.Contender,
                  deadline: Optional[float] = None) -> Optional[core.Owned]:
    """
    Drive C{contender} to the end: return its L{core.Owned}, or None once
    C{deadline} (the client's clock; None: none) passed while it waited
    for its turn (a deadline already passed still sends the first
    transaction: a try-lock); raise L{LockLost}, the lease's
    L{LeaseExpired}, or a request's error.
    """
    step = contender.begin()
    while True:
        if isinstance(step, core.Txn):
            step = contender.txn_answered(await client.txn(step.compares, step.success, step.failure))
        elif isinstance(step, core.Listing):
            result = await client.range(step.key, step.range_end, keys_only=step.keys_only)
            step = contender.listed(result.kvs, result.revision)
        elif isinstance(step, core.AwaitDelete):
            if not await _await_delete(client, held, step, deadline):
                return None
            step = contender.key_deleted()
        elif isinstance(step, core.Owned):
            return step
        else:
            held.check()
            raise step.error()


class _Queued(Queued):
    """The asyncio I/O of a turn."""

    async def _turn(self, value: Optional[bytes], timeout_s: Optional[float]) -> bool:
        if self.key is not None:
            raise ClientError(f"{self.prefix!r} is already held (led) by this contender")
        if self._given is None:
            self.lease = await self._client.lease(self._ttl)
        elif self.lease.id is None:
            await self.lease
        held = held_lease(self.lease)
        contender = self._contender(value)
        try:
            held.check()
            held.claim(contender.key)
        except ClientError:
            await self._close_own()
            raise
        deadline = None if timeout_s is None else self._client._clock() + timeout_s
        try:
            owned = await contend(self._client, held, contender, deadline)
        except BaseException:
            await self._withdraw(contender.key)
            raise
        if owned is None:
            await self._withdraw(contender.key)
            return False
        self.key, self.revision = owned.key, owned.create_revision
        return True

    async def _close_own(self) -> None:
        if self._given is None and self.lease is not None:
            lease, self.lease = self.lease, None
            await lease.close()

    async def _withdraw(self, key: bytes) -> None:
        """
        Take back the key of a turn that did not end holding (never
        raises): a lease granted for the turn is revoked (deleting the
        key), else the key is deleted, best effort (it goes with its lease).
        """
        lease = self.lease
        self._ended(key)
        if self._given is None:
            await lease.close()
            return
        try:
            await self._client.delete(key)
        except ClientError:
            pass

    async def _release(self) -> bool:
        """
        Delete the key while it is still the one this contender created;
        return whether it was (False: the lock was lost before, or not
        held).  A lease granted for the turn is then revoked, also when the
        delete failed; a failed delete raises.
        """
        key, revision, lease = self.key, self.revision, self.lease
        if key is None:
            return False
        self._ended(key)
        try:
            if lease.lost is not None:
                return False
            return (await self._client.txn(*txn_args(core.resign_txn(key, revision)))).succeeded
        finally:
            if self._given is None:
                await lease.close()


class AsyncLock(_Queued):
    """
    A lock named C{name} (etcd's C{concurrency.Mutex}): C{async with
    client.lock(name):} waits for its turn (at most C{timeout_s}, then
    L{LockTimeout}), then holds it until the block ends.  Without a
    C{lease} each turn grants one of C{ttl} seconds, revoked when the
    turn ends.  See L{Queued} for C{key}, C{revision}, C{held}, C{guard}.
    """

    def __init__(self, client, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL,
                 timeout_s: Optional[float] = None) -> None:
        super().__init__(client, name, lease, ttl)
        self.timeout_s = timeout_s

    async def acquire(self, timeout_s: Optional[float] = None) -> bool:
        """
        Wait until this contender owns the lock; return True, or False if
        C{timeout_s} (None: no limit; 0: do not wait) passed first (then
        its key is gone).

        @raise LockLost: its key went while it waited.
        @raise LeaseExpired: its lease is gone.
        @raise ClientError: it already holds it, or a request failed.
        """
        return await self._turn(None, timeout_s)

    async def release(self) -> bool:
        """
        Delete this contender's key (if still the one it created); return
        whether it still held the lock (False: it was lost before, or not held).
        """
        return await self._release()

    async def __aenter__(self) -> "AsyncLock":
        if not await self.acquire(self.timeout_s):
            raise LockTimeout(f"{self.prefix!r} not acquired within {self.timeout_s}s")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.release()


class AsyncElection(_Queued):
    """
    A leader election named C{name} (etcd's C{concurrency.Election}): the
    candidates queue as a lock's contenders do; the first leads, and its
    key's value is its proclamation.  Without a C{lease}, a campaign grants
    one of C{ttl} seconds, revoked when it resigns.  See L{Queued} for
    C{key}, C{revision}, C{held}, C{guard}.
    """

    def __init__(self, client, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(client, name, lease, ttl)

    async def campaign(self, value: BytesLike, timeout_s: Optional[float] = None) -> bool:
        """
        Stand with C{value} and wait until leading; return True, or False
        if C{timeout_s} passed first (the candidacy is then withdrawn).
        A lease that already stood keeps its place (and gets C{value}).

        @raise LockLost, LeaseExpired, ClientError: as L{AsyncLock.acquire}.
        """
        return await self._turn(_bytes(value, "value"), timeout_s)

    async def proclaim(self, value: BytesLike) -> None:
        """
        Make C{value} the leader's value, while this contender leads.

        @raise NotElected: it does not lead (never did, resigned, or lost its key).
        """
        if self.key is None:
            raise NotElected(f"not leading {self.prefix!r}")
        key = self.key
        txn = core.proclaim_txn(key, self.revision, _bytes(value, "value"), self.lease.id)
        if not (await self._client.txn(*txn_args(txn))).succeeded:
            await self._withdraw(key)
            raise NotElected(f"no longer leading {self.prefix!r}: {key!r} is gone")

    async def resign(self) -> bool:
        """Stop leading (delete the key if still ours); return whether it still led."""
        return await self._release()

    async def leader(self):
        """The leader's record (its C{key}, C{value}, C{create_revision}), or None: nobody leads."""
        return core.owner((await self._client.range(self.prefix, prefix=True)).kvs)

    def observe(self) -> "AsyncObservation":
        """The leader's record at once (if any), then at each change: an async iterator (see L{AsyncObservation})."""
        return AsyncObservation(self._client, self.prefix)


class AsyncObservation:
    """
    The records of an election's leader: the one leading now (if any),
    then each new value it proclaims and each new leader (etcd's
    C{Observe}).  An async iterator; C{await close()} ends it.  A leader
    may be reported twice after a compacted watch (the keys are read again).
    """

    def __init__(self, client, prefix: bytes) -> None:
        self._client = client
        self.prefix = prefix
        self._closed = False
        self._watch = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._leaders()

    async def __aenter__(self) -> "AsyncObservation":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            await self._watch.close()

    async def _leaders(self):
        observer = core.Observer(self.prefix)
        step = observer.begin()
        while not self._closed:
            if isinstance(step, core.Listing):
                result = await self._client.range(step.key, step.range_end)
                leader, step = observer.listed(result.kvs, result.revision)
                if leader is not None:
                    yield leader
                continue
            self._watch = watch = self._client.watch(step.key, step.range_end, start_revision=step.start_revision)
            following = None
            try:
                async for event in watch:
                    leader, following = observer.event(event.kind, event.kv)
                    if leader is not None:
                        yield leader
                    if following is not None:
                        break
            except WatchCompacted:
                following = observer.compacted()
            except asyncio.CancelledError:
                if not self._closed:
                    raise
                return  # close() cancelled the watch's call under the iteration
            finally:
                self._watch = None
                await watch.close()
            if following is None:
                return  # closed
            step = following


class AsyncRecipeMethods:
    """
    The L{kvpaxos.client.AsyncClient}'s recipe methods (mixed in); see
    L{kvpaxos.client.concurrency_blocking.RecipeMethods}.
    """

    def lock(self, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL,
             timeout_s: Optional[float] = None) -> AsyncLock:
        """The L{AsyncLock} named C{name}: C{async with client.lock(name) as lock:}."""
        return AsyncLock(self, name, lease, ttl, timeout_s)

    def election(self, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL) -> AsyncElection:
        """The L{AsyncElection} named C{name}."""
        return AsyncElection(self, name, lease, ttl)
