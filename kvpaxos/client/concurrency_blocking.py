"""
Locks and leader elections for the blocking client: L{Lock}, L{Election}
and L{Observation}, the twins of L{kvpaxos.client.concurrency}'s asyncio
ones (read its docstring: the scheme, the lease, and why the writes a lock
protects are guarded), driving the same decisions
(L{kvpaxos.client.concurrency_core}) with blocking calls.

    with client.lock("jobs") as lock:                  # waits for its turn
        client.txn([lock.guard()], [put_op(b"job-state", b"mine")])
    election = client.election("primary")
    election.campaign(b"node-1")                       # returns once leading
    for leader in election.observe():                  # from another process, say
        print(leader.key, leader.value)

A wait runs in the calling thread; the lease is renewed by a thread of its
own, which also ends a wait as soon as it finds the lease gone.  Each
object is for one thread at a time (C{Observation.close} excepted).
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Optional

from kvpaxos.client import concurrency_core as core
from kvpaxos.client.concurrency_state import DEFAULT_TTL, HeldLease, LockTimeout, Queued, held_lease, txn_args
from kvpaxos.client.concurrency_core import LockLost, NotElected
from kvpaxos.client.errors import ClientError
from kvpaxos.client.requests import BytesLike, _bytes
from kvpaxos.client.watch import WatchCompacted

__all__ = ["Election", "Lock", "LockLost", "LockTimeout", "NotElected", "Observation", "RecipeMethods"]


def _await_delete(client, held: HeldLease, step: core.AwaitDelete, deadline: Optional[float]) -> bool:
    """See L{kvpaxos.client.concurrency._await_delete}: the same, blocking."""
    watch = client.watch(step.key, start_revision=step.start_revision, no_put=True)
    timer = None
    if deadline is not None:
        timer = threading.Timer(max(0.0, deadline - client._clock()), watch.close)
        timer.daemon = True
        timer.start()
    stop_listening = held.listen(watch.close)
    try:
        for event in watch:
            if event.kind == "delete":
                return True
    except WatchCompacted:
        return True  # read the keys again
    finally:
        stop_listening()
        if timer is not None:
            timer.cancel()
        watch.close()
    held.check()
    if deadline is not None and client._clock() >= deadline:
        return False
    raise ClientError("the watch ended before the key was deleted (the client was closed)")


def contend(client, held: HeldLease, contender: core.Contender,
            deadline: Optional[float] = None) -> Optional[core.Owned]:
    """See L{kvpaxos.client.concurrency.contend}: the same, blocking."""
    step = contender.begin()
    while True:
        if isinstance(step, core.Txn):
            step = contender.txn_answered(client.txn(step.compares, step.success, step.failure))
        elif isinstance(step, core.Listing):
            result = client.range(step.key, step.range_end, keys_only=step.keys_only)
            step = contender.listed(result.kvs, result.revision)
        elif isinstance(step, core.AwaitDelete):
            if not _await_delete(client, held, step, deadline):
                return None
            step = contender.key_deleted()
        elif isinstance(step, core.Owned):
            return step
        else:
            held.check()
            raise step.error()


class _Queued(Queued):
    """The blocking I/O of a turn; see L{kvpaxos.client.concurrency._Queued}."""

    def _turn(self, value: Optional[bytes], timeout_s: Optional[float]) -> bool:
        if self.key is not None:
            raise ClientError(f"{self.prefix!r} is already held (led) by this contender")
        if self._given is None:
            self.lease = self._client.lease(self._ttl)
        held = held_lease(self.lease)
        contender = self._contender(value)
        try:
            held.check()
            held.claim(contender.key)
        except ClientError:
            if self._given is None:
                lease, self.lease = self.lease, None
                lease.close()
            raise
        deadline = None if timeout_s is None else self._client._clock() + timeout_s
        try:
            owned = contend(self._client, held, contender, deadline)
        except BaseException:
            self._withdraw(contender.key)
            raise
        if owned is None:
            self._withdraw(contender.key)
            return False
        self.key, self.revision = owned.key, owned.create_revision
        return True

    def _withdraw(self, key: bytes) -> None:
        """See L{kvpaxos.client.concurrency._Queued._withdraw}."""
        lease = self.lease
        self._ended(key)
        if self._given is None:
            lease.close()
            return
        try:
            self._client.delete(key)
        except ClientError:
            pass

    def _release(self) -> bool:
        """See L{kvpaxos.client.concurrency._Queued._release}."""
        key, revision, lease = self.key, self.revision, self.lease
        if key is None:
            return False
        self._ended(key)
        try:
            if lease.lost is not None:
                return False
            return self._client.txn(*txn_args(core.resign_txn(key, revision))).succeeded
        finally:
            if self._given is None:
                lease.close()


class Lock(_Queued):
    """See L{kvpaxos.client.concurrency.AsyncLock}: the same, blocking (C{with client.lock(name):})."""

    def __init__(self, client, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL,
                 timeout_s: Optional[float] = None) -> None:
        super().__init__(client, name, lease, ttl)
        self.timeout_s = timeout_s

    def acquire(self, timeout_s: Optional[float] = None) -> bool:
        """See L{kvpaxos.client.concurrency.AsyncLock.acquire}."""
        return self._turn(None, timeout_s)

    def release(self) -> bool:
        """See L{kvpaxos.client.concurrency.AsyncLock.release}."""
        return self._release()

    def __enter__(self) -> "Lock":
        if not self.acquire(self.timeout_s):
            raise LockTimeout(f"{self.prefix!r} not acquired within {self.timeout_s}s")
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class Election(_Queued):
    """See L{kvpaxos.client.concurrency.AsyncElection}: the same, blocking."""

    def __init__(self, client, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(client, name, lease, ttl)

    def campaign(self, value: BytesLike, timeout_s: Optional[float] = None) -> bool:
        """See L{kvpaxos.client.concurrency.AsyncElection.campaign}."""
        return self._turn(_bytes(value, "value"), timeout_s)

    def proclaim(self, value: BytesLike) -> None:
        """See L{kvpaxos.client.concurrency.AsyncElection.proclaim}."""
        if self.key is None:
            raise NotElected(f"not leading {self.prefix!r}")
        key = self.key
        txn = core.proclaim_txn(key, self.revision, _bytes(value, "value"), self.lease.id)
        if not self._client.txn(*txn_args(txn)).succeeded:
            self._withdraw(key)
            raise NotElected(f"no longer leading {self.prefix!r}: {key!r} is gone")

    def resign(self) -> bool:
        """Stop leading (delete the key if still ours); return whether it still led."""
        return self._release()

    def leader(self):
        """The leader's record (its C{key}, C{value}, C{create_revision}), or None: nobody leads."""
        return core.owner(self._client.range(self.prefix, prefix=True).kvs)

    def observe(self) -> "Observation":
        """The leader's record at once (if any), then at each change: an iterator (see L{Observation})."""
        return Observation(self._client, self.prefix)


class Observation:
    """
    See L{kvpaxos.client.concurrency.AsyncObservation}: a blocking
    iterator; C{close()} (from any thread) or leaving the C{with} block ends it.
    """

    def __init__(self, client, prefix: bytes) -> None:
        self._client = client
        self.prefix = prefix
        self._closed = threading.Event()
        self._watch = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Observation":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()

    def __iter__(self) -> Iterator[Any]:
        observer = core.Observer(self.prefix)
        step = observer.begin()
        while not self._closed.is_set():
            if isinstance(step, core.Listing):
                result = self._client.range(step.key, step.range_end)
                leader, step = observer.listed(result.kvs, result.revision)
                if leader is not None:
                    yield leader
                continue
            watch = self._client.watch(step.key, step.range_end, start_revision=step.start_revision)
            with self._lock:
                self._watch = watch
            if self._closed.is_set():
                watch.close()
            following = None
            try:
                for event in watch:
                    leader, following = observer.event(event.kind, event.kv)
                    if leader is not None:
                        yield leader
                    if following is not None:
                        break
            except WatchCompacted:
                following = observer.compacted()
            finally:
                with self._lock:
                    self._watch = None
                watch.close()
            if following is None:
                return  # closed
            step = following


class RecipeMethods:
    """The blocking L{kvpaxos.client.Client}'s recipe methods (mixed in)."""

    def lock(self, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL,
             timeout_s: Optional[float] = None) -> Lock:
        """
        The L{Lock} named C{name} (keys C{name/<lease id>}): C{with
        client.lock(name) as lock:} holds it for the block (waiting at
        most C{timeout_s}, None: no limit); C{lock.guard()} is the compare
        that fences the writes it protects.  Without a C{lease} (a held
        L{kvpaxos.client.lease.Lease}), each turn grants one of C{ttl}
        seconds.
        """
        return Lock(self, name, lease, ttl, timeout_s)

    def election(self, name: BytesLike, lease=None, ttl: int = DEFAULT_TTL) -> Election:
        """
        The L{Election} named C{name}: C{campaign(value)}, C{proclaim(value)},
        C{resign()}, C{leader()}, C{observe()}; a campaign without a
        C{lease} grants one of C{ttl} seconds.
        """
        return Election(self, name, lease, ttl)
