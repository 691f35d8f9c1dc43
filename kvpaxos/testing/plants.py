"""
Bugs the node simulator (L{kvpaxos.testing.sim}) can plant, to show that its
checker bites: each re-opens a bug on purpose from the testing side, by
subclassing or patching the product, never by editing it.

A L{Plant} may supply any of:

  - C{service_class}: a L{ReplicaService} subclass the simulator builds
    every node from;
  - C{replica_class}: a L{kvpaxos.paxos.Replica} subclass the service
    builds its core from (as C{ReplicaService.replica_class});
  - C{on_start}: a hook C{(service) -> None} run just before each node's
    C{startService};
  - C{patch}: a context manager factory, entered around the whole run (a
    change of the product's state machine, which the reference replays
    too, so that only the history can tell).

To add one, write its pieces here and add it to L{PLANTS}: the command
line (C{--plant NAME}) and the tests (C{tests/test_sim.py}, which asserts
each plant is caught within 500 seeds) find it there.  C{catches} names
the violation kinds that count as catching it.

Each plant here overrides one method of the service's write or read path
(C{ReplicaService.write_path_class}, C{read_path_class}), of the service's
watch calls or compactor, or of the watchers' or the memory staging's
classes; if that method is renamed the plant quietly does nothing, and its
test fails.  The lease plants are written in L{kvpaxos.testing.leaseplants}, the lock
recipe's in L{kvpaxos.testing.lockplants}.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet import defer

from kvpaxos.api.errors import ApiError
from kvpaxos.kv import machine
from kvpaxos.kv.auth import AuthError, AuthRefused, request_permitted, state_grants
from kvpaxos.kv.auth_apply import AuthGuard
from kvpaxos.encoding.commands import decode_request
from kvpaxos.kv.sessions import DEFAULT_LIMITS
from kvpaxos.node.peer_commands import ForwardFailed
from kvpaxos.node.reads import ReadPath
from kvpaxos.node.service import ReplicaService
from kvpaxos.node.watchers import Batch, Watchers
from kvpaxos.node.writes import WritePath, grows_the_store
from kvpaxos.storage.memory import MemoryState
from kvpaxos.storage.memory_transfer import MemoryStaging
from kvpaxos.testing import holes, leaseplants, lockplants
from kvpaxos.testing.coreplants import UnconfirmedReadReplica
from kvpaxos.testing.simthreads import SimReadGate


@dataclass(frozen=True)
class Plant:
    """One planted bug: what it replaces, and which violations catch it."""

    name: str
    doc: str
    catches: frozenset
    service_class: Optional[type] = None
    replica_class: Optional[type] = None
    on_start: Optional[Callable] = None
    patch: Optional[Callable] = None


class EarlyAnswerWrites(WritePath):
    """
    Answers a client as soon as its leader proposes the command (before it
    is chosen), with the result the leader's store predicts for it.
    """

    store = None  # set by EarlyAnswerService

    def route(self) -> None:
        replica = self._replica
        early = []
        if replica.is_leader:
            early = [(r, c) for r, c in self._unsent if r in self._pending]
        super().route()
        if not early or self.store is None:
            return
        queued = {r for r, _ in self._unsent}
        state = MemoryState.from_snapshot(self.store.snapshot_data())
        limits = getattr(self.store, "limits", DEFAULT_LIMITS)
        slot = replica.chosen_index + 1
        for request_id, data in early:
            if request_id in queued or request_id not in self._pending:
                continue
            request = self._decoded.get(data) or decode_request(data)
            result = machine.apply(state, request, slot, limits)
            d, timer = self._pending.pop(request_id)
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(result)


class EarlyAnswerService(ReplicaService):
    write_path_class = EarlyAnswerWrites

    def startService(self) -> None:
        super().startService()
        self.writes.store = self.store


class ResendUnknownWrites(WritePath):
    """Sends a forward again though its outcome was unknown (it may have been proposed)."""

    def _forward_failed(self, failure, unsent) -> None:
        if failure.check(ForwardFailed) and not self._stopping():
            self._unsent.extend(unsent)
            return
        super()._forward_failed(failure, unsent)


class ResendUnknownService(ReplicaService):
    write_path_class = ResendUnknownWrites


class SerializableIgnoresAnsweredReads(ReadPath):
    """Serves a serializable read from the store as it is, ignoring what this node answered."""

    def _read(self, read, timeout_s, consistency):
        if consistency == "serializable":
            return defer.maybeDeferred(read)
        return super()._read(read, timeout_s, consistency)


class SerializableIgnoresAnsweredService(ReplicaService):
    read_path_class = SerializableIgnoresAnsweredReads


class ProposeThenRefuseWrites(WritePath):
    """
    Checks the space quota after taking a write (issue 13, part 5): a write
    that would grow the store while the alarm is on is proposed all the
    same, and its client told it was refused.
    """

    def submit(self, request, timeout_s, leader_only=False):
        refusal = self._no_space() if grows_the_store(request) else None
        if refusal is None:
            return super().submit(request, timeout_s, leader_only)
        no_space, self._no_space = self._no_space, lambda: None
        try:
            super().submit(request, timeout_s, leader_only).addErrback(lambda _: None)
        finally:
            self._no_space = no_space
        return defer.fail(refusal)


class ProposeThenRefuseService(ReplicaService):
    write_path_class = ProposeThenRefuseWrites


class TornBackupService(ReplicaService):
    """
    Backups whose header names the slot the store had applied when the
    backup was asked for, read before the stream's own read transaction
    opened in its pool thread (issue 13, part 4): writes applied in
    between make the header and the records two moments.
    """

    def open_backup(self):
        import dataclasses

        index = self.store.applied_index()
        return super().open_backup().addCallback(
            lambda opened: (opened[0], dataclasses.replace(opened[1], index=index)))


class SubmitTimeAuthService(ReplicaService):
    """
    Checks a write's permission when this member takes it, against its
    applied auth state (which may be behind the log), and refuses it
    there; with L{_no_apply_time_check}, never again when it applies.
    """

    def submit(self, request, timeout_s, credential=None):
        unserved = self._unserved()
        if unserved is not None:
            return unserved
        try:
            user = self.auth.user_of(credential)
        except ApiError:
            return defer.fail()
        state = self.auth.state
        if state.enabled and not request_permitted(state_grants(state, user), request):
            return defer.succeed(AuthRefused(AuthError.PERMISSION_DENIED))
        return super().submit(request, timeout_s, credential)


class TakeTimeReadAuthService(ReplicaService):
    """
    Checks a read's permission when this member takes it, against its
    applied auth state (the bug session 10 fixed): a member behind a revoke
    serves the read after the revoke was answered.
    """

    def _checked_read(self, credential, key, end, read):
        try:
            self.auth.check_read(self.auth.user_of(credential), key, end)
        except ApiError:
            return defer.fail()
        return read()


class UserDroppedWhileDisabledService(ReplicaService):
    """
    Names no user for a request while this member sees auth disabled (the
    bug session 10 fixed): a write it takes before it applied the enable is
    refused when it applies after it, though its user may make it.
    """

    def submit(self, request, timeout_s, credential=None):
        if not self.auth.state.enabled:
            credential = None
        return super().submit(request, timeout_s, credential)


@contextmanager
def _no_apply_time_check():
    """The state machine applies every write whatever its user may do (auth commands still checked)."""
    refusal = AuthGuard.refusal
    AuthGuard.refusal = lambda guard, request: None
    try:
        yield
    finally:
        AuthGuard.refusal = refusal


# --- watch and the history of writes (issue 14) -----------------------------------


@contextmanager
def _skips_on_full():
    """A watcher whose sink is full moves its cursor past what it could not send."""
    feed = Watchers._feed

    def feed_skipping(self, watcher, events, upto) -> None:
        if watcher.ended:
            return
        chosen = watcher._select(events, upto)
        if chosen and not watcher.sink.send(Batch(chosen, upto)):
            watcher.paused = True
        watcher.cursor = upto + 1

    Watchers._feed = feed_skipping
    try:
        yield
    finally:
        Watchers._feed = feed


class SplitsRevisionService(ReplicaService):
    """
    Cuts each step's read of the history at C{max_events} events, inside
    a revision if it ends there: the watchers take the cut revision as
    whole.
    """

    def _read_history(self, start: int, max_events: int) -> list:
        return super()._read_history(start, max_events)[:max_events]


@contextmanager
def _snapshot_without_history():
    """A snapshot a member installs from a transfer keeps its compacted revision but none of its events."""
    state = MemoryStaging.state

    def without_history(self, staged) -> tuple:
        return state(self, staged)[:6] + ([],)

    MemoryStaging.state = without_history
    try:
        yield
    finally:
        MemoryStaging.state = state


class _Leading:
    """A member's core as the planted compactor sees it: always the leader."""

    is_leader = True

    def __init__(self, replica) -> None:
        self._replica = replica

    def __getattr__(self, name):
        return getattr(self._replica, name)


class _Forwarding:
    """A member's write path as the planted compactor sees it: a leader's own decision is forwarded like any write."""

    def __init__(self, writes) -> None:
        self._writes = writes

    def submit(self, request, timeout_s: float, leader_only: bool = False):
        return self._writes.submit(request, timeout_s)

    def __getattr__(self, name):
        return getattr(self._writes, name)


class FollowerCompactsService(ReplicaService):
    """
    Every member, not only the leader, proposes compactions of the history
    from its own clock and its own applied revision (the compactor told
    it leads, its proposal forwarded to the leader like a client's).
    """

    def _compact_tick(self) -> None:
        replica, writes = self.replica, self.writes
        if replica is None or writes is None or not replica.config.voters:
            super()._compact_tick()
            return
        self.replica, self.writes = _Leading(replica), _Forwarding(writes)
        try:
            super()._compact_tick()
        finally:
            self.replica, self.writes = replica, writes


class _WallClock:
    """The machine's wall clock (C{time.time()}), which steps: what a timer must not be counted on."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def seconds(self) -> float:
        return type(self._reactor).seconds(self._reactor)  # the simulated reactor's own: wall time


class WallClockCompactionService(ReplicaService):
    """The leader's compactor counts the history's age on the wall clock, not the monotonic one."""

    def _compact_tick(self) -> None:
        clock, self.clock = self.clock, _WallClock(self.reactor)
        try:
            super()._compact_tick()
        finally:
            self.clock = clock


def _wall_clock_ticks(service) -> None:
    # Issue 9, hole 3 re-opened: the reactor's timers back on wall time (as
    # Twisted keeps them unless run_timers_on moved them), and ticks, the
    # lease and deadlines counted on reactor.seconds() instead of the
    # monotonic clock.
    vars(service.reactor).pop("seconds", None)
    service.clock = service.reactor


def _long_read_holds_gate(service) -> None:
    # Only LMDB stores have a read gate (a SimReadGate in the simulation).
    store = service.store
    gate = getattr(store, "_gate", None)
    if isinstance(gate, SimReadGate):
        store._gate = holes.LongReadHoldsGate(gate.threads, gate.step_s)


#: What catches a bug that lets two leases overlap: the rule check itself,
#: or a stale read it let through.
LEASE_BROKEN = frozenset({"lease overlap", "linearizability", "read"})


PLANTS = {
    plant.name: plant
    for plant in (
        Plant(
            "early-answer-unchosen",
            "a client is answered when its command is proposed, before it is chosen",
            frozenset({"result", "durability", "linearizability", "read"}),
            service_class=EarlyAnswerService,
        ),
        Plant(
            "resend-unknown-forward",
            "a forward whose outcome was unknown is sent again",
            frozenset({"validity", "result", "linearizability"}),
            service_class=ResendUnknownService,
        ),
        Plant(
            "space-after-propose",
            "a write refused for space is proposed all the same (the quota checked after the"
            " write was taken; issue 13, part 5)",
            frozenset({"space"}),
            service_class=ProposeThenRefuseService,
        ),
        Plant(
            "torn-backup",
            "a backup's header takes the slot applied when the backup was asked for, not its"
            " read transaction's (issue 13, part 4)",
            frozenset({"backup"}),
            service_class=TornBackupService,
        ),
        Plant(
            "submit-time-auth",
            "a write's permission is checked when a member takes it, against its applied auth"
            " state, and not when it applies (issue 13, part 2): a member behind a revoke lets"
            " a write through after the revoke was answered (scenario auth)",
            frozenset({"linearizability"}),
            service_class=SubmitTimeAuthService,
            patch=_no_apply_time_check,
        ),
        Plant(
            "take-time-read-auth",
            "a read's permission is checked when a member takes it, against the auth state it"
            " applied by then, not when the read runs after its read index (issue 13, part 2):"
            " a member behind a revoke serves the read (scenario auth)",
            frozenset({"linearizability"}),
            service_class=TakeTimeReadAuthService,
        ),
        Plant(
            "user-dropped-while-disabled",
            "a member that has not applied the enable takes a request with no user, so its"
            " apply after the enable refuses it (issue 13, part 2; scenario auth)",
            frozenset({"linearizability"}),
            service_class=UserDroppedWhileDisabledService,
        ),
        Plant(
            "unconfirmed-read",
            "a leader answers a read index from its chosen index, confirming nothing"
            " (the core simulator's plant, as a replica_class)",
            frozenset({"linearizability", "read"}),
            replica_class=UnconfirmedReadReplica,
        ),
        Plant(
            "wall-clock-ticks",
            "ticks and the lease are counted on the wall clock (issue 9, hole 3): a leader"
            " whose clock steps back keeps its lease while the others elect; caught by the"
            " scripted schedule of tests/test_sim.py (leader cut off, clock stepped back),"
            " rarely by random seeds",
            LEASE_BROKEN,
            on_start=_wall_clock_ticks,
        ),
        Plant(
            "serializable-ignores-answered",
            "a serializable read does not wait for what its node answered",
            frozenset({"read"}),
            service_class=SerializableIgnoresAnsweredService,
        ),
        # Issue 9's holes (kvpaxos.testing.holes), each caught by the random
        # mix with the targeted scenarios of kvpaxos.testing.scenarios
        # (tests/test_sim_holes.py).
        Plant(
            "eager-prepare",
            "a candidate's Prepares leave before its raised ballot is durable, and a Promise"
            " for another first slot is counted (issue 9, hole 1)",
            frozenset({"sent before durable", "agreement"}),
            replica_class=holes.EagerPrepareReplica,
        ),
        Plant(
            "no-prepare-guard",
            "a restarted replica promises a Prepare at once, though a leader's lease may rest"
            " on the ack it sent before it went down (issue 9, hole 5)",
            LEASE_BROKEN,
            replica_class=holes.NoPrepareGuardReplica,
        ),
        Plant(
            "acks-before-missed-ticks",
            "after a reactor stall, queued heartbeats are stepped before the missed ticks"
            " are counted (issue 9, hole 2)",
            LEASE_BROKEN,
            service_class=holes.AcksFirstService,
        ),
        Plant(
            "lease-after-timeout-now",
            "a leader serves lease reads after sending a TimeoutNow, once the transfer is"
            " given up (issue 9, hole 4)",
            LEASE_BROKEN,
            replica_class=holes.LeaseAfterTimeoutNowReplica,
        ),
        Plant(
            "no-drift-allowance",
            "lease_drift_ticks 0: a lease lasts the whole election timeout (issue 9, hole 6)",
            LEASE_BROKEN,
            replica_class=holes.NoDriftReplica,
        ),
        Plant(
            "timing-ignored",
            "lease reads served whatever timing the peers report (issue 9, hole 6)",
            LEASE_BROKEN,
            service_class=holes.TimingIgnoredService,
        ),
        Plant(
            "long-read-holds-gate",
            "a snapshot's long read (a transfer's chunk) holds the LMDB read gate as a short"
            " read, so a commit that grows the map makes the reactor wait for it (issue 9,"
            " hole 7)",
            frozenset({"reactor blocked"}),
            on_start=_long_read_holds_gate,
        ),
        Plant(
            "first-serializable-unconfirmed",
            "a restarted node serves serializable reads before confirming a read index"
            " (issue 9, hole 8)",
            frozenset({"read"}),
            service_class=holes.TrustingReadsService,
        ),
        Plant(
            "credulous-catchup",
            "Catchup and InstallSnapshot taken from any peer, asked or not (issue 9, hole 9)",
            frozenset({"state agreement", "read", "result", "durability", "linearizability",
                       "invariant"}),
            replica_class=holes.CredulousReplica,
        ),
        Plant(
            "unchecked-snapshot",
            "a peer's snapshot is stepped without checking that its state decodes: the node"
            " stops (issue 9, hole 9)",
            frozenset({"invariant"}),
            service_class=holes.UncheckedSnapshotService,
        ),
        Plant(
            "unchecked-chunks",
            "a snapshot transfer's chunks are staged without checking their records' order"
            " and revisions, so a forged transfer is installed (issue 11)",
            frozenset({"state agreement", "read", "result", "session", "linearizability",
                       "invariant", "durability"}),
            on_start=holes.trust_chunks,
        ),
        Plant(
            "keep-untaken-install",
            "a finished transfer the core did not take when stepped is kept staged as if"
            " it were installing, so every later offer is refused and the node never"
            " catches up (issue 11's review)",
            frozenset({"liveness"}),
            service_class=holes.KeepsUntakenService,
        ),
        Plant(
            "removal-untold",
            "a removed node is never told: the leader sends it no last heartbeat and the"
            " members refuse its link as unknown, not REMOVED_MEMBER, so one that missed"
            " its removal runs for ever (issue 11's review)",
            frozenset({"liveness"}),
            service_class=holes.SilentRemovalService,
        ),
        Plant(
            "removed-unrefused",
            "a removed node's link is refused as an unknown member, not REMOVED_MEMBER, so"
            " one that missed the leader's last heartbeat runs for ever (issue 11's review)",
            frozenset({"liveness"}),
            service_class=holes.UnrefusedRemovedService,
        ),
        Plant(
            "silent-fatal",
            "a fatal stop records no reason, so the process exits 0 and systemd leaves it"
            " down (issue 9, hole 10)",
            frozenset({"liveness"}),
            service_class=holes.SilentFatalService,
        ),
        # Watch and the history of writes (issue 14; tests/test_sim_watch.py).
        Plant(
            "watch-skips-on-full",
            "a watcher whose sink is full moves its cursor on all the same: a gap in what it is sent",
            frozenset({"watch"}),
            patch=_skips_on_full,
        ),
        Plant(
            "watch-splits-revision",
            "a watchers' step read cut inside a revision is sent as if the revision were whole",
            frozenset({"watch"}),
            service_class=SplitsRevisionService,
        ),
        Plant(
            "history-dropped-in-snapshot",
            "a snapshot installed from a transfer carries no history but keeps its compacted"
            " revision (memory stores): a lagging member's watchers would skip what it missed",
            frozenset({"state agreement", "watch"}),
            patch=_snapshot_without_history,
        ),
        Plant(
            "follower-compacts",
            "every member, not only the leader, proposes compactions from its own clock",
            frozenset({"compaction"}),
            service_class=FollowerCompactsService,
        ),
        Plant(
            "compaction-on-wall-clock",
            "the leader counts the history's age on the wall clock, which steps: a step forward"
            " compacts revisions younger than the age limit",
            frozenset({"compaction"}),
            service_class=WallClockCompactionService,
        ),
        # KV leases (issue 14; kvpaxos.testing.leaseplants, tests/test_sim_leases.py).
        Plant(
            "follower-expires-leases",
            "a deposed leader keeps its lessor and expires leases from it as a follower, its"
            " LEASE_EXPIRE queued and forwarded (not leader_only) and taken by the leader",
            frozenset({"lease"}),
            service_class=leaseplants.FollowerExpiresService,
        ),
        Plant(
            "no-promotion-extension",
            "a new leader gives every lease only its TTL from its promotion, not TTL + the"
            " election timeout (etcd issues 9395, 15247): as if the old leader's last refresh"
            " had been its own",
            frozenset({"lease"}),
            on_start=leaseplants.no_promotion_extension,
        ),
        Plant(
            "keepalive-unconfirmed",
            "a leader acknowledges a keep-alive without the read index round that confirms it"
            " still leads: a deposed leader refreshes leases its successor expires",
            frozenset({"lease"}),
            service_class=leaseplants.UnconfirmedKeepAliveService,
        ),
        Plant(
            "lease-on-wall-clock",
            "the leader's lease deadlines are counted on the wall clock, which steps: a step"
            " forward expires leases before their TTL has passed",
            frozenset({"lease"}),
            service_class=leaseplants.WallClockLessorService,
        ),
        Plant(
            "attached-keys-survive",
            "a revoke or expiry removes its lease and detaches its keys but deletes none of"
            " them (a change of the state machine, which the reference replays too)",
            frozenset({"lease", "linearizability"}),
            patch=leaseplants.revoke_keeps_keys,
        ),
        # The lock recipe (issue 14; kvpaxos.testing.lockplants, tests/test_sim_locks.py).
        Plant(
            "unfenced-guard",
            "a lock holder's writes carry a guard that always holds (no fencing compare), so a"
            " holder whose lease ran out still writes",
            frozenset({"lock"}),
            patch=lockplants.unfenced_guard,
        ),
        Plant(
            "queue-by-key",
            "the lock's queue is ordered by key, not create revision, so a contender whose key"
            " sorts first takes the lock from its holder",
            frozenset({"lock"}),
            patch=lockplants.queue_by_key,
        ),
        Plant(
            "late-learning",
            "a leader tells followers a slot is chosen only with its next heartbeat"
            " (issue 9, hole 11)",
            frozenset({"latency"}),
            replica_class=holes.LateLearningReplica,
        ),
    )
}


def names() -> list[str]:
    return sorted(PLANTS)


def get(name: Optional[str]) -> Optional[Plant]:
    """Return the plant called C{name} (None for None)."""
    if name is None:
        return None
    try:
        return PLANTS[name]
    except KeyError:
        raise ValueError(f"unknown plant {name!r}; choose from {', '.join(names())}") from None


def service_class(plant: Optional[Plant], base=ReplicaService) -> type:
    """Return the service class a node is built from under C{plant}."""
    if plant is None:
        return base
    cls = plant.service_class or base
    if plant.replica_class is not None:
        cls = type(f"{cls.__name__}With{plant.replica_class.__name__}", (cls,),
                   {"replica_class": plant.replica_class})
    return cls


def patched(plant: Optional[Plant]):
    """The context C{plant}'s whole run goes in (L{Plant.patch}), or one that changes nothing."""
    if plant is None or plant.patch is None:
        return nullcontext()
    return plant.patch()


def before_start(plant: Optional[Plant], service) -> None:
    """Run C{plant}'s hook on a node about to start."""
    if plant is not None and plant.on_start is not None:
        plant.on_start(service)
