"""
The holes issue 9's review found, re-opened on purpose for the node
simulator's C{--plant} (registered in L{kvpaxos.testing.plants}).

Each class here subclasses the product and undoes exactly one fix, so that
a test can show the simulator catches that class of bug.  Nothing in the
product imports this module.

Registered, each with the scenario of L{kvpaxos.testing.scenarios} that
catches it (tests/test_sim_holes.py): holes 2, 4, 5, 6 (both halves), 7, 8, 9
(both), 10 and 11.  Hole 1 is the plant C{eager-prepare}, caught by the
simulator's check that a Prepare leaves only once its ballot is durable
(L{kvpaxos.testing.invariants}) in ordinary seeds; hole 3 is the plant
C{wall-clock-ticks}.  Not registered: L{LateTimeoutNowReplica} (with hole 4
closed and a transfer Prepare waiving stickiness only for the ballot that
asked, a late TimeoutNow finds no lease to break).  Hole 7 (the LMDB read
gate held by a snapshot copy) is L{LongReadHoldsGate}, caught on LMDB
seeds, where the writer and pool threads run in turn with the reactor
(L{kvpaxos.testing.simthreads}); tests/test_storage_gate.py covers the
gate with free-running threads too.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import defer

from kvpaxos.encoding.reader import U64
from kvpaxos.encoding.state import decode_record, decode_session
from kvpaxos.encoding.transfer import (
    TABLE_RECORDS,
    TABLE_SESSIONS,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
)
from kvpaxos.node.reads import ReadPath
from kvpaxos.node.service import ReplicaService
from kvpaxos.node.snapshots import SnapshotPath
from kvpaxos.node.transfers import SnapshotReceiver
from kvpaxos.paxos import Prepare, Promise, Replica, TimeoutNow
from kvpaxos.paxos.election import Candidate
from kvpaxos.paxos.leader import Leader
from kvpaxos.paxos.roles import Follower
from kvpaxos.storage.staging import StagingCheck
from kvpaxos.testing.simthreads import SimReadGate


# --- hole 1: a Prepare before its ballot is durable; a Promise for any first slot


class EagerCandidate(Candidate):
    """Sends its Prepares at once and counts a Promise for any first slot."""

    def _ask(self, nodes) -> None:
        r = self.replica
        for node in sorted(set(nodes) - self.asked):
            self.asked.add(node)
            r.send(Prepare(r.id, node, self.ballot, self.first_slot, self.transfer, self.asked_by))

    def _on_promise(self, m: Promise) -> None:
        if m.ballot != self.ballot:
            return
        self.promises[m.src] = m
        self._try_to_win()


class EagerPrepareReplica(Replica):
    """A replica whose campaigns are L{EagerCandidate}s."""

    def become(self, role) -> None:
        if type(role) is Candidate:
            eager = EagerCandidate(self, role.ballot, role.transfer, role.asked_by)
            role = eager
        super().become(role)


# --- hole 2: messages stepped before the ticks missed in a stall


class AcksFirstService(ReplicaService):
    """Steps a message before it counts the ticks that passed before it."""

    def _step(self, message) -> None:
        self._guard(self.replica.step, message)
        self._catch_up_ticks()
        self._schedule()


# --- hole 3: ticks and the lease counted on the wall clock


class WallClockService(ReplicaService):
    """Counts its ticks, lease and deadlines on C{reactor.seconds()}."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = self.reactor


# --- hole 4 (and the review's late TimeoutNow): a lease after a TimeoutNow


class LeaseAfterTimeoutNowReplica(Replica):
    """Serves lease reads after a TimeoutNow, once the transfer is given up."""

    def lease_read_index(self):
        role = self.role
        if type(role) is Leader:
            role.lease_forfeited = False
        return super().lease_read_index()


class LateTimeoutNowReplica(Replica):
    """Obeys a TimeoutNow however late, as long as its ballot is not old."""

    def become(self, role) -> None:
        if type(role) is Follower:
            role.handlers[TimeoutNow] = self._obey_timeout_now
        super().become(role)

    def _obey_timeout_now(self, m: TimeoutNow) -> None:
        if m.ballot >= self.leader_ballot and self.id in self.config.voters:
            self.campaign(transfer=True, asked_by=self.leader_ballot)


# --- hole 5: no start guard for Prepares


class NoPrepareGuardReplica(Replica):
    """Promises a Prepare at once after it starts (pre-votes stay guarded)."""

    _in_prepare = False

    def _on_prepare(self, m: Prepare) -> None:
        self._in_prepare = True
        try:
            super()._on_prepare(m)
        finally:
            self._in_prepare = False

    def _starting(self) -> bool:
        return False if self._in_prepare else super()._starting()


# --- hole 6: lease reads whatever the peers' timing; no drift allowance


class TimingIgnoredService(ReplicaService):
    """Serves lease reads whatever timing its peers report."""

    def _lease_allowed(self) -> bool:
        return self.lease_reads


class NoDriftReplica(Replica):
    """A leader whose lease lasts the whole election timeout (no allowance)."""

    def __init__(self, node_id, storage, rng, options, *args, **kwargs) -> None:
        options = dataclasses.replace(options, lease_drift_ticks=1)
        object.__setattr__(options, "lease_drift_ticks", 0)
        super().__init__(node_id, storage, rng, options, *args, **kwargs)


# --- hole 7: a snapshot copy holds the LMDB read gate from start to end


class LongReadHoldsGate(SimReadGate):
    """
    The read gate as it was: a snapshot's long read (now each chunk of a
    transfer, read from the stream's transaction) holds it like any read,
    from its start to its end, and never leaves for the writer; so a commit
    that must grow the map shuts the gate and waits for the whole read, and
    the reactor's next read waits with it.
    """

    def reading_long(self):
        return self.reading()

    def asked(self) -> bool:
        super().asked()  # its step still takes its time
        return False


# --- hole 8: a restarted node's serializable reads trust its memory


class TrustingReads(ReadPath):
    """Serves serializable reads as if a read index had been confirmed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._index_confirmed = True


class TrustingReadsService(ReplicaService):
    read_path_class = TrustingReads


# --- hole 9: chosen values from anyone


class CredulousReplica(Replica):
    """Takes a Catchup or InstallSnapshot from any peer, asked or not."""

    def _solicited(self, src: int) -> bool:
        self.catchup_asked.pop(src, None)
        return True

    def would_install(self, m) -> bool:
        return not self.is_leader and self._wanted(m.snapshot)


class UncheckedSnapshotService(ReplicaService):
    """Steps a peer's snapshot without checking that its state decodes."""

    def _checking_snapshot(self, message) -> bool:
        return False


# --- issue 11: a transfer's chunks staged unchecked


class TrustingStagingCheck(StagingCheck):
    """Decodes a transfer's records but checks neither their order nor their revisions."""

    def _check(self, table: int, key: bytes, value: bytes):
        if table == TABLE_RECORDS:
            return decode_record(key, value)
        if table == TABLE_SESSIONS:
            return U64.unpack(key)[0], decode_session(value)
        return key, value


def trust_chunks(service) -> None:
    """Make C{service}'s store stage a transfer with L{TrustingStagingCheck}."""
    staging = service.store.staging
    begin = staging.begin

    def trusting_begin(transfer, revision, next_client_id) -> None:
        begin(transfer, revision, next_client_id)
        staging._check = TrustingStagingCheck(revision, next_client_id)

    staging.begin = trusting_begin


# --- hole 10: a fatal stop that leaves no reason (exits 0)


class SilentFatalService(ReplicaService):
    """Stops on a fatal error without recording why (twistd then exits 0)."""

    def _fatal(self, failure) -> None:
        super()._fatal(failure)
        self.fatal_error = None


# --- hole 11: the chosen index learned only with the next heartbeat


class LateLearningReplica(Replica):
    """A leader that tells followers its chosen index only with its heartbeats."""

    def _quiet(self) -> None:
        role = self.role
        if type(role) is Leader:
            role.announced_chosen = self.chosen_index

    def has_ready(self) -> bool:
        self._quiet()
        return super().has_ready()

    def ready(self):
        self._quiet()
        return super().ready()


# --- issue 11: a stepped install the core did not take, kept as if taken


class KeepsUntakenReceiver(SnapshotReceiver):
    """
    Steps a finished transfer's install and, when the core does not take it
    (the ticks counted before the step ended the catch-up it asked for),
    keeps the staging and waits for that install anyway: every later offer
    is refused as busy installing, so the node never catches up.
    """

    def _finished(self, staged, came) -> None:
        stepped = []
        step, on_writer = self._step, self._on_writer
        discard = self._store.staging.discard
        before = self.installed

        def stepping(message) -> None:
            stepped.append(message)
            step(message)

        def keeping(call, *args):
            if stepped and call == discard:
                return defer.succeed(None)
            return on_writer(call, *args)

        self._step, self._on_writer = stepping, keeping
        try:
            super()._finished(staged, came)
        finally:
            self._step, self._on_writer = step, on_writer
        if stepped and self.installed == before:
            self._installing = came.offer.index


class KeepsUntakenPath(SnapshotPath):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        old = self.receiver
        self.receiver = KeepsUntakenReceiver(
            old._id, old._replica, old._store, old._peers, old._reactor, old._on_writer,
            old._step, old._stopping, old.window, old.timeout_s,
        )
        self._routes.update({
            SnapshotOffer: self.receiver.offered,
            SnapshotChunk: self.receiver.chunk,
            SnapshotDone: self.receiver.done,
        })


class KeepsUntakenService(ReplicaService):
    """A service whose snapshot receiver is a L{KeepsUntakenReceiver}."""

    snapshot_path_class = KeepsUntakenPath


# --- issue 11: a removed member never told


class SilentRemovalLeader(Leader):
    """A leader that sends a member it removed no last heartbeat."""

    def config_changed(self) -> None:
        r = self.replica
        if r.id not in r.config.voters:
            r.step_down(leader=None)
            return
        self._update_peers()


class SilentRemovalReplica(Replica):
    def become(self, role) -> None:
        if type(role) is Leader:
            role.__class__ = SilentRemovalLeader
        super().become(role)


class UnrefusedRemovedService(ReplicaService):
    """
    A member that refuses a removed node's link as an unknown member, not
    REMOVED_MEMBER: a removed node that missed the leader's last heartbeat
    (partitioned, down, or the link reset) never learns it was removed.
    """

    def was_removed(self, member: int) -> bool:
        return False


class SilentRemovalService(UnrefusedRemovedService):
    """
    A member that never tells a removed node it was removed: no last
    heartbeat from the leader that removed it, and its link refused as an
    unknown member, not REMOVED_MEMBER.  A removed node that missed the
    change keeps running (and campaigning) for ever.
    """

    replica_class = SilentRemovalReplica
