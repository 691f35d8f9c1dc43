"""
The deterministic simulator of the bare Paxos core.

It drives L{kvpaxos.paxos.Replica} with its own Ready performer and a string
state machine (L{DigestKV}); L{kvpaxos.testing.sim} runs the production node
(L{kvpaxos.node.service.ReplicaService} over the real state machine) instead.
This one is kept because it is fast and reaches the core's corners directly
(its plants: forgetful-acceptor, unconfirmed-read, eternal-lease).

All replicas run in one process over L{kvpaxos.storage.memory.MemoryStorage}
and a L{SimNetwork}; a virtual clock jumps from event to event, and one seed
drives everything: message delay, loss, duplication and reordering,
partitions (one-way ones too), crashes that lose whatever was not yet
persisted, restarts, membership changes, leader transfers, and clients that
propose writes, ask for read indexes and record what they were told.  Half
the seeds run durable state machines, as a node's store is: the state
survives a crash with its applied index, compaction copies nothing, and a
snapshot is taken from the live state when a peer needs one.

A run has a fault phase and then a heal phase (faults stop, every node comes
back, the network heals).  After every event the checker asserts:

  - agreement: no slot is chosen with two values, across nodes and restarts;
  - validity: every chosen command was proposed by a client, once (or is a
    no-op or a proposed configuration change);
  - durability: every command acknowledged to a client stays in its slot;
  - state agreement: replicas that applied through slot i have one digest;
  - read safety: a read index is never below a write acknowledged before the
    read was asked for;
  - a node that breaks one of its own invariants (AssertionError) stops the
    run;

and in the heal phase, liveness: every new proposal is chosen within a
bounded virtual time, and every member converges on one state.

Run one seed: C{python -m kvpaxos.testing.coresim --seed 7}; many:
C{--seeds 2000}.  A failure prints its seed and the command that replays it.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from kvpaxos.paxos import (
    Batch,
    ChangeKind,
    Config,
    ConfigChange,
    ConfigError,
    InstallSnapshot,
    NotLeader,
    Options,
    ProposalRejected,
    ReadState,
    Replica,
)
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.kvmachine import DigestKV, encode_command
from kvpaxos.testing.linearizability import Operation, check
from kvpaxos.testing.network import Faults, SimNetwork

TICK_MS = 10
CLIENT_TIMEOUT_MS = 1500
LIVENESS_BOUND_MS = 6000
LIVENESS_COMMANDS = 5
#: Wall-clock bound for checking one seed's history; past it the history
#: counts as unchecked (never as passed).
HISTORY_CHECK_S = 20.0
MAX_NODES = 7

#: Core options for simulation: small batches, windows and snapshot
#: intervals so that every mechanism runs often.
SIM_OPTIONS = Options(
    election_ticks=10,
    heartbeat_ticks=2,
    window_slots=6,
    batch_bytes_max=160,
    message_bytes_max=400,
    retransmit_ticks=4,
    catchup_retry_ticks=4,
    snapshot_interval=25,
    committed_max=16,
)


class Violation(Exception):
    """A checked property failed; C{kind} names which."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Result:
    """What one seed's run did."""

    seed: int
    violation: Optional[Violation] = None
    chosen_slots: int = 0
    acked: int = 0
    reads: int = 0
    lease_reads: int = 0
    history_ops: int = 0
    unchecked_histories: int = 0
    crashes: int = 0
    config_changes: int = 0
    transfers: int = 0
    #: Snapshots sent by durable state machines' replicas (taken when sent).
    durable_snapshots: int = 0
    events: int = 0

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay(self, plant: Optional[str] = None) -> str:
        extra = f" --plant {plant}" if plant else ""
        return f"python -m kvpaxos.testing.coresim --seed {self.seed}{extra}"


class UnconfirmedReadReplica(Replica):
    """
    A planted bug: a leader that answers C{read_index} at once from its own
    chosen index, without confirming with a quorum that it still leads.
    """

    def read_index(self, context) -> None:
        if self.is_leader:
            self.read_states.append(ReadState(context, self.chosen_index))
        else:
            super().read_index(context)


class EternalLeaseReplica(Replica):
    """A planted bug: a leader that believes its read lease never runs out."""

    def lease_read_index(self):
        if self.is_leader:
            return self.chosen_index
        return super().lease_read_index()


#: Bugs the simulator can plant, to show that its checker bites.
PLANTS = ("forgetful-acceptor", "unconfirmed-read", "eternal-lease")
_PLANTED_REPLICAS = {
    "unconfirmed-read": UnconfirmedReadReplica,
    "eternal-lease": EternalLeaseReplica,
}


class SimNode:
    """A simulated server: durable storage, and what a crash throws away."""

    def __init__(self, node_id: int, storage: MemoryStorage) -> None:
        self.id = node_id
        self.storage = storage
        self.replica: Optional[Replica] = None
        self.machine = DigestKV()
        self.up = False
        self.epoch = 0
        self.busy = False
        self.last_tick = 0
        #: A paused process (GC, VM stall) handles nothing until then.
        self.paused_until = 0
        #: The chosen index seen in this epoch; it never goes down.
        self.chosen_seen = 0


@dataclass
class Client:
    """A client that proposes writes and asks for reads, one at a time."""

    id: int
    seq: int = 0
    guess: Optional[int] = None
    waiting: Optional[bytes] = None
    waiting_node: Optional[int] = None
    deadline: int = 0
    liveness: bool = False


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    kind: str = field(compare=False)
    args: tuple = field(compare=False)


class Simulation:
    """
    One seeded run.  Every random choice comes from C{random.Random(seed)}
    (split into streams so that adding a check does not change the run).
    """

    def __init__(
        self,
        seed: int,
        plant: Optional[str] = None,
        fault_ms: int = 4000,
        verbose: bool = False,
        index_check: bool = True,
    ) -> None:
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown plant {plant!r}; choose from {PLANTS}")
        self.seed = seed
        self.plant = plant
        self.fault_ms = fault_ms
        self.verbose = verbose
        #: Whether read indexes are checked as they arrive; without it only
        #: the history checker judges reads (to show it bites on its own).
        self.index_check = index_check
        root = random.Random(seed)
        self.rng = random.Random(root.getrandbits(64))
        self.net_rng = random.Random(root.getrandbits(64))
        self.node_rng_seed = root.getrandbits(64)
        #: Half the seeds run durable state machines (as a node's store is:
        #: the state outlives a crash with its applied index, and compaction
        #: copies nothing); drawn apart so the other streams stay as they were.
        self.durable = plant is None and random.Random(seed * 31 + 7).random() < 0.5
        self.now = 0
        self._queue: list[_Event] = []
        self._seq = 0
        self.healed = False
        self.result = Result(seed)

        rng = self.rng
        count = rng.choice((3, 3, 5))
        self.initial = Config(frozenset(range(1, count + 1)))
        self.next_id = count + 1
        faults = Faults(
            drop=rng.choice((0.0, 0.02, 0.05, 0.1)),
            duplicate=rng.choice((0.0, 0.02, 0.05)),
            delay_ms=(1, rng.choice((3, 8, 20))),
            straggle=rng.choice((0.0, 0.01, 0.03)),
        )
        self.network = SimNetwork(self.net_rng, faults)
        self.disk_ms = (0, rng.choice((1, 3, 8)))
        self.nodes: dict[int, SimNode] = {}
        for node_id in sorted(self.initial.voters):
            self.nodes[node_id] = SimNode(node_id, MemoryStorage(self.initial))
            self._start(node_id)

        # What the checker knows.
        self.proposed: set[bytes] = set()
        self.proposed_changes: set[ConfigChange] = set()
        self.chosen: dict[int, object] = {}
        self.command_slot: dict[bytes, int] = {}
        self.digests: dict[int, bytes] = {}
        self.acked_in_slot: dict[int, set[bytes]] = {}
        self.max_acked_slot = 0
        self.reads: dict[tuple, int] = {}
        self._liveness_acked = 0
        # The clients' history, for the linearizability checker: writes by
        # command ([client, kind, key, value, call, return or None]), reads
        # as they complete, and reads waiting for their node to apply.
        self.history_writes: dict[bytes, list] = {}
        self.history_reads: list[Operation] = []
        self.read_calls: dict[tuple, int] = {}
        self.pending_reads: dict[int, list] = {}

        self.clients = {i: Client(i) for i in range(1, rng.randint(2, 4) + 1)}
        for client in self.clients.values():
            self._schedule(rng.randint(0, 50), "client", client.id)
        self._schedule(rng.randint(100, 400), "fault")
        self._schedule(rng.randint(200, 800), "operator")
        self._schedule(fault_ms, "heal")

    # --- the event loop ----------------------------------------------------

    def _schedule(self, delay: int, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(self.now + delay, self._seq, kind, args))

    def run(self) -> Result:
        """Run to the end of the heal phase, or to the first violation."""
        try:
            while self._queue:
                event = heapq.heappop(self._queue)
                self.now = event.time
                self.result.events += 1
                node = self._paused(event)
                if node is not None:
                    # Held until the process resumes, then handled in a burst.
                    self._seq += 1
                    event.time, event.seq = node.paused_until, self._seq
                    heapq.heappush(self._queue, event)
                    continue
                getattr(self, "_on_" + event.kind)(*event.args)
                self._check_nodes()
                if self._done():
                    break
            else:
                raise Violation("liveness", "the simulation ran out of events")
            self._check_converged()
            self._check_history()
        except Violation as violation:
            self.result.violation = violation
        self.result.chosen_slots = len(self.chosen)
        return self.result

    def _paused(self, event) -> Optional[SimNode]:
        if event.kind in ("tick", "persisted", "snapshot"):
            node = self.nodes.get(event.args[0])
        elif event.kind == "deliver":
            node = self.nodes.get(event.args[0].dst)
        else:
            return None
        if node is not None and node.paused_until > self.now:
            return node
        return None

    def _check_nodes(self) -> None:
        """Invariants of each node's own state, checked after every event."""
        for node in self.nodes.values():
            if not node.up:
                continue
            replica = node.replica
            if replica.chosen_index < node.chosen_seen:
                raise Violation(
                    "invariant",
                    f"node {node.id} chosen index went from {node.chosen_seen}"
                    f" down to {replica.chosen_index}",
                )
            node.chosen_seen = replica.chosen_index
            if replica.is_leader:
                role = replica.role
                stale = [s for s in role.inflight if s <= replica.chosen_index]
                if stale:
                    raise Violation(
                        "invariant", f"leader {node.id} keeps chosen slots {stale} in flight"
                    )
                if role.config_slot is not None and role.config_slot <= replica.chosen_index:
                    raise Violation(
                        "invariant", f"leader {node.id} waits on chosen change slot {role.config_slot}"
                    )

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now:7d} {text}")

    # --- nodes -------------------------------------------------------------

    def _start(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.epoch += 1
        node.busy = False
        node.up = True
        node.chosen_seen = 0
        node.paused_until = 0
        if self.plant == "forgetful-acceptor" and node.epoch > 1:
            # The seed project's bug: acceptor state saved, never read back.
            node.storage = MemoryStorage(self.initial if node_id in self.initial.voters else None)
        snapshot = node.storage.snapshot()
        if self.durable:
            # What the last persisted Ready left (save and apply are one
            # atomic step here, as in a node's store).
            node.machine.durable = True
        else:
            node.machine = DigestKV()
            node.machine.restore(snapshot.data, snapshot.index)
        kind = _PLANTED_REPLICAS.get(self.plant, Replica)
        rng = random.Random(self.node_rng_seed ^ (node_id * 7919 + node.epoch))
        node.replica = kind(
            node_id, node.storage, rng, SIM_OPTIONS, state_machine=node.machine,
            applied=node.machine.index,
        )
        first = self.rng.randint(1, TICK_MS)
        node.last_tick = self.now + first - TICK_MS
        self._schedule(first, "tick", node_id, node.epoch)
        self._log(f"start node {node_id} (epoch {node.epoch})")

    def _crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        self.pending_reads.pop(node_id, None)  # those reads never return
        node.up = False
        node.epoch += 1
        node.replica = None
        self.result.crashes += 1
        self._log(f"crash node {node_id}")

    def _on_tick(self, node_id: int, epoch: int) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return
        self._catch_up(node)
        self._pump(node)
        self._schedule(TICK_MS, "tick", node_id, epoch)

    def _catch_up(self, node: SimNode) -> None:
        """
        Tick the node once per tick period since its last tick, as the node
        service does: a process back from a pause counts the time it missed.
        """
        missed = (self.now - node.last_tick) // TICK_MS
        for _ in range(missed):
            self._guarded(node, node.replica.tick)
        node.last_tick += missed * TICK_MS

    def _on_deliver(self, message) -> None:
        node = self.nodes.get(message.dst)
        if node is None or not node.up:
            return
        self._guarded(node, node.replica.step, message)
        self._pump(node)

    def _guarded(self, node: SimNode, call, *args):
        try:
            return call(*args)
        except AssertionError as error:
            raise Violation("invariant", f"node {node.id}: {error}") from error

    def _send(self, message) -> None:
        if self.durable and type(message) is InstallSnapshot:
            self.result.durable_snapshots += 1
        for at in self.network.arrivals(message.src, message.dst, self.now):
            self._seq += 1
            heapq.heappush(self._queue, _Event(at, self._seq, "deliver", (message,)))

    def _pump(self, node: SimNode) -> None:
        """Cut a Ready if the node is idle: send, then persist after a delay."""
        if not node.up or node.busy:
            return
        replica = node.replica
        if self.verbose:
            role = (replica.role.name, replica.role.ballot)
            if getattr(node, "seen_role", None) != role:
                node.seen_role = role
                self._log(
                    f"node {node.id} is {role[0]} {role[1] or ''} chosen"
                    f" {replica.chosen_index} config {sorted(replica.config.voters)}"
                    f"+{sorted(replica.config.learners)}"
                )
        if not replica.has_ready():
            return
        rd = replica.ready()
        node.busy = True
        for message in rd.messages:
            self._send(message)
        for peer in rd.snapshot_wanted:
            # Taken off the event loop, as a node takes it off its reactor.
            self._schedule(self.rng.randint(0, 20), "snapshot", node.id, node.epoch, peer)
        if rd.must_sync():
            self._schedule(self.rng.randint(*self.disk_ms), "persisted", node.id, node.epoch, rd)
        else:
            self._on_persisted(node.id, node.epoch, rd)

    def _on_snapshot(self, node_id: int, epoch: int, peer: int) -> None:
        """Send C{peer} the durable state machine's state as it is now."""
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return
        message = node.replica.snapshot_message(peer, *node.machine.snapshot_now())
        if message is not None:
            self._send(message)

    def _on_persisted(self, node_id: int, epoch: int, rd) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return  # crashed first: the write never happened
        node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        for message in rd.durable_messages:
            self._send(message)
        if rd.install_snapshot:
            node.machine.restore(rd.snapshot.data, rd.snapshot.index)
            self._check_digest(node, rd.snapshot.index)
        for slot, value in rd.committed:
            node.machine.apply(slot, value)
            self._check_chosen(node, slot, value)
        for state in rd.read_states:
            self._log(f"node {node.id} read {state}")
            self._check_read(node, state)
        self._serve_reads(node)
        node.busy = False
        self._guarded(node, node.replica.advance, rd)
        self._pump(node)

    # --- the checker ---------------------------------------------------------

    def _check_chosen(self, node: SimNode, slot: int, value) -> None:
        if type(value) is Batch:
            for command in value.commands:
                if command not in self.proposed:
                    raise Violation("validity", f"slot {slot} holds unproposed {command!r}")
        elif type(value) is ConfigChange and value not in self.proposed_changes:
            raise Violation("validity", f"slot {slot} holds unproposed {value!r}")
        acked = self.acked_in_slot.get(slot)
        if acked:
            commands = value.commands if type(value) is Batch else ()
            lost = acked.difference(commands)
            if lost:
                raise Violation(
                    "durability",
                    f"node {node.id} applied {value!r} in slot {slot}, losing"
                    f" acknowledged {sorted(lost)!r}",
                )
        held = self.chosen.get(slot)
        if held is None:
            self.chosen[slot] = value
            if type(value) is Batch:
                for command in value.commands:
                    other = self.command_slot.setdefault(command, slot)
                    if other != slot:
                        raise Violation(
                            "validity", f"{command!r} chosen in slots {other} and {slot}"
                        )
        elif held != value:
            raise Violation(
                "agreement",
                f"slot {slot} chosen as {held!r} and as {value!r} (node {node.id})",
            )
        self._check_digest(node, slot)
        self._acknowledge(node, slot, value)

    def _serve_reads(self, node: SimNode) -> None:
        """Answer the reads whose index this node has applied, from its state."""
        waiting = self.pending_reads.get(node.id)
        if not waiting:
            return
        applied = node.machine.index
        still = []
        for index, key, client_id, call in waiting:
            if index > applied:
                still.append((index, key, client_id, call))
                continue
            value = node.machine.data.get(key)
            self.history_reads.append(Operation(
                client_id, "get", key.encode(),
                output=None if value is None else value.encode(), call=call, ret=self.now,
            ))
        self.pending_reads[node.id] = still

    def _check_history(self) -> None:
        """Every client history must be linearizable (Wing & Gong)."""
        history = list(self.history_reads)
        for client_id, kind, key, value, call, ret in self.history_writes.values():
            history.append(Operation(client_id, kind, key, input=value, call=call, ret=ret))
        self.result.history_ops = len(history)
        verdict = check(history, time_limit_s=HISTORY_CHECK_S)
        if verdict.outcome == "illegal":
            raise Violation("linearizability", verdict.explain())
        if verdict.outcome == "unknown":
            self.result.unchecked_histories += 1

    def _check_digest(self, node: SimNode, slot: int) -> None:
        digest = self.digests.setdefault(slot, node.machine.digest)
        if digest != node.machine.digest:
            raise Violation(
                "state agreement", f"node {node.id} differs after slot {slot}"
            )

    def _check_read(self, node: SimNode, state: ReadState, required=None) -> None:
        if required is None:
            required = self.reads.pop(state.context, None)
        call = self.read_calls.pop(state.context, None)
        if required is None or state.index is None:
            return
        _, client_id, _, key = state.context
        self.pending_reads.setdefault(node.id, []).append((state.index, key, client_id, call))
        self.result.reads += 1
        if self.index_check and state.index < required:
            raise Violation(
                "linearizability",
                f"node {node.id} gave read index {state.index} but slot {required}"
                f" was acknowledged before the read was asked for",
            )

    # --- clients ----------------------------------------------------------------

    def _acknowledge(self, node: SimNode, slot: int, value) -> None:
        if type(value) is not Batch:
            return
        for client in self.clients.values():
            if (
                client.waiting is not None
                and client.waiting_node == node.id
                and client.waiting in value.commands
            ):
                self.acked_in_slot.setdefault(slot, set()).add(client.waiting)
                self.history_writes[client.waiting][5] = self.now
                self.max_acked_slot = max(self.max_acked_slot, slot)
                self.result.acked += 1
                if client.liveness:
                    self._liveness_acked += 1
                client.waiting = None
                self._schedule(self.rng.randint(1, 30), "client", client.id)

    def _members(self) -> list[int]:
        return sorted(self.nodes)

    def _on_client(self, client_id: int) -> None:
        client = self.clients.get(client_id)
        if client is None:
            return  # retired at heal
        rng = self.rng
        if client.waiting is not None:
            if self.now < client.deadline:
                return
            client.waiting = None  # outcome unknown; never retried
        if client.liveness and self._liveness_acked >= LIVENESS_COMMANDS:
            return
        target = client.guess if client.guess in self.nodes else rng.choice(self._members())
        node = self.nodes[target]
        if not node.up:
            client.guess = None
            self._schedule(rng.randint(5, 30), "client", client.id)
            return
        if not client.liveness and rng.random() < 0.3:
            self._read(client, node)
            return
        client.seq += 1
        kind, key, value = rng.choice(("put", "append")), f"k{rng.randint(0, 4)}", str(rng.randint(0, 999))
        command = encode_command(client.id, client.seq, kind, key, value)
        try:
            self._guarded(node, node.replica.propose, command)
        except NotLeader as error:
            client.guess = error.leader
            self._schedule(rng.randint(1, 20), "client", client.id)
            return
        except ProposalRejected:
            self._schedule(rng.randint(10, 50), "client", client.id)
            return
        self.proposed.add(command)
        self.history_writes[command] = [client.id, kind, key.encode(), value.encode(), self.now, None]
        client.waiting = command
        client.waiting_node = target
        client.deadline = self.now + CLIENT_TIMEOUT_MS
        self._schedule(client.deadline - self.now, "client", client.id)
        self._pump(node)

    def _read(self, client: Client, node: SimNode) -> None:
        client.seq += 1
        key = f"k{self.rng.randint(0, 4)}"
        context = ("read", client.id, client.seq, key)
        if self.rng.random() < 0.4:
            self._lease_read(client, node, key)
            return
        try:
            self._guarded(node, node.replica.read_index, context)
        except NotLeader as error:
            client.guess = error.leader
        else:
            self.reads[context] = self.max_acked_slot
            self.read_calls[context] = self.now
            self._pump(node)
        self._schedule(self.rng.randint(5, 40), "client", client.id)

    def _lease_read(self, client: Client, node: SimNode, key: str) -> None:
        self._catch_up(node)  # what the node service does before a lease read
        try:
            index = self._guarded(node, node.replica.lease_read_index)
        except NotLeader as error:
            client.guess = error.leader
            index = None
        if index is not None:
            self.result.lease_reads += 1
            context = ("lease", client.id, client.seq, key)
            self.read_calls[context] = self.now
            self._check_read(node, ReadState(context, index), required=self.max_acked_slot)
            self._serve_reads(node)
        self._schedule(self.rng.randint(5, 40), "client", client.id)

    # --- faults and operators ----------------------------------------------------

    def _on_fault(self) -> None:
        if self.healed:
            return
        rng = self.rng
        up = [n for n in sorted(self.nodes) if self.nodes[n].up]
        choice = rng.random()
        if choice < 0.35 and up:
            victim = rng.choice(up)
            self._crash(victim)
            self._schedule(rng.randint(30, 1200), "restart", victim)
        elif choice < 0.6:
            nodes = sorted(self.nodes)
            rng.shuffle(nodes)
            cut = rng.randint(1, len(nodes) - 1)
            self.network.partition([nodes[:cut], nodes[cut:]])
            self._log(f"partition {nodes[:cut]} | {nodes[cut:]}")
            self._schedule(rng.randint(100, 1500), "mend")
        elif choice < 0.75:
            nodes = sorted(self.nodes)
            a, b = rng.sample(nodes, 2)
            self.network.block(a, b)
            self._log(f"block {a} -> {b}")
            self._schedule(rng.randint(100, 1500), "mend")
        elif choice < 0.85 and up:
            victim = self.nodes[rng.choice(up)]
            victim.paused_until = self.now + rng.randint(50, 2000)
            self._log(f"pause node {victim.id} until {victim.paused_until}")
        self._schedule(rng.randint(50, 400), "fault")

    def _on_mend(self) -> None:
        self.network.heal()

    def _on_restart(self, node_id: int) -> None:
        if not self.nodes[node_id].up:
            self._start(node_id)

    def _leader(self) -> Optional[SimNode]:
        leaders = [n for n in self.nodes.values() if n.up and n.replica.is_leader]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.replica.role.ballot)

    def _on_operator(self) -> None:
        if self.healed:
            return
        rng = self.rng
        self._schedule(rng.randint(200, 900), "operator")
        leader = self._leader()
        if leader is None:
            return
        replica = leader.replica
        config = replica.role.leader_config
        choice = rng.random()
        try:
            if choice < 0.25:
                target = rng.choice(sorted(config.voters))
                if target != leader.id:
                    replica.transfer_leadership(target)
                    self.result.transfers += 1
                    self._log(f"transfer {leader.id} -> {target}")
            elif choice < 0.45 and len(self.nodes) < MAX_NODES:
                node_id = self.next_id
                change = ConfigChange(rng.choice((ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER)), node_id)
                self._change(replica, change)
                self.next_id += 1
                self.nodes[node_id] = SimNode(node_id, MemoryStorage())
                self._start(node_id)
            elif choice < 0.6 and config.learners:
                self._change(replica, ConfigChange(ChangeKind.PROMOTE, rng.choice(sorted(config.learners))))
            elif choice < 0.75 and len(config.voters) > 3:
                self._change(replica, ConfigChange(ChangeKind.REMOVE, rng.choice(sorted(config.voters))))
            elif choice < 0.8 and config.learners:
                self._change(replica, ConfigChange(ChangeKind.REMOVE, rng.choice(sorted(config.learners))))
        except (ProposalRejected, ConfigError, NotLeader):
            pass
        self._pump(leader)

    def _change(self, replica: Replica, change: ConfigChange) -> None:
        replica.propose_config_change(change)
        self.proposed_changes.add(change)
        self.result.config_changes += 1
        self._log(f"propose {change}")

    # --- heal and liveness --------------------------------------------------------

    def _on_heal(self) -> None:
        self.healed = True
        self.network.heal()
        self.network.faults = Faults(delay_ms=self.network.faults.delay_ms)
        for node_id in sorted(self.nodes):
            if not self.nodes[node_id].up:
                self._start(node_id)
        for node in self.nodes.values():
            node.paused_until = 0
        self._log("heal")
        # One client now proposes LIVENESS_COMMANDS new commands in turn;
        # all must be chosen, and every member converge, within the bound.
        first = self.clients[1]
        first.liveness = True
        first.waiting = None
        self.clients = {first.id: first}
        self._schedule(1, "client", first.id)
        self._schedule(LIVENESS_BOUND_MS, "deadline")

    def _on_deadline(self) -> None:
        raise Violation(
            "liveness",
            f"{self._liveness_acked} of {LIVENESS_COMMANDS} commands chosen and"
            f" members not converged {LIVENESS_BOUND_MS} ms after heal",
        )

    def _done(self) -> bool:
        if not self.healed or self._liveness_acked < LIVENESS_COMMANDS:
            return False
        # Converged: every member of the leader's member set applied as far
        # as the leader has chosen.
        leader = self._leader()
        if leader is None:
            return False
        target = leader.replica.chosen_index
        if target < self.max_acked_slot:
            return False  # a new leader still re-proposing what was chosen
        members = leader.replica.config.members
        return all(
            self.nodes[m].up and self.nodes[m].machine.index >= target for m in members
        ) and not any(self.nodes[m].busy for m in members)

    def _check_converged(self) -> None:
        leader = self._leader()
        if leader is None or self._liveness_acked < LIVENESS_COMMANDS:
            raise Violation("liveness", "no converged leader after heal")
        index = leader.machine.index
        for member in sorted(leader.replica.config.members):
            machine = self.nodes[member].machine
            if machine.index < self.max_acked_slot:
                raise Violation(
                    "durability",
                    f"node {member} applied through {machine.index}, below"
                    f" acknowledged slot {self.max_acked_slot}",
                )
            if machine.index == index and machine.digest != leader.machine.digest:
                raise Violation("state agreement", f"node {member} differs at {index}")


def run_seed(seed: int, plant: Optional[str] = None, verbose: bool = False, **options) -> Result:
    """Run one seed and return its L{Result}."""
    return Simulation(seed, plant=plant, verbose=verbose, **options).run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvpaxos.testing.coresim",
        description="Run the kvpaxos cluster simulator over one or many seeds.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="run this one seed")
    group.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1")
    parser.add_argument("--first", type=int, default=0, help="first seed of --seeds")
    parser.add_argument("--plant", choices=PLANTS, help="plant a known bug")
    parser.add_argument("--verbose", action="store_true", help="trace the run")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    totals = Result(-1)
    failures = 0
    for seed in seeds:
        result = run_seed(seed, plant=args.plant, verbose=args.verbose)
        for name in ("chosen_slots", "acked", "reads", "lease_reads", "history_ops",
                     "unchecked_histories", "crashes", "config_changes", "transfers",
                     "durable_snapshots", "events"):
            setattr(totals, name, getattr(totals, name) + getattr(result, name))
        if not result.ok:
            failures += 1
            print(f"seed {seed}: {result.violation}")
            print(f"  replay with: {result.replay(args.plant)}")
            if args.seed is None and failures >= 10:
                print("stopping after 10 failures")
                break
    elapsed = time.perf_counter() - started
    print(
        f"{len(seeds)} seeds, {failures} failed, {elapsed:.1f} s: "
        f"{totals.chosen_slots} slots chosen, {totals.acked} writes acknowledged, "
        f"{totals.reads} reads checked ({totals.lease_reads} by lease), "
        f"{totals.history_ops} operations in linearizable histories "
        f"({totals.unchecked_histories} histories unchecked), {totals.crashes} crashes, "
        f"{totals.config_changes} membership changes, {totals.transfers} transfers, "
        f"{totals.durable_snapshots} snapshots sent from durable state machines, "
        f"{totals.events} events"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
