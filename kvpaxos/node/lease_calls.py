"""
L{LeaseCalls}: the node's lease calls (issue 14), mixed into
L{kvpaxos.node.service.ReplicaService} (which holds C{replica}, C{store},
C{writes}, C{peers}, C{clock}, C{reactor}, C{options}, C{tick_s}, C{rng},
C{auth}), and the leader's duty of expiring leases (L{kvpaxos.node.leases}).

  - through the log: L{LeaseCalls.lease_grant} (a TTL under the cluster's
    minimum raised to it, etcd's C{minLeaseTTL}; id 0: the node picks one,
    and picks again if it was taken), L{LeaseCalls.lease_revoke};
  - at the leader, confirmed by a read index (a deposed leader answers
    nothing): L{LeaseCalls.lease_keep_alive} (no log write),
    L{LeaseCalls.lease_time_to_live}; a follower forwards them over its peer
    link (AMP C{LeaseKeepAlive}, C{LeaseTimeToLive}) and the leader answers
    them as L{LeaseCalls.lease_keep_alive_requested},
    L{LeaseCalls.lease_time_to_live_requested} (L{IPeerHandler});
  - from this member's store, as it is: L{LeaseCalls.lease_list},
    L{LeaseCalls.lease_keys}.

The service calls L{_ticked} on every tick (the leader's duties: history
compaction, L{kvpaxos.node.compactor}, and lease expiry), L{_batch_applied}
after each Ready it committed (watchers, the lessor, keep-alives waiting
for the applied index), and L{_stop_calls} when it stops.  A store
without lease reads (C{lease_items}) serves no leases: the calls refuse
with L{Unavailable}, and nothing expires.  Reactor thread only.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.api.errors import ApiError
from kvpaxos.kv.auth import Credential
from kvpaxos.kv.commands import MAX_LEASE_ID, InvalidArgument, Op, Request
from kvpaxos.kv.leases import LeaseError, LeaseGranted, LeaseRefused, LeaseRevoked
from kvpaxos.node.interfaces import NotLeaderError, Unavailable
from kvpaxos.node.leases import LeaseTime, Lessor

__all__ = ["LeaseCalls"]


class LeaseCalls:
    """The node's lease calls and the leader's lease expiry (a mixin of the replica service)."""

    #: How many random ids a grant that asked the node to pick one tries
    #: before it gives the last refusal back (a collision of 63-bit ids).
    grant_attempts = 8
    _lessor_of: Optional[Lessor] = None
    #: The ballot the lessor was promoted under (None: not leading).
    _lessor_ballot = None
    _lease_waiters: Optional[list] = None
    _lease_log = Logger()

    @property
    def lessor(self) -> Lessor:
        """This node's L{Lessor} (made at first use)."""
        if self._lessor_of is None:
            self._lessor_of = Lessor(self.clock, self._election_timeout_s())
        return self._lessor_of

    def _election_timeout_s(self) -> float:
        return self.options.election_ticks * self.tick_s

    @property
    def min_lease_ttl(self) -> int:
        """
        The shortest TTL granted, in seconds: 1.5 election timeouts, rounded
        up, at least 1 (etcd's C{minLeaseTTL}); a lease must outlive an
        election, or a change of leader would expire it.
        """
        tick_ms = round(self.tick_s * 1000)
        return max(1, -(-3 * self.options.election_ticks * tick_ms // 2000))

    def _leases_unserved(self) -> Optional[defer.Deferred]:
        """A failed Deferred if this node serves no lease calls (yet), else None."""
        unserved = self._unserved()
        if unserved is None and not hasattr(self.store, "lease_items"):
            return defer.fail(Unavailable(f"node {self.node_id}: this store keeps no leases"))
        return unserved

    # --- through the log ------------------------------------------------------------

    def lease_grant(self, ttl: int, timeout_s: float, lease_id: int = 0,
                    credential: Optional[Credential] = None) -> defer.Deferred:
        """
        Grant a lease of C{ttl} seconds (raised to L{min_lease_ttl}) with id
        C{lease_id}, or, for 0, an id this node picks at random (picked
        again, up to L{grant_attempts} times in all, while the one picked is
        taken), as C{credential}'s user.

        @return: a Deferred firing once applied here with
            L{kvpaxos.kv.leases.LeaseGranted} (the TTL granted and the id), or
            L{kvpaxos.kv.leases.LeaseRefused} (EXISTS: C{lease_id} is taken);
            failing as L{submit} does: L{InvalidArgument} (an id or TTL out of
            range: ids 1..L{MAX_LEASE_ID}, TTLs to L{MAX_LEASE_TTL}),
            L{Unavailable} (not applied within C{timeout_s}, or no member
            set), the space alarm's error (a grant grows the store; etcd
            refuses it too), or auth's errors.
        """
        unserved = self._leases_unserved()
        if unserved is not None:
            return unserved
        refusal = self._no_space()
        if refusal is not None:
            return defer.fail(refusal)
        if type(ttl) is int and ttl < self.min_lease_ttl:
            ttl = self.min_lease_ttl  # etcd raises it too; the log holds the TTL granted
        if lease_id != 0:
            return self.submit(Request(Op.LEASE_GRANT, lease=lease_id, ttl=ttl), timeout_s, credential)
        return self._grant_picked(ttl, timeout_s, credential)

    @defer.inlineCallbacks
    def _grant_picked(self, ttl: int, timeout_s: float, credential):
        deadline = self.clock.seconds() + timeout_s
        result = None
        for _ in range(self.grant_attempts):
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                leader = self.replica.leader
                raise Unavailable(f"no lease granted before the deadline; leader is {leader}", leader)
            lease = self.rng.randint(1, MAX_LEASE_ID)
            if self.store.lease_ttl(lease) is not None:
                continue  # taken here already: no need to ask the log
            result = yield self.submit(Request(Op.LEASE_GRANT, lease=lease, ttl=ttl), remaining, credential)
            if not (type(result) is LeaseRefused and result.error is LeaseError.EXISTS):
                return result
            self._lease_log.info("lease id {lease} was taken; picking another", lease=lease)
        if result is None:
            raise Unavailable(f"node {self.node_id} found no free lease id in {self.grant_attempts} tries")
        return result

    def lease_revoke(self, lease_id: int, timeout_s: float,
                     credential: Optional[Credential] = None) -> defer.Deferred:
        """
        Revoke lease C{lease_id}: its keys are deleted, in one revision, and
        the lease.  A Deferred firing once applied here with
        L{kvpaxos.kv.leases.LeaseRevoked} or L{kvpaxos.kv.leases.LeaseRefused}
        (NOT_FOUND); failing as L{submit} does (auth: the user must be
        allowed to write every key of the lease, checked as it applies).
        """
        return self._leases_unserved() or self.submit(
            Request(Op.LEASE_REVOKE, lease=lease_id), timeout_s, credential)

    # --- from this member's store ---------------------------------------------------

    def lease_list(self) -> defer.Deferred:
        """The ids of the leases in this member's store, ascending (a Deferred; serializable)."""
        return self._leases_unserved() or defer.succeed([lease for lease, _ in self.store.lease_items()])

    def lease_keys(self, lease_id: int, credential: Optional[Credential] = None) -> defer.Deferred:
        """
        The keys attached to lease C{lease_id} in this member's store, in
        key order ([] for an unknown lease; serializable); failing with
        auth's errors if C{credential}'s user may not read one of them.
        """
        unserved = self._leases_unserved()
        if unserved is not None:
            return unserved
        if type(lease_id) is not int:
            return defer.fail(InvalidArgument(f"a lease id must be an integer, not {type(lease_id).__name__}"))
        try:
            user = self.auth.user_of(credential)
            keys = list(self.store.lease_keys(lease_id)) if 1 <= lease_id <= MAX_LEASE_ID else []
            for key in keys:
                self.auth.check_read(user, key, None)
        except ApiError:
            return defer.fail()
        return defer.succeed(keys)

    # --- at the leader --------------------------------------------------------------

    def lease_keep_alive(self, lease_id: int) -> defer.Deferred:
        """
        Keep lease C{lease_id} alive: the leader (this node, or the one a
        follower forwards to) confirms with a read index that it leads and
        has applied everything chosen before, then runs the lease out at
        now + its TTL.

        @return: a Deferred firing with the lease's TTL, or 0 if there is no
            such lease, or it has run out or is being expired (etcd's "not
            found"); failing with L{NotLeaderError} (no leader known, or the
            one asked does not lead: nothing refreshed) or L{Unavailable}
            (the leader did not answer in time: it may have refreshed).
        """
        return self._at_leader(lease_id, "lease_keep_alive", 0)

    def lease_time_to_live(self, lease_id: int) -> defer.Deferred:
        """
        How long lease C{lease_id} has to live, as the leader (confirmed
        as for L{lease_keep_alive}) counts it: a Deferred firing with a
        L{kvpaxos.node.leases.LeaseTime} (granted TTL, whole seconds left,
        rounded up; 0 once run out), or None if there is no such lease;
        failing as L{lease_keep_alive}.
        """
        return self._at_leader(lease_id, "lease_time_to_live", None)

    def _at_leader(self, lease_id: int, call: str, missing) -> defer.Deferred:
        unserved = self._leases_unserved()
        if unserved is not None:
            return unserved
        if type(lease_id) is not int:
            return defer.fail(InvalidArgument(f"a lease id must be an integer, not {type(lease_id).__name__}"))
        if not 1 <= lease_id <= MAX_LEASE_ID:
            return defer.succeed(missing)  # no lease can have that id
        replica = self.replica
        if replica.is_leader:
            return getattr(self, call + "_requested")(lease_id)
        leader = replica.leader
        if leader is None or leader == self.node_id or self.peers is None:
            return defer.fail(NotLeaderError(None))
        return getattr(self.peers, call)(leader, lease_id).addErrback(_unavailable, leader)

    def lease_keep_alive_requested(self, lease_id: int) -> defer.Deferred:
        """
        L{kvpaxos.node.interfaces.IPeerHandler.lease_keep_alive_requested}:
        L{lease_keep_alive} at this node, which must lead.
        """
        return self._confirmed(lease_id, self._refreshed, 0)

    def lease_time_to_live_requested(self, lease_id: int) -> defer.Deferred:
        """
        L{kvpaxos.node.interfaces.IPeerHandler.lease_time_to_live_requested}:
        L{lease_time_to_live} at this node, which must lead.
        """
        return self._confirmed(lease_id, self._time_left, None)

    def _confirmed(self, lease_id: int, answer, missing) -> defer.Deferred:
        """
        C{answer(lease_id)} once this node has confirmed with a read index
        that it leads and has applied through that index (so the store has
        every grant and revoke chosen before the request came), then checked
        it still leads; C{missing} for an id no lease can have.
        """
        replica = self.replica
        if replica is None or self._stopping or not replica.is_leader:
            return defer.fail(NotLeaderError(None if replica is None else replica.leader))
        if type(lease_id) is not int or not 1 <= lease_id <= MAX_LEASE_ID:
            return defer.succeed(missing)
        if not hasattr(self.store, "lease_items"):
            return defer.fail(Unavailable(f"node {self.node_id}: this store keeps no leases"))
        # A new leader gives every lease its TTL + an election timeout from
        # its promotion, which comes an election timeout at least after this
        # round's heartbeats: a refresh counted from the round's start, and
        # answered within an election timeout of it, never outlives that.
        since = self.clock.seconds()
        d = self.read_index_requested()
        d.addCallback(self._lease_applied_through)
        d.addCallback(lambda _: self._still_leading(since))
        d.addCallback(lambda _: answer(lease_id, since))
        return d.addErrback(_timed_out, self.node_id)

    def _still_leading(self, since: float) -> None:
        self._lessor_sync()
        if not self.lessor.leading:
            raise NotLeaderError(self.replica.leader)
        if self.clock.seconds() - since > self._election_timeout_s():
            raise Unavailable(f"node {self.node_id} took over an election timeout to confirm it leads")

    def _refreshed(self, lease_id: int, since: float) -> int:
        ttl = self.store.lease_ttl(lease_id)
        if ttl is None or not self.lessor.refresh(lease_id, ttl, since):
            return 0
        return ttl

    def _time_left(self, lease_id: int, since: float) -> Optional[LeaseTime]:
        ttl = self.store.lease_ttl(lease_id)
        if ttl is None:
            return None
        return LeaseTime(ttl, self.lessor.remaining(lease_id, ttl))

    def _lease_applied_through(self, index: int) -> defer.Deferred:
        """Fire once this node has applied through C{index}; fail with L{Unavailable} if not in time."""
        if self.replica.applied >= index:
            return defer.succeed(None)
        if self._lease_waiters is None:
            self._lease_waiters = []
        d = defer.Deferred()
        entry = (index, d)
        self._lease_waiters.append(entry)

        def lagging(failure):
            failure.trap(defer.TimeoutError)
            if entry in self._lease_waiters:
                self._lease_waiters.remove(entry)
            raise Unavailable(f"node {self.node_id} had not applied through {index} in time")

        return d.addTimeout(self._election_timeout_s() * 2, self.reactor).addErrback(lagging)

    # --- the leader's duties --------------------------------------------------------

    def _lessor_sync(self) -> None:
        """Promote or demote the lessor if this node's leadership changed (a new ballot counts)."""
        replica = self.replica
        if replica is None or not hasattr(self.store, "lease_items"):
            return
        ballot = replica.leader_ballot if replica.is_leader else None
        if ballot == self._lessor_ballot:
            return
        self._lessor_ballot = ballot
        if ballot is None:
            self.lessor.demote()
        else:
            self.lessor.promote(self.store.lease_items())
            self._lease_log.info("node {node} leads: {count} leases run out no sooner than their TTL"
                                 " + {extend} s", node=self.node_id, count=len(self.lessor),
                                 extend=self.lessor.extend_s)

    def _ticked(self) -> None:
        """The tick's leader duties: history compaction, then lease expiry."""
        self._compact_tick()
        self._lessor_sync()
        if self._lessor_ballot is None or self.writes is None:
            return
        lessor = self.lessor
        timeout_s = self._election_timeout_s() * 4
        for lease in lessor.due():
            if self.store.lease_ttl(lease) is None:
                lessor.revoked(lease)  # gone meanwhile (a snapshot); nothing to expire
                continue
            d = self.writes.submit(Request(Op.LEASE_EXPIRE, lease=lease), timeout_s, leader_only=True)
            d.addCallbacks(self._lease_expired, self._lease_expiry_failed,
                           callbackArgs=(lease, lessor.term), errbackArgs=(lease, lessor.term))

    def _lease_expired(self, result, lease: int, term: int) -> None:
        if type(result) in (LeaseRevoked, LeaseRefused):  # expired, or gone already
            self.lessor.revoked(lease)
        else:
            self._lease_log.warn("lease {lease} expiry applied as {result}", lease=lease, result=result)
            self.lessor.expire_ended(lease, term)

    def _lease_expiry_failed(self, failure: Failure, lease: int, term: int) -> None:
        self._lease_log.info("lease {lease} expiry not applied: {error}", lease=lease,
                             error=failure.getErrorMessage())
        self.lessor.expire_ended(lease, term)

    def _batch_applied(self, results, rd) -> None:
        """
        A Ready's C{(request, result)}s are applied and durable, and the
        replica advanced: watchers are fed, the lessor learns of grants and
        revokes, and keep-alives waiting for the applied index go on.
        """
        self._watchers_applied()
        self._lessor_sync()
        if self._lessor_ballot is not None:
            lessor = self.lessor
            for _, result in results:
                kind = type(result)
                if kind is LeaseGranted:
                    lessor.granted(result.id, result.ttl)
                elif kind is LeaseRevoked:
                    lessor.revoked(result.id)
            if rd.install_snapshot:
                lessor.adopt(self.store.lease_items())
        waiters = self._lease_waiters
        if waiters:
            applied = self.replica.applied
            self._lease_waiters = [(i, d) for i, d in waiters if i > applied]
            for index, d in waiters:
                if index <= applied and not d.called:
                    d.callback(None)

    def _stop_calls(self, error: Exception) -> None:
        """The node stops: watchers end, keep-alives waiting fail with C{error}."""
        self._stop_watchers()
        waiters, self._lease_waiters = self._lease_waiters or [], None
        for _, d in waiters:
            if not d.called:
                d.errback(Failure(error))
        if self._lessor_of is not None:
            self._lessor_of.demote()
        self._lessor_ballot = None


def _unavailable(failure: Failure, leader: int):
    """A forwarded lease call's failure as the API's: NOT_LEADER as it is, the rest L{Unavailable}."""
    if failure.check(ApiError):
        return failure
    raise Unavailable(f"the leader did not answer: {failure.getErrorMessage()}; leader is {leader}", leader)


def _timed_out(failure: Failure, node_id: int):
    """A read index that timed out at the leader: L{Unavailable}."""
    failure.trap(defer.TimeoutError)
    raise Unavailable(f"node {node_id} could not confirm its leadership in time")

