"""
The decisions of the lock and election recipes, with no I/O: what
transaction to send, how to read its answer, which key to wait on, and when
a contender owns the lock (or leads the election).  The recipe is etcd's
(C{client/v3/concurrency}: C{mutex.go}, C{election.go}, C{key.go}); the
drivers that perform the steps over a client are
L{kvpaxos.client.concurrency} (asyncio) and
L{kvpaxos.client.concurrency_blocking}, and a simulator can drive the very
same objects against a simulated cluster.

The scheme.  A lock (or an election) named C{NAME} is the keys under the
prefix C{NAME/}.  A contender holds a lease (its session) and puts the key
C{NAME/<lease id in hex>}, attached to the lease.  The owner is the key
with the lowest create revision (ties, which only a foreign transaction
putting several keys at once can make, go to the lower key); every key
under the prefix is a contender, so nothing else belongs there.  A contender
that is not the owner waits for the deletion of its predecessor (the key
with the highest create revision below its own), then reads the keys
again, until it has no predecessor: then it owns the lock, and keeps it as
long as its key exists, since every key created later has a higher create
revision.  Its key goes when it unlocks (deletes it), or when its lease
ends (revoked, or run out): a holder cut off from the cluster can lose the
lock without knowing.  So a holder guards the writes the lock protects
with L{guard}: a compare of its key's create revision, which holds exactly
while it owns the lock (the fencing token of etcd's C{Mutex.IsOwner}).

Keys and revisions are the client's (C{kvpaxos.v1}); the keys of this
scheme are etcd's, so kvpaxos's candidates and C{etcdctl elect} on
kvpaxos's etcd port queue together (C{etcdctl lock} needs a sorted range
inside a txn, which the etcd port does not serve yet).  Nothing here sends, reads a clock, sleeps or waits: a
driver asks for the next step and reports what came of it.

Steps (what the driver does next): L{Txn}, L{Listing}, L{AwaitDelete},
L{Watching}; and the ends of an acquisition: L{Owned}, L{Lost}.  Records
are read by their C{key}, C{value}, C{create_revision} and C{mod_revision}
attributes (a C{kvpaxos.v1.KeyValue}, or the state machine's record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from kvpaxos.api.limits import prefix_end
from kvpaxos.client.errors import ClientError
from kvpaxos.client.requests import BytesLike, _bytes, compare_create_revision, delete_op, get_op, put_op, range_op

__all__ = [
    "AwaitDelete", "Contender", "Listing", "Lost", "LockLost", "NotElected", "Observer", "Owned", "RecipeMisuse",
    "Txn", "Watching", "contender_key", "guard", "owner", "predecessor", "proclaim_txn", "recipe_prefix",
    "resign_txn",
]


class LockLost(ClientError):
    """
    The contender's key is gone, or is no longer the one it created: its
    lease ran out or was revoked, or someone deleted the key.  It does not
    own the lock (or lead the election), whatever it believed.
    """


class NotElected(ClientError):
    """A proclaim (or a guarded write) by a contender that does not lead the election (etcd's "not leader")."""


class RecipeMisuse(ClientError):
    """The caller drove a recipe object out of order (a bug in the driver, not the cluster's doing)."""


# --- steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class Txn:
    """Send this transaction (C{kvpaxos.v1} messages); report its C{TxnResponse} to C{txn_answered}."""

    compares: tuple
    success: tuple
    failure: tuple = ()


@dataclass(frozen=True)
class Listing:
    """
    Read the keys in [key, range_end), every page (values too unless
    C{keys_only}); report the records and the first page's revision to
    C{listed}.
    """

    key: bytes
    range_end: bytes
    keys_only: bool = True


@dataclass(frozen=True)
class AwaitDelete:
    """
    Watch C{key} from C{start_revision} (inclusive) until it is deleted,
    then call C{key_deleted}.  Puts of it are not waited for.  If the watch
    is compacted away (its history is gone), call C{key_deleted} too: the
    keys are read again, which is always safe.
    """

    key: bytes
    start_revision: int


@dataclass(frozen=True)
class Watching:
    """
    (Observer) Watch [key, range_end) (C{range_end} empty: the one key)
    from C{start_revision}, reporting each event to C{Observer.event}
    until it returns a new step; a compacted watch goes to
    C{Observer.compacted}.
    """

    key: bytes
    range_end: bytes
    start_revision: int


@dataclass(frozen=True)
class Owned:
    """
    The contender owns the lock (leads the election): C{key} exists with
    C{create_revision} (the fencing token), as the read at C{revision} showed.
    """

    key: bytes
    create_revision: int
    revision: int


@dataclass(frozen=True)
class Lost:
    """The contender's key is gone (see L{LockLost}); C{reason} says how it was found."""

    reason: str

    def error(self) -> LockLost:
        return LockLost(self.reason)


Step = Union[Txn, Listing, AwaitDelete, Owned, Lost]


# --- the key space and the pure reads ---------------------------------------------


def recipe_prefix(name: BytesLike) -> bytes:
    """The prefix of lock or election C{name}: C{name + "/"} (etcd's C{NewMutex}/C{NewElection})."""
    prefix = _bytes(name, "lock name") + b"/"
    if prefix == b"/":
        raise ClientError("a lock or election needs a name")
    return prefix


def contender_key(prefix: bytes, lease_id: int) -> bytes:
    """The key a contender holding lease C{lease_id} puts: the prefix, then the id in hex (etcd's C{%x})."""
    if type(lease_id) is not int or lease_id <= 0:
        raise ClientError(f"a contender needs a granted lease, not {lease_id!r}")
    return prefix + format(lease_id, "x").encode("ascii")


def _place(kv: Any) -> tuple:
    """A record's place in the queue: by create revision, then (ties) by key."""
    return (kv.create_revision, kv.key)


def owner(kvs: Iterable[Any]) -> Optional[Any]:
    """The record that owns the lock among C{kvs} (all of one prefix): the lowest place; None if there is none."""
    return min(kvs, key=_place, default=None)


def predecessor(kvs: Iterable[Any], mine: Any) -> Optional[Any]:
    """The record just before C{mine} in the queue (the highest place below it), or None: C{mine} is first."""
    place = _place(mine)
    return max((kv for kv in kvs if _place(kv) < place), key=_place, default=None)


def guard(key: bytes, create_revision: int):
    """
    The compare that holds exactly while the contender whose key is
    C{key}, created at C{create_revision}, owns the lock: put it in every
    transaction the lock protects (etcd's C{Mutex.IsOwner}).
    """
    return compare_create_revision(key, "==", create_revision)


def proclaim_txn(key: bytes, create_revision: int, value: bytes, lease_id: int) -> Txn:
    """The leader's new value, put only while it still leads (etcd's C{Proclaim}); not succeeded: L{NotElected}."""
    return Txn((guard(key, create_revision),), (put_op(key, value, lease=lease_id),))


def resign_txn(key: bytes, create_revision: int) -> Txn:
    """Delete the contender's key, only if it is still the one it created (unlock, resign)."""
    return Txn((guard(key, create_revision),), (delete_op(key),))


# --- a contender: acquiring a lock, campaigning in an election --------------------


class Contender:
    """
    One acquisition of a lock (or one campaign) by the contender holding
    lease C{lease_id} (etcd's C{Mutex.Lock}, C{Election.Campaign}).

        step = contender.begin()                      # a Txn
        while not isinstance(step, (Owned, Lost)):
            ... perform step, then report:            # txn_answered / listed / key_deleted
        # Owned: it holds the lock; Lost: its key is gone

    The first transaction puts the key if it does not exist (else reads
    it: this lease already has a place, which it keeps) and, in the same
    revision, reads every key of the prefix (keys only), so an uncontended
    lock costs one round trip.  With C{value} (an election) the key holds
    that value; C{proclaim} (elections): a key that was there already with
    another value gets this one by a guarded put, as etcd's C{Campaign}.

    @ivar key: the contender's key.
    @ivar create_revision: its create revision, once known (None before).
    """

    def __init__(self, prefix: bytes, lease_id: int, value: bytes = b"", proclaim: bool = False) -> None:
        self.prefix = prefix
        self.lease_id = lease_id
        self.key = contender_key(prefix, lease_id)
        self.value = _bytes(value, "value")
        self._proclaim = proclaim
        self.create_revision: Optional[int] = None
        #: What the driver is to report next: "begin", "txn", "proclaim", "listed", "deleted", "done".
        self._expect = "begin"
        #: The first transaction's reading of the prefix, kept across a proclaim.
        self._pending: Optional[tuple] = None

    def _expecting(self, *states: str) -> None:
        if self._expect not in states:
            raise RecipeMisuse(f"the contender expected {' or '.join(states)}, not {self._expect}")

    def _end(self, step: Step) -> Step:
        if isinstance(step, (Owned, Lost)):
            self._expect = "done"
        return step

    def listing(self) -> Listing:
        """The read of every key of the prefix."""
        return Listing(self.prefix, prefix_end(self.prefix))

    def begin(self) -> Txn:
        """The first transaction: if our key does not exist put it (with the lease), else read it; read the prefix."""
        self._expecting("begin")
        self._expect = "txn"
        absent = compare_create_revision(self.key, "==", 0)
        everyone = range_op(self.prefix, prefix_end(self.prefix), keys_only=True)
        return Txn((absent,), (put_op(self.key, self.value, lease=self.lease_id), everyone),
                   (get_op(self.key), everyone))

    def txn_answered(self, response) -> Step:
        """
        Report the C{TxnResponse} of the step L{begin} (or of a proclaim)
        returned; return the next step.

        @raise RecipeMisuse: no transaction was asked for.
        @raise ClientError: the answer does not have the transaction's shape
            (the server's fault).
        """
        self._expecting("txn", "proclaim")
        if self._expect == "proclaim":
            if not response.succeeded:
                return self._end(Lost(f"{self.key!r} was gone when its value was proclaimed"))
            return self._after_txn(*self._pending)
        responses = response.responses
        if len(responses) != 2 or not responses[1].HasField("response_range"):
            raise ClientError(f"the lock's transaction was answered with {len(responses)} responses, not its two")
        everyone = responses[1].response_range
        if response.succeeded:
            self.create_revision = response.header.revision
        else:
            mine = responses[0].response_range.kvs if responses[0].HasField("response_range") else ()
            if not mine:
                raise ClientError(f"the lock's transaction found {self.key!r} and then did not return it")
            self.create_revision = mine[0].create_revision
            if self._proclaim and mine[0].value != self.value:
                self._expect = "proclaim"
                self._pending = (everyone, response.header.revision)
                return proclaim_txn(self.key, self.create_revision, self.value, self.lease_id)
        return self._after_txn(everyone, response.header.revision)

    def _after_txn(self, everyone, revision: int) -> Step:
        """Go on from the first transaction's reading of the prefix (C{everyone}, a C{RangeResponse})."""
        self._expect = "listed"
        if everyone.more:  # the one response was cut: read every page
            return self.listing()
        return self.listed(list(everyone.kvs), revision)

    def listed(self, kvs: Sequence[Any], revision: int) -> Step:
        """
        Report the records under the prefix (as read at C{revision}, the
        first page's, if paged); return L{Owned}, L{Lost} or the
        L{AwaitDelete} of the predecessor.

        Pages may be read at different revisions, which is safe: a key
        with a place before ours was created before ours, and once gone
        never comes back with that place (a new key has a later create
        revision); so a predecessor missing from a page is gone for good.
        """
        self._expecting("listed")
        mine = next((kv for kv in kvs if kv.key == self.key), None)
        if mine is None:
            return self._end(Lost(f"{self.key!r} is gone (its lease ended, or it was deleted)"))
        if mine.create_revision != self.create_revision:
            return self._end(Lost(f"{self.key!r} was deleted and created again (at revision "
                                  f"{mine.create_revision}, not {self.create_revision})"))
        before = predecessor(kvs, mine)
        if before is None:
            return self._end(Owned(self.key, self.create_revision, revision))
        self._expect = "deleted"
        return AwaitDelete(before.key, revision + 1)

    def key_deleted(self) -> Listing:
        """The awaited key was deleted (or its watch was compacted away): read the prefix again."""
        self._expecting("deleted")
        self._expect = "listed"
        return self.listing()


# --- an observer: who leads the election, and each change ------------------------


class Observer:
    """
    Who leads an election, as it changes (etcd's C{Election.Observe}): the
    driver performs each step and reports back; C{listed} and C{event}
    return the leader's record to report (None: nothing new) and the next
    step (None: keep watching).

        step = observer.begin()                       # a Listing
        leader, step = observer.listed(kvs, revision) # a Watching
        leader, step = observer.event(kind, kv)       # for each event

    With a leader, the observer watches its key: each put is the leader's
    new value (reported), its delete ends its term (the keys are read
    again).  With none, it watches the prefix for the first put, which
    creates the key that leads (every key there was created after the read).
    """

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        #: The key of the leader being watched (None: waiting for a first one).
        self.leader_key: Optional[bytes] = None
        self._expect = "begin"

    def _expecting(self, *states: str) -> None:
        if self._expect not in states:
            raise RecipeMisuse(f"the observer expected {' or '.join(states)}, not {self._expect}")

    def begin(self) -> Listing:
        self._expecting("begin")
        self._expect = "listed"
        return Listing(self.prefix, prefix_end(self.prefix), keys_only=False)

    def listed(self, kvs: Sequence[Any], revision: int) -> tuple[Optional[Any], Watching]:
        """Report the records (with values) under the prefix, read at C{revision}."""
        self._expecting("listed")
        self._expect = "event"
        leader = owner(kvs)
        if leader is None:
            self.leader_key = None
            return None, Watching(self.prefix, prefix_end(self.prefix), revision + 1)
        self.leader_key = leader.key
        return leader, Watching(leader.key, b"", revision + 1)

    def event(self, kind: str, kv: Any) -> tuple[Optional[Any], Optional[Union[Listing, Watching]]]:
        """Report one event (C{kind} C{"put"} or C{"delete"}) of the watch asked for."""
        self._expecting("event")
        if self.leader_key is None:
            if kind != "put":
                return None, None  # a key created and deleted since: not a leader to report
            self.leader_key = kv.key
            return kv, Watching(kv.key, b"", kv.mod_revision + 1)
        if kv.key != self.leader_key:
            return None, None
        if kind == "put":
            return kv, None
        self._expect = "listed"
        return None, Listing(self.prefix, prefix_end(self.prefix), keys_only=False)

    def compacted(self) -> Listing:
        """The watch was compacted away: read the prefix again (a leader may be reported twice)."""
        self._expecting("event")
        self._expect = "listed"
        return Listing(self.prefix, prefix_end(self.prefix), keys_only=False)
