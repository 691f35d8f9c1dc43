"""
What the lock and election objects of both clients keep between their
steps (L{kvpaxos.client.concurrency}, L{kvpaxos.client.concurrency_blocking}):
the registry of held leases (L{HeldLease}: who to tell once a lease is
found gone, which keys its contenders use) and a contender's turn
(L{Queued}: its lease, key and fencing revision).  No I/O: the drivers
send; the decisions are L{kvpaxos.client.concurrency_core}'s.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional

from kvpaxos.client import concurrency_core as core
from kvpaxos.client.errors import ClientError
from kvpaxos.client.requests import BytesLike

__all__ = ["DEFAULT_TTL", "HeldLease", "LockTimeout", "Queued", "held_lease", "txn_args"]

#: A turn's lease TTL (seconds) when none is given: etcd's C{defaultSessionTTL}.
DEFAULT_TTL = 60


class LockTimeout(ClientError):
    """A lock (or a campaign) entered as a context manager was not acquired within its C{timeout_s}."""


class HeldLease:
    """
    What the recipes keep of one held lease (a L{kvpaxos.client.lease.Lease}
    or L{AsyncLease}): who to tell once it is found gone, and the keys its
    contenders use, so that two contenders of this process never share one
    key (both would believe they hold the lock).  One per lease
    (L{held_lease}); it chains the lease's own C{on_lost}.
    """

    def __init__(self, lease) -> None:
        # Weakly: the registry's values must not keep its keys (the leases) alive.
        self._lease = weakref.ref(lease)
        self._keys: set = set()
        self._listeners: list = []
        self._lock = threading.Lock()
        earlier = lease.on_lost

        def lost(held) -> None:
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener()
            if earlier is not None:
                earlier(held)
        lease.on_lost = lost

    @property
    def lease(self):
        return self._lease()

    def check(self) -> None:
        """Raise the lease's L{LeaseExpired} if it is gone."""
        self.lease.check()

    def listen(self, listener: Callable[[], Any]) -> Callable[[], None]:
        """
        Call C{listener()} once the lease is found gone (now, if it is);
        return the function that stops listening.  Called from the renewing
        thread (or task): quick and thread-safe.
        """
        with self._lock:
            self._listeners.append(listener)
        if self.lease.lost is not None:
            listener()

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return stop

    def claim(self, key: bytes) -> None:
        with self._lock:
            if key in self._keys:
                raise ClientError(f"a contender on this lease already holds or waits for {key!r}: give the "
                                  "second one a lease of its own")
            self._keys.add(key)

    def drop(self, key: bytes) -> None:
        with self._lock:
            self._keys.discard(key)


_HELD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_HELD_LOCK = threading.Lock()


def held_lease(lease) -> HeldLease:
    """The L{HeldLease} of C{lease} (a granted, held lease), made at its first use."""
    with _HELD_LOCK:
        held = _HELD.get(lease)
        if held is None:
            held = _HELD[lease] = HeldLease(lease)
        return held


class Queued:
    """
    What a lock and an election share (both clients): the lease (given,
    or granted per turn) and the contender's key.  A driver subclass
    supplies the I/O.

    @ivar lease: the lease of the current turn (None between turns
        without a given one).
    @ivar key: the contender's key while it holds (leads); else None.
    @ivar revision: that key's create revision (the fencing token).
    """

    def __init__(self, client, name: BytesLike, lease, ttl: int) -> None:
        self._client = client
        self.prefix = core.recipe_prefix(name)
        self._given = lease
        self._ttl = ttl
        self.lease = lease
        self.key: Optional[bytes] = None
        self.revision: Optional[int] = None

    @property
    def held(self) -> bool:
        """Whether this contender owns the lock (leads), as far as it knows: acquired, and the lease not lost."""
        return self.key is not None and self.lease is not None and self.lease.lost is None

    def guard(self):
        """
        The compare that holds exactly while this contender owns the lock:
        put it in every transaction the lock protects.

        @raise ClientError: not held.
        """
        if self.key is None:
            raise ClientError(f"{self.prefix!r} is not held by this contender")
        return core.guard(self.key, self.revision)

    def when_lost(self, listener: Callable[[], Any]) -> Callable[[], None]:
        """
        Call C{listener()} once the lease held by is found gone (see
        L{HeldLease.listen}); return the function that stops listening.

        @raise ClientError: not held.
        """
        if self.key is None:
            raise ClientError(f"{self.prefix!r} is not held by this contender")
        return held_lease(self.lease).listen(listener)

    def _contender(self, value: Optional[bytes]) -> core.Contender:
        if value is None:
            return core.Contender(self.prefix, self.lease.id)
        return core.Contender(self.prefix, self.lease.id, value, proclaim=True)

    def _ended(self, key: bytes) -> None:
        held_lease(self.lease).drop(key)
        self.key = self.revision = None
        if self._given is None:
            self.lease = None


def txn_args(txn: core.Txn) -> tuple:
    return txn.compares, txn.success, txn.failure
