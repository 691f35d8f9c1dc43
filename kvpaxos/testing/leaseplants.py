"""
The lease bugs the node simulator can plant (issue 14), each re-opening a
class of bug in the node's KV leases (L{kvpaxos.node.lease_calls},
L{kvpaxos.node.leases}, L{kvpaxos.kv.leases}) from the testing side; the
registry, with each plant's name, description and the violations that
catch it, is L{kvpaxos.testing.plants}, and L{tests.test_sim_leases}
shows each caught.

Each overrides a method of the service's lease calls or write path, or a
function of the state machine; if that is renamed the plant quietly does
nothing, and its test fails.
"""

from __future__ import annotations

from contextlib import contextmanager

from twisted.internet import defer

from kvpaxos.encoding.commands import decode_request
from kvpaxos.kv import leases
from kvpaxos.kv.commands import MAX_LEASE_ID, CorruptCommand, InvalidArgument
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.node.leases import Lessor
from kvpaxos.node.service import ReplicaService
from kvpaxos.node.writes import WritePath
from kvpaxos.paxos import NotLeader, ProposalRejected

__all__ = ["FollowerExpiresService", "UnconfirmedKeepAliveService", "WallClockLessorService",
           "no_promotion_extension", "revoke_keeps_keys"]


class _AnyLeadership:
    """A write path as the planted lessor sees it: its decisions go like any write (queued, forwarded)."""

    def __init__(self, writes) -> None:
        self._writes = writes

    def submit(self, request, timeout_s: float, leader_only: bool = False):
        return self._writes.submit(request, timeout_s)

    def __getattr__(self, name):
        return getattr(self._writes, name)


class ExpiryTakingWrites(WritePath):
    """A leader takes a forwarded LEASE_EXPIRE like any command."""

    def proposals_forwarded(self, commands) -> defer.Deferred:
        replica = self._replica
        if self._stopping() or not replica.is_leader:
            return defer.fail(NotLeaderError(replica.leader))
        for data in commands:
            try:
                decode_request(data)
            except CorruptCommand as error:
                return defer.fail(InvalidArgument(f"forwarded command is corrupt: {error}"))
        try:
            for data in commands:
                self._guard(replica.propose, data)
        except (NotLeader, ProposalRejected):
            return defer.fail(NotLeaderError(replica.leader))
        self._schedule()
        return defer.succeed(None)


class FollowerExpiresService(ReplicaService):
    """
    A leader that loses the lead keeps its lessor (its deadlines from when
    it led) and goes on expiring leases from it as a follower: its
    LEASE_EXPIREs are submitted without C{leader_only}, so queued and
    forwarded, and the leader takes them.
    """

    write_path_class = ExpiryTakingWrites

    def _lessor_sync(self) -> None:
        replica = self.replica
        if replica is not None and self._lessor_ballot is not None and not replica.is_leader:
            return  # deposed: keeps its deadlines, and its duty
        super()._lessor_sync()

    def _ticked(self) -> None:
        self._compact_tick()
        writes = self.writes
        self._compact_tick = lambda: None
        if writes is not None:
            self.writes = _AnyLeadership(writes)
        try:
            super()._ticked()
        finally:
            self.writes = writes
            del self._compact_tick


def no_promotion_extension(service) -> None:
    """A new leader runs every lease out at now + TTL, not TTL + the election timeout (an on_start hook)."""
    service._lessor_of = Lessor(service.clock, 0.0)


class _WallClock:
    """The machine's wall clock, which steps (the simulated reactor's own C{seconds})."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def seconds(self) -> float:
        return type(self._reactor).seconds(self._reactor)


class WallClockLessorService(ReplicaService):
    """
    The lessor counts deadlines on the wall clock, not the monotonic one
    (a keep-alive refreshes from the wall clock's now): a forward step of
    the leader's wall clock runs every lease out early.
    """

    def startService(self) -> None:
        self._lessor_of = Lessor(_WallClock(self.reactor), self._election_timeout_s())
        super().startService()

    def _refreshed(self, lease_id: int, since: float) -> int:
        ttl = self.store.lease_ttl(lease_id)
        if ttl is None or not self.lessor.refresh(lease_id, ttl):
            return 0
        return ttl


class UnconfirmedKeepAliveService(ReplicaService):
    """
    A leader answers a keep-alive (and a time-to-live) at once, without the
    read index round that confirms it still leads: a deposed leader that
    has not heard of its successor refreshes leases the successor expires.
    """

    def _confirmed(self, lease_id: int, answer, missing) -> defer.Deferred:
        replica = self.replica
        if replica is None or self._stopping or not replica.is_leader:
            return defer.fail(NotLeaderError(None if replica is None else replica.leader))
        if type(lease_id) is not int or not 1 <= lease_id <= MAX_LEASE_ID:
            return defer.succeed(missing)
        since = self.clock.seconds()
        self._lessor_sync()
        return defer.maybeDeferred(answer, lease_id, since)


@contextmanager
def revoke_keeps_keys():
    """A revoke or expiry detaches its lease's keys and removes the lease, but deletes none of them."""
    revoke = leases.apply_revoke

    def keeping(view, request):
        lease = request.lease
        if view.lease_ttl(lease) is None:
            return revoke(view, request)
        for key in list(view.lease_keys(lease)):
            view.lease_detach(key)
        view.lease_remove(lease)
        return leases.LeaseRevoked(lease, 0, view.revision())

    leases.apply_revoke = keeping
    try:
        yield
    finally:
        leases.apply_revoke = revoke
