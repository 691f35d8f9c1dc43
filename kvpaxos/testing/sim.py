"""
The deterministic simulator of the production node.

Every node is the real L{kvpaxos.node.service.ReplicaService} (the one twistd
runs) over the real key-value state machine, in a
L{kvpaxos.storage.memory.MemoryStore} or, for one seed in five, an
L{kvpaxos.storage.lmdb.LMDBStore} in a temporary directory, whose writer
and pool threads run in turn with the reactor (L{kvpaxos.testing.simthreads}).
Only the clock, the network and the disk are simulated
(L{kvpaxos.testing.simworld}, L{kvpaxos.testing.simnet},
L{kvpaxos.testing.simdisk}): one
event queue in virtual time, a reactor and a monotonic clock per process,
peer links that behave like TCP, a disk whose commits take from nothing to
seconds and are lost by a crash until they finish.  One seed drives
everything, through C{random.Random} streams split from it.

Faults, in a fault phase: crashes and restarts (a new service over the same
store, with the durable state only), pauses (SIGSTOP: the overdue tick runs
first on resume), reactor stalls (a long GC: queued messages first),
partitions both ways and one way, dropped connections (some seeds reset a
connection just as a forward's or read index's answer is sent back, so the
caller cannot know what its call did), wall-clock steps both ways, forward
steps of the monotonic clock (where they cannot outrun a lease), tick-rate
drift within the lease's allowance, slow disks, membership changes and
leader transfers; in adversarial seeds Paxos messages are also lost,
duplicated and reordered.  Half the crashes, pauses, stalls and clock steps
hit the leader, partitions often cut the leader off (now and then with its
wall clock stepped back), and clients send to the leader they were last told
of: that is where a read lease lives.  Then a heal phase: faults stop, every
node comes back, and new writes must be acknowledged and every member
converge within a bound of virtual time.  C{faults=False} runs without
random faults, for tests that script their own.

Three seeds in ten with random faults also run one targeted scenario chosen by
the seed (L{kvpaxos.testing.scenarios}, FoundationDB's "buggify"): a
scripted but randomized sequence of these faults that makes one rare
interleaving common (a stalled follower waking to one heartbeat, a
straggling TimeoutNow, a member with another tick, forged peer messages,
a disk that fails a commit, ...).  A disk failure stops its node on a
fatal error; a supervisor (systemd, C{Restart=on-failure}) restarts it only
if it recorded why (C{fatal_error}, exit status 1); every other fatal stop
is a violation.

Clients put, append, delete, compare-and-swap, run transactions, and read
(get and range, linearizable, lease and serializable) through any node, with
exactly-once sessions and retries after timeouts.  In scenario C{auth} and a
share of the plain seeds they do so as a user whose write permission an
admin takes away and gives back meanwhile (L{kvpaxos.testing.simauth}).

Checks, as events happen (the first violation ends the seed):

  - agreement: no slot committed with two values, on any node, ever;
  - validity: every chosen command decodes and was submitted by a client,
    and no encoded command is chosen twice;
  - state agreement: each node's store, whenever a commit of it is
    durable, equals the reference (the chosen log replayed through the real
    state machine, L{kvpaxos.testing.reference}) at its applied index;
  - sessions: no session command applied twice changes anything;
  - results: every acknowledged result equals the reference's result for
    that request, and every acknowledged write is in the chosen log by the
    end;
  - reads: linearizable and lease reads go into a history checked by
    L{kvpaxos.testing.linearizability} (with the auth changes and the
    refusals, against the register under permissions of
    L{kvpaxos.testing.authmodel}); every range read's records equal the
    reference's at the revision it reports; a serializable read (which is
    not linearizable) is checked for what it promises: it reflects every
    write its node answered to that client before the read, and never goes
    backwards at one node;
  - durable before sent: a Prepare or Promise leaves a node only once its
    ballot is durable, an Accepted only once its slots are
    (L{kvpaxos.testing.invariants});
  - one lease at a time: while a leader may serve lease reads, no quorum of
    its voters has promised a higher ballot (L{kvpaxos.testing.invariants});
  - the reactor never waits behind a long read on the store's read gate
    (LMDB seeds, L{kvpaxos.testing.simthreads});
  - the node: it never stops on a fatal error (C{reactor.stop()}), no
    exception escapes it, its chosen index never goes down within a boot,
    and a leader keeps no chosen slot in flight;
  - watch (L{kvpaxos.testing.simwatch}): every node runs with small
    history limits drawn from the seed, so the leader compacts the history
    under every fault, and a few watch clients watch keys or ranges at one
    node after another (full sinks, cancels, resumes after a crash, a
    silence or L{kvpaxos.node.watchers.Compacted}); every batch holds
    exactly the chosen log's events for its spec from the client's cursor
    through its revision (in order, none missing or twice, each revision
    whole, previous records as asked), across resumes on other members; a
    progress answer hides no event; nothing is sent after a cancel or an
    end; C{Compacted} comes only while the cursor is below the compacted
    revision the member applied;
  - compaction: every chosen COMPACT was proposed by a node while it was
    the leader, and keeps what the limits promise (the last revisions, or
    everything younger than the age on the proposer's monotonic clock);
  - KV leases (L{kvpaxos.testing.simlease}, L{kvpaxos.testing.simleasecheck}):
    a few lease clients grant leases of small TTLs, keep some alive
    through any node, let others lapse, revoke some and attach keys to
    them; every chosen LEASE_EXPIRE was decided and proposed by the
    leader in one turn; none ends a lease before its TTL since the last
    keep-alive acknowledged to a client (on the leader's clock), nor
    before TTL + the election timeout after a change of leader; a
    keep-alive's answer is honest (its TTL, from a leader nobody had
    deposed); a lease's keys are deleted with it, in one revision; the
    leases and attachments of the log, followed apart from the state
    machine, equal the reference's and every store's; after the heal,
    every lease ends in time;
  - liveness after the heal (every watch client's cursor past the final
    revision, and every lease ended, too);
  - in a calm scenario only: a write taken by a follower is answered soon
    after it is chosen (C{latency}).

Run one seed: C{python -m kvpaxos.testing.sim --seed 7 [--verbose]}; many:
C{--seeds 2000 [--first K]}; a planted bug: C{--plant NAME}
(L{kvpaxos.testing.plants}).  A failure prints its seed and the command that
replays it.

This module holds the L{Simulation} (its setup and event loop), L{run_seed}
and the command line; the rest of the class is in mixins by concern:
L{kvpaxos.testing.simnodes} (booting and crashing nodes),
L{kvpaxos.testing.simchecks} (the per-event checks),
L{kvpaxos.testing.simclients} (clients and their answers) and
L{kvpaxos.testing.simfaults} (faults, the operator, the heal),
L{kvpaxos.testing.simwatch} (watch clients, the history's checks),
L{kvpaxos.testing.simlease} (lease clients, the leases' checks) and
L{kvpaxos.testing.simbackup} (the operator's backups); settings and
records are in L{kvpaxos.testing.simrecords}.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from collections import Counter
from typing import Optional

from twisted.python.failure import Failure

from kvpaxos.node import transfers
from kvpaxos.node.interfaces import Timing
from kvpaxos.node.service import ReplicaService
from kvpaxos.paxos import Config
from kvpaxos.storage import lmdb as lmdb_store
from kvpaxos.testing import plants as plant_registry
from kvpaxos.testing import scenarios as scenario_registry
from kvpaxos.testing import simauth
from kvpaxos.testing.linearizability import Operation
from kvpaxos.testing.reference import Reference
from kvpaxos.testing.simthreads import Threads
from kvpaxos.testing.simnet import Network
from kvpaxos.testing.simworld import Process, VirtualTime
from kvpaxos.testing.simrecords import (
    DRIFT_MAX,
    FAULT_S,
    KEYS,
    LMDB_ONE_IN,
    SIM_OPTIONS,
    SNAPSHOT_STEP_BYTES,
    TICK_S,
    Client,
    Node,
    Pending,
    SeedResult,
    Violation,
    _Datagrams,
)
from kvpaxos.testing.simnodes import NodesMixin, _accepts
from kvpaxos.testing.simchecks import ChecksMixin
from kvpaxos.testing.simclients import ClientsMixin
from kvpaxos.testing.simfaults import FaultsMixin
from kvpaxos.testing.simbackup import BackupsMixin
from kvpaxos.testing.simwatch import WatchMixin
from kvpaxos.testing.simlease import LeaseMixin
from kvpaxos.testing import simlock
from kvpaxos.testing.simlock import LocksMixin


#: What other modules import from here (some are defined in
#: L{kvpaxos.testing.simrecords} and imported for them).
__all__ = [
    "DRIFT_MAX", "SIM_OPTIONS", "TICK_S", "Client", "Node", "Pending", "SeedResult",
    "Simulation", "Violation", "main", "run_seed",
]




class Simulation(LocksMixin, LeaseMixin, NodesMixin, ChecksMixin, ClientsMixin, WatchMixin, FaultsMixin, BackupsMixin):
    """One seeded run of a cluster of real nodes."""

    def __init__(self, seed: int, plant: Optional[str] = None, verbose: bool = False,
                 fault_s: float = FAULT_S, provider: Optional[str] = None,
                 faults: bool = True, scenario: Optional[str] = scenario_registry.DRAW) -> None:
        """
        @param faults: False for no random faults or operator actions (a
            test then scripts its own, e.g. with L{step_wall_clock}).
        @param scenario: the targeted scenario to run (L{kvpaxos.testing.scenarios}):
            drawn from the seed by default (with random faults only), None for none.
        """
        self.plant = plant_registry.get(plant)
        self.random_faults = faults
        self.seed = seed
        self.verbose = verbose
        self.fault_s = fault_s
        root = random.Random(seed)
        self.rng = random.Random(root.getrandbits(64))
        self.client_rng = random.Random(root.getrandbits(64))
        net_rng = random.Random(root.getrandbits(64))
        self.disk_rng = random.Random(root.getrandbits(64))
        self.node_seed = root.getrandbits(64)
        self.world = VirtualTime()
        self.result = SeedResult(seed)
        self.violation: Optional[Violation] = None
        self._trace = hashlib.blake2b(digest_size=16)

        rng = self.rng
        if provider is None:
            provider = "lmdb" if random.Random(seed * 31 + 7).randrange(LMDB_ONE_IN) == 0 else "memory"
        self.provider = self.result.provider = provider
        self._tmp = tempfile.TemporaryDirectory(prefix="kvpaxos-sim-") if provider == "lmdb" else None
        #: LMDB's map to start with (it doubles when full), and the step of
        #: a snapshot's copy.
        self.lmdb_map_bytes = 1 << 20
        self.snapshot_step_bytes = SNAPSHOT_STEP_BYTES
        #: The largest chunk of a snapshot transfer (states here are small).
        self.transfer_chunk_bytes = 1 << 10
        #: On lmdb, each node's writer and pool threads (simthreads).
        self.threads = Threads(self.world, self._reactor_blocked) if provider == "lmdb" else None
        count = rng.choice((3, 3, 5))
        self.initial = Config(frozenset(range(1, count + 1)))
        self.next_id = count + 1
        self.lease_reads = rng.random() < 0.5
        self.timing = Timing(round(TICK_S * 1000), SIM_OPTIONS.election_ticks, self.lease_reads)
        # Commit latency; a slow disk now and then takes up to 2 s.  (With
        # commits near the election timeout, 100 ms here, elections duel
        # for seconds: Prepares and Promises each wait for one.)
        self.disk_s = rng.choice(((0.0, 0.0005), (0.0, 0.003), (0.0005, 0.01), (0.001, 0.03)))
        self.slow_disk = rng.choice((0.0, 0.0, 0.003, 0.01))
        faults = None
        if rng.random() < 0.3:
            faults = _Datagrams(
                drop=rng.choice((0.0, 0.02, 0.05, 0.1)),
                duplicate=rng.choice((0.0, 0.02, 0.05)),
                delay_s=(0.0005, rng.choice((0.002, 0.008, 0.02))),
                straggle=rng.choice((0.0, 0.01, 0.03)),
                straggle_s=(0.05, 0.4),
            )
            self.result.faults["adversarial network"] += 1
        # What the checker knows.
        self._acked_waiting: set = set()
        self.proposed_changes: set = set()
        self.reference = Reference(KEYS)
        #: Backups saved and not yet checked (L{BackupsMixin}).
        self._saved_backups: list = []
        #: The space quota every node runs with (scenario space-quota; 0:
        #: none), and the tags of writes refused for space on their first
        #: delivery: none may ever be chosen.
        self.quota_bytes = 0
        self.space_refused: set = set()
        self.chosen: dict[int, object] = {}
        self.chosen_bytes: dict[bytes, int] = {}
        self.submitted: set = set()
        self.acked: dict[tuple, tuple] = {}  # tag -> (result, client, node)
        self.unmatched_hashes: list = []  # (node, applied, hash) awaiting the reference
        self.unmatched_reads: list = []  # (node, revision, values, what)
        self.history: list[Operation] = []
        self.assigned: dict[int, int] = {}  # client id (session) -> client
        self.healed = False
        self.done = False
        self._liveness_acked = 0
        #: slot -> the virtual time a node first committed it as chosen.
        self.chosen_at: dict[int, float] = {}

        self.processes: dict[int, Process] = {}
        self.network = Network(
            self.world, net_rng, self.processes, delay_s=(0.0003, rng.choice((0.001, 0.003))),
            faults=faults, on_connect=self._connected, log=self._log,
        )
        self.network.reply_loss = rng.choice((0.0, 0.0, 0.05, 0.2))
        if not self.random_faults:
            self.network.faults, self.network.reply_loss = None, 0.0
            self.result.faults.clear()
        self.wall_steps = _accepts(ReplicaService, "clock")
        self.nodes: dict[int, Node] = {}
        #: The auth workload of this seed (L{kvpaxos.testing.simauth}), or None.
        self.auth: Optional[simauth.AuthWorkload] = None
        #: The lock clients of this seed (L{kvpaxos.testing.simlock}), or None.
        self.locks: Optional[simlock.LockWorkload] = None
        # A targeted scenario, drawn from the seed (it may turn random faults off).
        self.scenario = scenario_registry.draw(self, scenario)
        simauth.draw(self, scenario == scenario_registry.DRAW)
        simlock.draw(self, scenario == scenario_registry.DRAW)
        # History limits and watch clients (kvpaxos.testing.simwatch).
        self._watch_setup()
        # Lease clients (kvpaxos.testing.simlease).
        self._lease_setup()
        for node_id in sorted(self.initial.voters):
            self._add_node(node_id, self.initial)

        self.clients = {i: Client(i) for i in range(1, rng.randint(2, 5) + 1)}
        for client in self.clients.values():
            self.world.later(rng.uniform(0.2, 0.4), self._client_step, client)
        if self.scenario is not None:
            self.scenario.start(self)
        if self.auth is not None:
            self.auth.start()
        self._watch_start()
        self._lease_start()
        self._lock_start()
        if self.random_faults:
            self.world.later(rng.uniform(0.3, 0.6), self._fault)
            self.world.later(rng.uniform(0.5, 1.0), self._operator)
        self.world.later(fault_s, self._heal)

    # --- running -------------------------------------------------------------

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.world.now:10.4f} {text}")

    def fail(self, kind: str, detail: str) -> None:
        """Record a violation (the first one ends the run)."""
        if self.violation is None:
            self.violation = Violation(kind, detail)
            self._log(f"VIOLATION {kind}: {detail}")

    def run(self) -> SeedResult:
        """Run to the end of the heal phase, or to the first violation."""
        step_bytes = lmdb_store.SNAPSHOT_STEP_BYTES
        chunk_bytes = transfers.CHUNK_BYTES
        if self.threads is not None:
            # States here are a few kilobytes: copy them in many steps.
            lmdb_store.SNAPSHOT_STEP_BYTES = self.snapshot_step_bytes
        # ... and send them in many chunks.
        transfers.CHUNK_BYTES = self.transfer_chunk_bytes
        try:
            with plant_registry.patched(self.plant):
                self._run()
        finally:
            lmdb_store.SNAPSHOT_STEP_BYTES = step_bytes
            transfers.CHUNK_BYTES = chunk_bytes
            self._close()
        self.result.violation = self.violation
        counts = self.network.counts
        for kind, name in (("SnapshotChunk", "snapshot chunks sent"),
                           ("SnapshotDone", "snapshot transfers sent")):
            if counts.get(kind):
                self.result.ops[name] += counts[kind]
        lost = self.network.counts["replies lost"]
        if lost:
            self.result.faults["answer lost in a reset"] += lost
        for kind in ("refused handshakes", "told removed"):
            if counts.get(kind):
                self.result.faults[kind] += counts[kind]
        self.result.chosen_slots = len(self.chosen)
        self.result.trace = self._trace.hexdigest()
        return self.result

    def _run(self) -> None:
        world = self.world
        trace = self._trace
        while self.violation is None and not self.done:
            item = world.pop()
            if item is None:
                self.fail("liveness", "the simulation ran out of events")
                break
            call, args = item
            self.result.events += 1
            trace.update(f"{world.now!r}{getattr(call, '__name__', '?')}".encode())
            call(*args)
            if self.violation is None:
                self._check_nodes()
        if self.violation is None:
            self._final_checks()

    def _run_in(self, process: Process, call, args, kw=None) -> None:
        """Run C{call} in C{process}'s context: what escapes it, or a stop, is a violation."""
        try:
            call(*args, **(kw or {}))
        except Exception as error:
            service = process.service
            fatal = getattr(service, "fatal_error", None)
            self.fail("invariant", f"node {process.node_id}: {fatal or repr(error)}")
            if self.verbose:
                Failure().printTraceback(file=sys.stdout)
        if process.reactor.stop_requested and self.violation is None and process.alive:
            fatal = getattr(process.service, "fatal_error", None)
            disk = getattr(process, "disk", None)
            membership = getattr(process.service, "membership", None)
            if disk is not None and disk.failed:
                self._exited(process, fatal)  # the disk failure it was given
            elif fatal is None and getattr(membership, "removed", False):
                self._exited(process, None)  # it learned it was removed: exit 0
            else:
                self.fail("invariant", f"node {process.node_id} stopped: {fatal}")

    def _exited(self, process: Process, fatal: Optional[str]) -> None:
        """
        A node stopped on an injected disk failure, or because it learned it
        was removed: its process exits, 1 if it recorded why
        (C{fatal_error}), else 0; the supervisor (systemd,
        C{Restart=on-failure}) restarts it only after exit status 1.
        """
        node = self.nodes[process.node_id]
        self._crash(node, "fatal stop")
        if fatal:
            self._log(f"node {node.id} exited 1 ({fatal}); restarted")
            self.world.later(0.1, self._restart, node.id)
        else:
            node.exited = True
            self._log(f"node {node.id} exited 0; left down")

    def _reactor_blocked(self, reason: str) -> None:
        self.fail("reactor blocked", reason)

    def _close(self) -> None:
        for node in self.nodes.values():
            if node.process is not None:
                node.process.disk.stop()
                node.process.die()
            if node.directory is not None:
                node.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()



def run_seed(seed: int, plant: Optional[str] = None, verbose: bool = False, **options) -> SeedResult:
    """Run one seed and return its result."""
    return Simulation(seed, plant=plant, verbose=verbose, **options).run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvpaxos.testing.sim",
        description="Run the kvpaxos node simulator over one or many seeds.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="run this one seed")
    group.add_argument("--seeds", type=int, default=100, help="run seeds K..K+N-1")
    parser.add_argument("--first", type=int, default=0, help="first seed of --seeds (K)")
    parser.add_argument("--plant", choices=plant_registry.names(), help="plant a known bug")
    parser.add_argument("--scenario", choices=scenario_registry.names(),
                        help="run this targeted scenario in every seed (default: drawn per seed)")
    parser.add_argument("--auth-strict", default="reads,early", metavar="reads,early,joiners",
                        help="the auth workload's changes the node does not keep exact (simauth.STRICT)")
    parser.add_argument("--verbose", action="store_true", help="trace the run")
    args = parser.parse_args(argv)
    simauth.STRICT = frozenset(filter(None, args.auth_strict.split(",")))
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    failures = 0
    ops: Counter = Counter()
    faults: Counter = Counter()
    unchecked = history = events = lmdb = 0
    ran = 0
    for seed in seeds:
        scenario = args.scenario or scenario_registry.DRAW
        result = run_seed(seed, plant=args.plant, verbose=args.verbose, scenario=scenario)
        ran += 1
        ops.update(result.ops)
        faults.update(result.faults)
        unchecked += result.unchecked_histories
        history += result.history_ops
        events += result.events
        lmdb += result.provider == "lmdb"
        if not result.ok:
            failures += 1
            print(f"seed {seed}: {result.violation}")
            replay = result.replay(args.plant)
            if args.scenario:
                replay += f" --scenario {args.scenario}"
            if args.auth_strict:
                replay += f" --auth-strict {args.auth_strict}"
            print(f"  replay with: {replay}")
            sys.stdout.flush()
    elapsed = time.perf_counter() - started
    scenarios = sum(v for k, v in faults.items() if k.startswith("scenario "))
    print(
        f"{ran} seeds ({lmdb} on lmdb, {scenarios} with a scenario), {failures} failed, {elapsed:.1f} s;"
        f" {sum(ops.values())} operations checked, {history} in linearizable histories"
        f" ({unchecked} histories unchecked), {events} events"
    )
    print("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    print("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
