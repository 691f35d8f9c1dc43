"""
The deterministic simulator of the production node.

Every node is the real L{kvpaxos.node.service.ReplicaService} (the one twistd
runs) over the real key-value state machine, in a
L{kvpaxos.storage.memory.MemoryStore} or, for one seed in five, an
L{kvpaxos.storage.lmdb.LMDBStore} in a temporary directory, whose writer
and pool threads run in turn with the reactor (L{kvpaxos.testing.simthreads}).
Only the clock, the network and the disk are simulated
(L{kvpaxos.testing.simworld}): one
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
exactly-once sessions and retries after timeouts.

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
    L{kvpaxos.testing.linearizability}; every range read's records equal the
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
  - liveness after the heal;
  - in a calm scenario only: a write taken by a follower is answered soon
    after it is chosen (C{latency}).

Run one seed: C{python -m kvpaxos.testing.sim --seed 7 [--verbose]}; many:
C{--seeds 2000 [--first K]}; a planted bug: C{--plant NAME}
(L{kvpaxos.testing.plants}).  A failure prints its seed and the command that
replays it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from twisted.python.failure import Failure

from kvpaxos.kv.commands import (
    CompareTarget,
    DeleteRange,
    InvalidArgument,
    Op,
    Put,
    Range,
    RangeResult,
    Request,
    SessionExpired,
    SessionOpened,
    StaleSequence,
    Txn,
    compare_and_swap,
)
from kvpaxos.encoding.commands import decode_request
from kvpaxos.node.clock import run_timers_on
from kvpaxos.node.interfaces import Timing
from kvpaxos.node.service import ReplicaService
from kvpaxos.paxos import (
    ZERO_BALLOT,
    Ballot,
    Batch,
    ChangeKind,
    Config,
    ConfigChange,
    ConfigError,
    NotLeader,
    Options,
    ProposalRejected,
)
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.storage import lmdb as lmdb_store
from kvpaxos.testing import invariants
from kvpaxos.testing import plants as plant_registry
from kvpaxos.testing import scenarios as scenario_registry
from kvpaxos.testing.linearizability import Operation, check, project_range, project_txn
from kvpaxos.testing.reference import Reference, state_hash, tag_of
from kvpaxos.testing.simthreads import Threads
from kvpaxos.testing.simworld import (
    Disk,
    MachineClock,
    Network,
    Process,
    SimTransport,
    VirtualTime,
)

TICK_S = 0.01
#: Core options for simulation: small batches, windows and snapshot
#: intervals so that every mechanism runs often.
SIM_OPTIONS = Options(
    election_ticks=10,
    heartbeat_ticks=2,
    window_slots=6,
    batch_bytes_max=400,
    message_bytes_max=1200,
    retransmit_ticks=4,
    catchup_retry_ticks=4,
    snapshot_interval=25,
    committed_max=16,
    lease_drift_ticks=2,
)
#: The largest tick-rate drift of a machine, either way: two members'
#: rates then differ by at most a factor 1.05 / 0.95 = 1.105, inside the
#: lease's allowance (lease_drift_ticks = 2: one tick for quantisation,
#: one of election_ticks = 10 for rate error, so a follower's 9 ticks
#: outlast a leader's 8 if the rates differ by less than 9 / 8 = 1.125).
DRIFT_MAX = 0.05
KEYS = tuple(f"k{i}".encode() for i in range(5))
#: What the service is given to answer a request in.
REQUEST_TIMEOUT_S = 1.0
#: How long a client waits for one attempt's answer before giving up on it.
ATTEMPT_TIMEOUT_S = 1.5
#: How long a client keeps retrying one session write.
RETRY_FOR_S = 4.0
FAULT_S = 4.0
LIVENESS_COMMANDS = 5
LIVENESS_BOUND_S = 12.0
HISTORY_CHECK_S = 20.0
MAX_NODES = 6
#: One seed in this many runs on LMDB.
LMDB_ONE_IN = 5
#: A snapshot copy's step on LMDB (the product's is 1 MiB; states here are
#: a few kilobytes, and a copy must take steps for a commit to meet it).
SNAPSHOT_STEP_BYTES = 256


class Violation(Exception):
    """A checked property failed; C{kind} names which."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class SeedResult:
    """What one seed's run did (named so as not to shadow the kv Result)."""

    seed: int
    violation: Optional[Violation] = None
    provider: str = "memory"
    chosen_slots: int = 0
    history_ops: int = 0
    unchecked_histories: int = 0
    events: int = 0
    trace: str = ""
    #: Operations acknowledged, by kind (put, append, ..., get/linearizable, ...).
    ops: Counter = field(default_factory=Counter)
    #: Faults injected, by kind.
    faults: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def checked(self) -> int:
        return sum(self.ops.values())

    def replay(self, plant: Optional[str] = None) -> str:
        extra = f" --plant {plant}" if plant else ""
        return f"python -m kvpaxos.testing.sim --seed {self.seed}{extra}"



@dataclass
class Node:
    """A simulated server across its boots: its store and its machine clock."""

    id: int
    store: object
    machine: MachineClock
    directory: Optional[str] = None
    process: Optional[Process] = None
    epochs: int = 0
    #: The highest revision any read at this node has returned.
    read_revision: int = 0
    chosen_seen: int = 0
    #: This node's tick period (a scenario may misconfigure one member).
    tick_s: float = TICK_S
    #: While it is down: the ballot its store has promised.
    promised_down: Ballot = ZERO_BALLOT
    #: It stopped on a fatal error with no reason recorded, so its process
    #: exited 0 and the supervisor (systemd, Restart=on-failure) leaves it down.
    exited: bool = False


@dataclass
class Client:
    id: int
    session: Optional[int] = None
    sequence: int = 0
    busy: bool = False
    attempt: int = 0
    liveness: bool = False
    #: node id -> the highest revision a write answered by it had.
    answered: dict = field(default_factory=dict)
    #: key -> the last value seen (for compare-and-swap).
    seen: dict = field(default_factory=dict)
    #: The leader the last answering node named (a response header).
    guess: Optional[int] = None
    written: int = 0
    #: A scenario's script (L{kvpaxos.testing.scenarios}): C{step(client)}
    #: instead of a random operation, C{answered(client, op, value)} on success.
    script: Optional[object] = None


@dataclass
class Pending:
    """One client operation in flight (possibly over several attempts)."""

    kind: str
    request: Optional[Request] = None
    key: bytes = b""
    consistency: str = ""
    query: Optional[Range] = None
    first_call: float = 0.0
    give_up_at: float = 0.0
    node: int = 0
    call: float = 0.0
    #: Whether any attempt reached a node (else it certainly did nothing).
    delivered: bool = False


def _accepts(cls, name: str) -> bool:
    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


class Simulation:
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
        # A targeted scenario, drawn from the seed (it may turn random faults off).
        self.scenario = scenario_registry.draw(self, scenario)
        for node_id in sorted(self.initial.voters):
            self._add_node(node_id, self.initial)

        self.clients = {i: Client(i) for i in range(1, rng.randint(2, 5) + 1)}
        for client in self.clients.values():
            self.world.later(rng.uniform(0.2, 0.4), self._client_step, client)
        if self.scenario is not None:
            self.scenario.start(self)
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
        if self.threads is not None:
            # States here are a few kilobytes: copy them in many steps.
            lmdb_store.SNAPSHOT_STEP_BYTES = self.snapshot_step_bytes
        try:
            self._run()
        finally:
            lmdb_store.SNAPSHOT_STEP_BYTES = step_bytes
            self._close()
        self.result.violation = self.violation
        lost = self.network.counts["replies lost"]
        if lost:
            self.result.faults["answer lost in a reset"] += lost
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
            if disk is not None and disk.failed:
                self._exited(process, fatal)  # the disk failure it was given
            else:
                self.fail("invariant", f"node {process.node_id} stopped: {fatal}")

    def _exited(self, process: Process, fatal: Optional[str]) -> None:
        """
        A node stopped on an injected disk failure: its process exits, 1 if
        it recorded why (C{fatal_error}), else 0; the supervisor (systemd,
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

    # --- nodes -----------------------------------------------------------------

    def _add_node(self, node_id: int, config: Optional[Config]) -> None:
        rng = self.rng
        machine = MachineClock(
            rate=1.0 + rng.uniform(-DRIFT_MAX, DRIFT_MAX) if rng.random() < 0.7 else 1.0,
            wall_offset=rng.uniform(1e9, 2e9),
        )
        if self.provider == "lmdb":
            from kvpaxos.storage.lmdb import LMDBStore

            directory = f"{self._tmp.name}/node{node_id}"
            store = LMDBStore(directory, config, map_bytes=self.lmdb_map_bytes)
        else:
            directory = None
            store = MemoryStore(config)
        node = self.nodes[node_id] = Node(node_id, store, machine, directory)
        if self.scenario is not None:
            self.scenario.node_added(self, node)
        self._boot(node)

    def _boot(self, node: Node) -> None:
        node.epochs += 1
        if node.directory is not None and node.epochs > 1:
            from kvpaxos.storage.lmdb import LMDBStore

            node.store = LMDBStore(node.directory, None, map_bytes=self.lmdb_map_bytes)
        process = Process(
            self.world, node.id, node.epochs, node.machine, self.rng.uniform(100, 1000),
            self._run_in,
        )
        node.process = process
        # The product's wiring (kvpaxos.tap.makeService): every timed call
        # on the monotonic clock.
        run_timers_on(process.reactor, process.mono.seconds)
        node.chosen_seen = 0
        self.processes[node.id] = process
        disk = Disk(
            process, node.store, self.provider, self.disk_rng, self._disk_latency,
            self._commit_asked, self._commit_durable, self.threads,
        )
        rng = random.Random(self.node_seed ^ (node.id * 7919 + node.epochs))
        cls = plant_registry.service_class(self.plant)
        kwargs = dict(
            options=SIM_OPTIONS, tick_s=node.tick_s, rng=rng, run_commit=disk.commit,
            lease_reads=self.lease_reads, read_snapshot=disk.read_snapshot,
        )
        if _accepts(cls, "clock"):
            kwargs["clock"] = process.mono
        # Request ids are unique per boot (os.urandom by default); a seeded
        # boot number keeps replays exact.
        boot = rng.getrandbits(31)
        if _accepts(cls, "boot"):
            kwargs["boot"] = boot
        service = cls(node.id, node.store, process.reactor, **kwargs)
        if "boot" not in kwargs:
            service._boot = boot
        service.peers = SimTransport(self.network, process, self._check_sent)
        process.service = service
        process.disk = disk

        def start() -> None:
            plant_registry.before_start(self.plant, service)
            service.startService()

        self._run_in(process, start, ())
        self._count_leases(service)
        self._log(f"start node {node.id} (boot {node.epochs}, applied {node.store.applied_index()})")
        for other in sorted(self.nodes):
            if other != node.id:
                self.network.connect_later(process, other, self.rng.uniform(0.001, 0.05))
                peer = self.processes.get(other)
                if peer is not None and peer.alive:
                    self.network.connect_later(peer, node.id, self.rng.uniform(0.001, 0.3))

    def _count_leases(self, service) -> None:
        """Count the reads a leader served on its lease (instrumentation only)."""
        replica = getattr(service, "replica", None)
        if replica is None:
            return
        lease_read_index = replica.lease_read_index
        counts = self.result.ops

        def counted():
            index = lease_read_index()
            if index is not None:
                counts["served by lease"] += 1
            return index

        replica.lease_read_index = counted

    def _connected(self, src: Process, dst: Process) -> None:
        for here, there in ((src, dst), (dst, src)):
            service = here.service
            if hasattr(service, "peer_timing"):
                here.io(0, service.peer_timing, there.node_id, self.timing_of(there.node_id))

    def timing_of(self, node_id: int) -> Timing:
        """The timing node C{node_id} runs with (and reports to its peers)."""
        tick_s = self.nodes[node_id].tick_s
        if tick_s == TICK_S:
            return self.timing
        return Timing(round(tick_s * 1000), SIM_OPTIONS.election_ticks, self.lease_reads)

    def _check_sent(self, process: Process, message) -> None:
        """A message leaves a node: what it depends on must be durable (L{invariants})."""
        if self.violation is None:
            problem = invariants.durability_problem(self.nodes[process.node_id].store, message)
            if problem:
                self.fail("sent before durable", problem)

    def _crash(self, node: Node, kind: str = "crash") -> None:
        process = node.process
        if process is None:
            return
        process.disk.stop()
        # What it has promised while it is down: what a restart will read.
        node.promised_down = node.store.hard_state().promised
        process.die()
        node.process = None
        self.processes.pop(node.id, None)
        self.network.process_died(process)
        if node.directory is not None:
            node.store.close()
        self.result.faults[kind] += 1
        self._log(f"{kind} node {node.id}")

    def _disk_latency(self) -> float:
        rng = self.disk_rng
        if self.slow_disk and rng.random() < self.slow_disk:
            return rng.uniform(0.1, 2.0)
        return rng.uniform(*self.disk_s)

    # --- what the nodes commit ---------------------------------------------------

    def _commit_asked(self, process: Process, args) -> None:
        """A node commits these slots as chosen: agreement and validity."""
        committed = args[0].committed
        for slot, value in committed:
            held = self.chosen.get(slot)
            if held is None:
                self._choose(process.node_id, slot, value)
            elif held != value:
                self.fail(
                    "agreement",
                    f"slot {slot} chosen as {held!r} and as {value!r} (node {process.node_id})",
                )
                return
        self._feed_reference()

    def _choose(self, node_id: int, slot: int, value) -> None:
        self.chosen[slot] = value
        self.chosen_at[slot] = self.world.now
        if type(value) is Batch:
            seen = set()
            for data in value.commands:
                other = self.chosen_bytes.setdefault(data, slot)
                if other != slot or data in seen:
                    self.fail("validity", f"a command was chosen twice (slots {other} and {slot})")
                seen.add(data)
                try:
                    request = decode_request(data)
                except Exception as error:
                    self.fail("validity", f"slot {slot} holds a corrupt command: {error}")
                    continue
                tag = tag_of(request)
                if tag != ("open",) and tag not in self.submitted:
                    self.fail("validity", f"slot {slot} holds unsubmitted {request!r}")
        elif type(value) is ConfigChange and value not in self.proposed_changes:
            self.fail("validity", f"slot {slot} holds unproposed {value!r}")

    def _feed_reference(self) -> None:
        reference = self.reference
        advanced = False
        while reference.applied + 1 in self.chosen:
            slot = reference.applied + 1
            problem = reference.apply(slot, self.chosen[slot])
            advanced = True
            if problem:
                self.fail("session", problem)
        if advanced:
            self._recheck()

    def _commit_durable(self, process: Process, results) -> None:
        """A node's commit is durable: its store must equal the reference at its applied index."""
        node = self.nodes[process.node_id]
        if self.threads is not None:
            self.threads.checking += 1
        try:
            applied, data = node.store.snapshot_now()
        finally:
            if self.threads is not None:
                self.threads.checking -= 1
        self._match_hash(node.id, applied, state_hash(data))

    def _match_hash(self, node_id: int, applied: int, digest: bytes) -> bool:
        expected = self.reference.hashes.get(applied)
        if expected is None:
            self.unmatched_hashes.append((node_id, applied, digest))
            return False
        if expected != digest:
            self.fail(
                "state agreement",
                f"node {node_id}'s store differs from the chosen log's state at slot {applied}",
            )
        return True

    def _recheck(self) -> None:
        hashes, self.unmatched_hashes = self.unmatched_hashes, []
        for node_id, applied, digest in hashes:
            self._match_hash(node_id, applied, digest)
        reads, self.unmatched_reads = self.unmatched_reads, []
        for item in reads:
            self._match_read(*item)
        for tag in sorted(self._acked_waiting, key=repr):
            if tag in self.reference.results:
                self._acked_waiting.discard(tag)
                self._match_result(tag)

    # --- per-event node checks -------------------------------------------------------

    def _check_leases(self) -> None:
        leaders = {}
        for node_id, process in self.processes.items():
            held = invariants.lease_holder(process.service)
            if held is not None:
                leaders[node_id] = held
        if not leaders:
            return
        promised = {}
        for node_id, node in self.nodes.items():
            process = self.processes.get(node_id)
            replica = getattr(process.service, "replica", None) if process is not None else None
            promised[node_id] = replica.promised if replica is not None else node.promised_down
        problem = invariants.lease_problem(leaders, promised)
        if problem:
            self.fail("lease overlap", problem)

    def _check_nodes(self) -> None:
        self._check_leases()
        if self.violation is not None:
            return
        for node_id in sorted(self.processes):
            process = self.processes[node_id]
            service = process.service
            replica = getattr(service, "replica", None)
            if replica is None:
                continue
            node = self.nodes[node_id]
            if replica.chosen_index < node.chosen_seen:
                self.fail(
                    "invariant",
                    f"node {node_id} chosen index went from {node.chosen_seen} down to"
                    f" {replica.chosen_index}",
                )
                return
            node.chosen_seen = replica.chosen_index
            if self.verbose:
                role = (replica.role.name, replica.role.ballot)
                if getattr(process, "seen_role", None) != role:
                    process.seen_role = role
                    self._log(
                        f"node {node_id} is {role[0]} {role[1] or ''} chosen"
                        f" {replica.chosen_index} applied {replica.applied} config"
                        f" {sorted(replica.config.voters)}+{sorted(replica.config.learners)}"
                    )
            if replica.is_leader:
                role = replica.role
                stale = [s for s in getattr(role, "inflight", ()) if s <= replica.chosen_index]
                if stale:
                    self.fail("invariant", f"leader {node_id} keeps chosen slots {stale} in flight")

    # --- clients ---------------------------------------------------------------------

    def _members(self) -> list[int]:
        return sorted(self.nodes)

    def _targets(self, client: Client) -> list[int]:
        """
        The nodes a client may send to: any node (a removed one too), but
        after the heal only the members of the latest member set.
        """
        if not client.liveness:
            if client.guess in self.nodes and self.client_rng.random() < 0.7:
                return [client.guess]  # as a real client: to the leader it knows
            return self._members()
        known = [
            (p.service.replica.chosen_index, p.node_id) for p in self.processes.values()
            if getattr(p.service, "replica", None) is not None
        ]
        if not known:
            return self._members()
        config = self.processes[max(known)[1]].service.replica.config
        return sorted(config.members & set(self.nodes)) or self._members()

    def _client_step(self, client: Client) -> None:
        if client.busy or self.done:
            return
        if self.healed and not client.liveness:
            return
        if client.liveness and self._liveness_acked >= LIVENESS_COMMANDS:
            return
        if client.script is not None:
            client.script.step(client)
            return
        rng = self.client_rng
        node = rng.choice(self._targets(client))
        if client.session is None and (client.liveness or rng.random() < 0.6):
            self._start(client, Pending("open", Request(Op.OPEN_SESSION)), node)
            return
        if client.liveness or rng.random() < 0.55:
            self._start(client, self._write(client), node)
        else:
            self._start(client, self._read(client), node)

    def _value(self, client: Client) -> bytes:
        client.written += 1
        return f"{client.id}.{client.written}".encode()

    def _write(self, client: Client) -> Pending:
        rng = self.client_rng
        key = rng.choice(KEYS)
        choice = rng.random()
        if client.liveness or choice < 0.3:
            kind, request = "put", Request(Op.PUT, key, self._value(client))
        elif choice < 0.5:
            kind, request = "append", Request(Op.APPEND, key, self._value(client))
        elif choice < 0.6 and client.session is not None:
            # Only in a session: a delete carries no value to tell two apart.
            kind, request = "delete", Request(Op.DELETE, key)
        elif choice < 0.8:
            expected = client.seen.get(key)
            new = self._value(client)
            if expected is None:
                request = compare_and_swap(key, new, expected_version=0)
            else:
                request = compare_and_swap(key, new, expected_value=expected)
            kind = "cas"
        else:
            other = rng.choice([k for k in KEYS if k != key])
            if rng.random() < 0.5:
                ops = (Put(key, self._value(client)), Put(other, self._value(client)))
            elif rng.random() < 0.5:
                ops = (Put(key, self._value(client)), DeleteRange(other))
            else:
                ops = (Put(key, self._value(client)), Range(other))
            kind, request = "txn", Request(Op.TXN, txn=Txn((), ops, ()))
        if client.session is not None and (kind == "delete" or client.liveness or rng.random() < 0.85):
            client.sequence += 1
            request = dataclasses.replace(request, client_id=client.session, sequence=client.sequence)
        return Pending(kind, request, key)

    def _read(self, client: Client) -> Pending:
        rng = self.client_rng
        choice = rng.random()
        key = rng.choice(KEYS)
        if choice < 0.3:
            return Pending("get", key=key, consistency="linearizable")
        if choice < 0.5:
            return Pending("get", key=key, consistency="lease")
        if choice < 0.7:
            return Pending("range", consistency=rng.choice(("linearizable", "lease")),
                           query=Range(b"k", b"l"))
        return Pending("range", consistency="serializable", query=Range(b"k", b"l"))

    def _start(self, client: Client, op: Pending, node: int) -> None:
        client.busy = True
        op.first_call = self.world.now
        op.give_up_at = self.world.now + RETRY_FOR_S
        if op.request is not None and op.kind != "open":
            self.submitted.add(tag_of(op.request))
        self._attempt(client, op, node)

    def _attempt(self, client: Client, op: Pending, node_id: int) -> None:
        client.attempt += 1
        attempt = client.attempt
        op.node = node_id
        op.call = self.world.now
        process = self.processes.get(node_id)
        self._log(f"client {client.id} -> node {node_id}: {self._describe(op)}")
        if process is None or not process.alive:
            # Connection refused: certainly not delivered.
            self.world.later(0.001, self._answered, client, op, attempt, "refused", None)
            return
        self.world.later(ATTEMPT_TIMEOUT_S, self._answered, client, op, attempt, "timeout", None)
        process.io(0.0005, self._call_node, client, op, attempt, process)

    def _call_node(self, client: Client, op: Pending, attempt: int, process: Process) -> None:
        op.delivered = True
        service = process.service
        if op.request is not None:
            d = service.submit(op.request, REQUEST_TIMEOUT_S)
        elif op.kind == "get":
            d = service.get(op.key, REQUEST_TIMEOUT_S, op.consistency)
        else:
            d = service.range(op.query, REQUEST_TIMEOUT_S, op.consistency)
        op.call = self.world.now

        def answer(value) -> None:
            self.world.later(0.0005, self._answered, client, op, attempt, "ok", value)

        def failed(failure) -> None:
            self.world.later(0.0005, self._answered, client, op, attempt, "error", failure)

        d.addCallbacks(answer, failed)

    def _answered(self, client: Client, op: Pending, attempt: int, how: str, value) -> None:
        if attempt != client.attempt or not client.busy or self.violation is not None:
            return  # an attempt given up on
        client.attempt += 1  # nothing later of this attempt counts
        if how == "ok":
            # What a response header says: the leader the answering node knows.
            process = self.processes.get(op.node)
            leader = process.service.status().leader if process is not None else None
            client.guess = leader or op.node
            self._succeeded(client, op, value)
            return
        if how == "error" and value.check(InvalidArgument):
            self.fail("client", f"the node refused {op.request!r}: {value.getErrorMessage()}")
            return
        certain = how == "refused"
        retry = op.request is not None and (
            certain or (op.request.client_id and self.world.now < op.give_up_at)
        )
        if op.kind == "open" and not certain:
            retry = False  # a new session is opened instead
        if retry and self.world.now < op.give_up_at + (1 if certain else 0):
            node = self.client_rng.choice(self._targets(client))
            self.world.later(self.client_rng.uniform(0.01, 0.1), self._attempt, client, op, node)
            return
        if op.request is not None and op.kind != "open" and op.delivered:
            self._record_write(client, op, None)  # outcome unknown
        self._done(client)

    def _done(self, client: Client, pause: tuple = (0.001, 0.03)) -> None:
        client.busy = False
        if client.script is not None:
            pause = getattr(client.script, "pause", pause)
        self.world.later(self.client_rng.uniform(*pause), self._client_step, client)

    def _succeeded(self, client: Client, op: Pending, value) -> None:
        now = self.world.now
        if op.kind == "open":
            if type(value) is not SessionOpened:
                self.fail("client", f"OPEN_SESSION answered {value!r}")
                return
            other = self.assigned.setdefault(value.client_id, client.id)
            if other != client.id:
                self.fail("session", f"session {value.client_id} given to clients {other} and {client.id}")
                return
            client.session = value.client_id
            client.sequence = 0
            self.result.ops["open"] += 1
            self._done(client)
            return
        if op.request is not None:
            if type(value) in (StaleSequence, SessionExpired):
                self.fail("session", f"{op.request!r} answered {value!r}")
                return
            tag = tag_of(op.request)
            self.acked[tag] = (value, client.id, op.node)
            self._acked_waiting.add(tag)
            self._recheck()
            revision = value.revision
            client.answered[op.node] = max(client.answered.get(op.node, 0), revision)
            self._record_write(client, op, value)
            self.result.ops[op.kind] += 1
            if client.liveness:
                self._liveness_acked += 1
            self._log(f"client {client.id} <- node {op.node}: {value!r}")
            if client.script is not None:
                client.script.answered(client, op, value)
                self._done(client)
                return
            # Now and then read it back at once, serializably, where it was answered.
            if not client.liveness and self.client_rng.random() < 0.3:
                follow = Pending("range", consistency="serializable", query=Range(b"k", b"l"))
                follow.first_call = now
                follow.give_up_at = now
                self._attempt(client, follow, op.node)
                return
            self._done(client)
            return
        self.result.ops[f"{op.kind}/{op.consistency}"] += 1
        if op.kind == "get":
            self.history.append(Operation(client.id, "get", op.key, output=value, call=op.call, ret=now))
            client.seen[op.key] = value
        else:
            self._range_answered(client, op, value)
        self._done(client)

    def _range_answered(self, client: Client, op: Pending, value: RangeResult) -> None:
        node = self.nodes[op.node]
        values = {kv.key: kv.value for kv in value.kvs}
        got = tuple(values.get(key) for key in KEYS)
        for key in KEYS:
            client.seen[key] = values.get(key)
        what = f"{op.consistency} range at node {op.node} for client {client.id}"
        if value.revision < node.read_revision:
            self.fail(
                "read", f"{what} saw revision {value.revision} after one at {node.read_revision}"
            )
            return
        node.read_revision = value.revision
        if op.consistency == "serializable":
            answered = client.answered.get(op.node, 0)
            if value.revision < answered:
                self.fail(
                    "read",
                    f"{what} saw revision {value.revision}, though that node had answered"
                    f" the client's write at revision {answered}",
                )
                return
        else:
            self.history.extend(project_range(client.id, KEYS, got, op.call, self.world.now))
        self._match_read(op.node, value.revision, got, what)

    def _match_read(self, node_id: int, revision: int, got: tuple, what: str) -> None:
        expected = self.reference.values_at(revision)
        if expected is None:
            self.unmatched_reads.append((node_id, revision, got, what))
        elif expected != got:
            self.fail(
                "read", f"{what} returned {got} at revision {revision}; the log has {expected}"
            )

    def _match_result(self, tag) -> None:
        value, client_id, node_id = self.acked[tag]
        slot, expected = self.reference.results[tag]
        if value != expected:
            self.fail(
                "result",
                f"node {node_id} answered client {client_id} {value!r} for {tag}; the chosen"
                f" log (slot {slot}) gives {expected!r}",
            )

    def _record_write(self, client: Client, op: Pending, value) -> None:
        request = op.request
        ret = None if value is None else self.world.now
        call = op.first_call
        if op.kind == "put":
            ops = [Operation(client.id, "put", request.key, input=request.value, call=call, ret=ret)]
        elif op.kind == "append":
            output = value.value if value is not None else None
            ops = [Operation(client.id, "append", request.key, input=request.value,
                             output=output, call=call, ret=ret)]
        elif op.kind == "delete":
            ops = [Operation(client.id, "delete", request.key, call=call, ret=ret)]
        elif op.kind == "cas":
            compare = request.txn.compares[0]
            expected = None if compare.target is CompareTarget.VERSION else compare.operand
            new = request.txn.success[0].value
            ops = [Operation(client.id, "cas", compare.key, input=(expected, new),
                             output=None if value is None else value.succeeded, call=call, ret=ret)]
        else:
            ops = project_txn(client.id, request.txn, value, call, ret)
        self.history.extend(ops)

    def _describe(self, op: Pending) -> str:
        if op.request is not None:
            r = op.request
            if r.op is Op.TXN:
                return f"{op.kind} {r.txn} session {r.client_id}:{r.sequence}"
            return f"{op.kind} {r.key!r} {r.value!r} session {r.client_id}:{r.sequence}"
        return f"{op.kind} {op.consistency} {op.key or op.query!r}"

    # --- faults ------------------------------------------------------------------------

    def _up(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes) if self.nodes[i].process is not None]

    def _leader(self) -> Optional[Node]:
        leaders = []
        for node in self._up():
            replica = getattr(node.process.service, "replica", None)
            if replica is not None and replica.is_leader and not node.process.frozen:
                leaders.append((replica.role.ballot, node.id))
        if not leaders:
            return None
        return self.nodes[max(leaders)[1]]

    def _fault(self) -> None:
        if self.healed:
            return
        rng = self.rng
        self.world.later(rng.uniform(0.05, 0.4), self._fault)
        up = self._up()
        choice = rng.random()
        faults = self.result.faults
        if choice < 0.2 and up:
            victim = self._victim(up)
            self._crash(victim)
            self.world.later(rng.uniform(0.03, 1.2), self._restart, victim.id)
        elif choice < 0.32:
            nodes = self._members()
            rng.shuffle(nodes)
            cut = rng.randint(1, len(nodes) - 1)
            leader = self._leader()
            if leader is not None and rng.random() < 0.4:
                # The leader alone on one side: what a lease must survive.
                nodes = [leader.id] + [n for n in self._members() if n != leader.id]
                cut = 1
                self._and_its_clock(leader)
            pairs = {(a, b) for a in nodes[:cut] for b in nodes[cut:]}
            pairs |= {(b, a) for a, b in pairs}
            for a, b in sorted(pairs):
                self.network.block(a, b)
            faults["partition"] += 1
            self._log(f"partition {sorted(nodes[:cut])} | {sorted(nodes[cut:])}")
            self.world.later(rng.uniform(0.1, 1.5), self._mend, pairs)
        elif choice < 0.42:
            a, b = rng.sample(self._members(), 2)
            leader = self._leader()
            if leader is not None and rng.random() < 0.4:
                # The leader hears nobody (or nobody hears it).
                a = rng.choice([n for n in self._members() if n != leader.id])
                a, b = (a, leader.id) if rng.random() < 0.5 else (leader.id, a)
                self._and_its_clock(leader)
            self.network.block(a, b)
            faults["one-way partition"] += 1
            self._log(f"block {a} -> {b}")
            self.world.later(rng.uniform(0.1, 1.5), self._mend, {(a, b)})
        elif choice < 0.5:
            a, b = rng.sample(self._members(), 2)
            self.network.drop_between(a, b, "reset")
            faults["connection reset"] += 1
        elif choice < 0.6 and up:
            self._freeze(self._victim(up), "pause", rng.uniform(0.05, 1.5))
        elif choice < 0.7 and up:
            self._freeze(self._victim(up), "stall", rng.uniform(0.05, 1.5))
        elif choice < 0.8 and up and self.wall_steps:
            self.step_wall_clock(self._victim(up).id, rng.choice((-1, 1)) * rng.uniform(0.05, 30.0))
        elif choice < 0.85 and up and self.wall_steps:
            # A forward step of a monotonic clock is a clock running fast:
            # harmless on a leader (its lease ends early), unsound beside a
            # lease on a follower (it stops deferring to the leader early),
            # so there only in seeds without lease reads.
            leader = self._leader()
            node = leader if self.lease_reads else rng.choice(up)
            if node is not None:
                step = rng.uniform(0.01, 0.5)
                node.process.mono.offset += step
                node.process.reactor.monotonic_stepped()
                faults["monotonic clock step"] += 1
                self._log(f"node {node.id} monotonic clock steps +{step:.3f} s")

    def step_wall_clock(self, node_id: int, step: float) -> None:
        """Step node C{node_id}'s wall clock (C{reactor.seconds()}) by C{step} seconds."""
        node = self.nodes[node_id]
        node.machine.wall_offset += step
        if node.process is not None:
            node.process.reactor.clock_stepped()
        self.result.faults["wall clock step"] += 1
        self._log(f"node {node_id} wall clock steps {step:+.3f} s")

    def _and_its_clock(self, leader: Node) -> None:
        """Now and then a leader being cut off also has its wall clock stepped back."""
        if self.wall_steps and self.rng.random() < 0.3:
            self.result.faults["leader cut off, its clock stepped back"] += 1
            self.step_wall_clock(leader.id, -self.rng.uniform(2.0, 30.0))

    def _victim(self, up: list) -> Node:
        """A node to hurt: the leader half the time (where a lease lives), else any."""
        leader = self._leader()
        if leader is not None and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(up)

    def _freeze(self, node: Node, mode: str, duration: float) -> None:
        process = node.process
        if process.frozen:
            return
        process.freeze(mode)
        self.result.faults[mode] += 1
        self._log(f"{mode} node {node.id} for {duration:.3f} s")
        self.world.later(duration, self._resume, process)

    def _resume(self, process: Process) -> None:
        if process.alive and process.frozen:
            self._log(f"resume node {process.node_id} ({process.frozen})")
            process.resume()

    def _mend(self, pairs) -> None:
        self.network.heal(pairs)

    def _restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.process is None and not node.exited:
            self.result.faults["restart"] += 1
            self._boot(node)

    def _operator(self) -> None:
        if self.healed:
            return
        rng = self.rng
        self.world.later(rng.uniform(0.2, 0.9), self._operator)
        leader = self._leader()
        if leader is None:
            return
        service = leader.process.service
        replica = service.replica
        config = replica.role.leader_config
        choice = rng.random()
        try:
            if choice < 0.3:
                target = rng.choice(sorted(config.voters))
                if target != leader.id:
                    service.transfer_leadership(target)
                    self.result.faults["leader transfer"] += 1
                    self._log(f"transfer {leader.id} -> {target}")
            elif choice < 0.45 and len(self.nodes) < MAX_NODES:
                node_id = self.next_id
                kind = rng.choice((ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER))
                self._change(service, ConfigChange(kind, node_id))
                self.next_id += 1
                self._add_node(node_id, None)
            elif choice < 0.6 and config.learners:
                self._change(service, ConfigChange(ChangeKind.PROMOTE, rng.choice(sorted(config.learners))))
            elif choice < 0.75 and len(config.voters) > 3:
                self._change(service, ConfigChange(ChangeKind.REMOVE, rng.choice(sorted(config.voters))))
            elif choice < 0.8 and config.learners:
                self._change(service, ConfigChange(ChangeKind.REMOVE, rng.choice(sorted(config.learners))))
        except (ProposalRejected, ConfigError, NotLeader):
            pass

    def _change(self, service, change: ConfigChange) -> None:
        # No admin API for membership in the service yet: the core, then a Ready.
        service.replica.propose_config_change(change)
        self.proposed_changes.add(change)
        service._schedule()
        self.result.faults["membership change"] += 1
        self._log(f"propose {change}")

    # --- heal and liveness -----------------------------------------------------------

    def _heal(self) -> None:
        self.healed = True
        self.network.heal()
        self.network.faults = None
        self.network.reply_loss = 0.0
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.process is None and not node.exited:
                self._boot(node)
            elif node.process is not None and node.process.frozen:
                self._resume(node.process)
        self._log("heal")
        live = Client(100, liveness=True)
        self.clients[live.id] = live
        self.world.later(0.001, self._client_step, live)
        self.world.later(LIVENESS_BOUND_S, self._deadline)
        self.world.later(0.05, self._converged)

    def _deadline(self) -> None:
        self.fail(
            "liveness",
            f"{self._liveness_acked} of {LIVENESS_COMMANDS} writes acknowledged and members not"
            f" converged {LIVENESS_BOUND_S} s after the heal",
        )

    def _converged(self) -> None:
        self.world.later(0.05, self._converged)
        if self._liveness_acked < LIVENESS_COMMANDS:
            return
        if any(client.busy for client in self.clients.values()):
            return
        leader = self._leader()
        if leader is None:
            return
        replica = leader.process.service.replica
        target = replica.chosen_index
        if target < max(self.chosen, default=0) or self.reference.applied < target:
            return
        for member in sorted(replica.config.members):
            node = self.nodes.get(member)
            if node is None or node.process is None:
                return
            if node.store.applied_index() != target:
                return
            service = node.process.service
            if service.replica.applied != target or service._busy is not None:
                return
        self.done = True

    def _final_checks(self) -> None:
        self._recheck()
        missing = sorted((tag for tag in self.acked if tag not in self.reference.results), key=repr)
        if missing:
            self.fail("durability", f"acknowledged writes not in the chosen log: {missing[:3]}")
            return
        if self.unmatched_reads:
            self.fail("read", f"reads at revisions the log never reached: {self.unmatched_reads[:2]}")
            return
        leader = self._leader()
        replica = leader.process.service.replica
        for member in sorted(replica.config.members):
            node = self.nodes[member]
            applied, data = node.store.snapshot_now()
            if state_hash(data) != self.reference.hashes.get(applied):
                self.fail("state agreement", f"node {member} differs from the log at {applied}")
                return
        self.result.history_ops = len(self.history)
        verdict = check(self.history, time_limit_s=HISTORY_CHECK_S)
        if verdict.outcome == "illegal":
            self.fail("linearizability", verdict.explain())
        elif verdict.outcome == "unknown":
            self.result.unchecked_histories += 1


@dataclass
class _Datagrams:
    """How unreliable the network is for Paxos messages in adversarial seeds."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_s: tuple = (0.0005, 0.005)
    straggle: float = 0.0
    straggle_s: tuple = (0.05, 0.4)


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
    parser.add_argument("--verbose", action="store_true", help="trace the run")
    args = parser.parse_args(argv)
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
