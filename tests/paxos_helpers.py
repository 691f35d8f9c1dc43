"""
Helpers for the Paxos core tests: a lone replica driven by hand, and a tiny
deterministic in-process cluster.

What lives here: test scaffolding only.  Nothing here decides anything the
core should decide; it performs each L{Ready} in the documented order (save,
send, install/apply, advance) and passes messages by reference.  No clock,
no threads, no sockets; every random choice comes from a seeded
C{random.Random}.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Optional

from kvpaxos.paxos import Batch, Config, Options, Ready, Replica
from kvpaxos.storage.memory import MemoryStorage

#: Small, fast options for tests; override fields with L{options}.
TEST_OPTIONS = Options(
    election_ticks=10,
    heartbeat_ticks=2,
    window_slots=8,
    retransmit_ticks=4,
    catchup_retry_ticks=4,
    snapshot_interval=0,
)


def options(**changes) -> Options:
    """Return L{TEST_OPTIONS} with C{changes} applied."""
    fields = {
        name: getattr(TEST_OPTIONS, name)
        for name in TEST_OPTIONS.__dataclass_fields__
    }
    fields.update(changes)
    return Options(**fields)


def config(*voters: int, learners: Iterable[int] = (), removed: Iterable[int] = ()) -> Config:
    """Return a member set of C{voters} and C{learners}, C{removed} removed."""
    return Config(frozenset(voters), frozenset(learners), removed=frozenset(removed))


class LogStateMachine:
    """
    A state machine that records every command applied, in order, and can
    snapshot and restore that record.  It provides C{IStateMachine}.
    """

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.slots: list[int] = []

    def apply(self, slot: int, value) -> None:
        self.slots.append(slot)
        if type(value) is Batch:
            self.commands.extend(value.commands)

    def snapshot(self) -> bytes:
        return b"\x00".join(self.commands)

    def restore(self, data: bytes) -> None:
        self.commands = data.split(b"\x00") if data else []
        self.slots = []


class DurableLogStateMachine(LogStateMachine):
    """
    A L{LogStateMachine} that is durable (see C{IStateMachine}): it is never
    copied at compaction, only when a snapshot is sent (L{snapshot_now}).
    """

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[int] = []

    def snapshot(self) -> bytes:
        raise AssertionError("a durable state machine is not copied at compaction")

    def snapshot_now(self) -> tuple[int, bytes]:
        index = self.slots[-1] if self.slots else 0
        self.taken.append(index)
        return index, b"\x00".join(self.commands)


def past_start_guard(replica: Replica) -> Replica:
    """
    Make C{replica} look as if it had been running for C{election_ticks}
    ticks (without ticking it, which could start a campaign): it no longer
    refuses pre-votes and Prepares as a starting replica does.
    """
    replica.ticks = max(replica.ticks, replica.options.election_ticks)
    return replica


def lone(
    node_id: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    storage: Optional[MemoryStorage] = None,
    opts: Options = TEST_OPTIONS,
    seed: int = 0,
    started: bool = True,
    **kwargs,
) -> Replica:
    """
    Return a replica over C{storage} (a fresh L{MemoryStorage} holding
    C{voters} by default), for tests that step messages in by hand.
    C{started}: past its start guard (see L{past_start_guard}); False for a
    replica that has just started.
    """
    if storage is None:
        storage = MemoryStorage(config(*voters))
    replica = Replica(node_id, storage, random.Random(seed), opts, **kwargs)
    replica.test_storage = storage
    return past_start_guard(replica) if started else replica


def take(replica: Replica) -> Ready:
    """
    Cut the replica's next L{Ready}, save it to the replica's storage and
    advance, without sending anything.  Return the L{Ready}.
    """
    rd = replica.ready()
    replica.test_storage.save(rd.hard_state, rd.entries, rd.snapshot)
    replica.advance(rd)
    return rd


class Cluster:
    """
    Replicas with L{MemoryStorage}, connected by a FIFO in-process network.

    Messages leave a replica only through L{Ready} (C{messages} at once,
    C{durable_messages} after the save) and wait in C{network} until
    L{deliver} steps them in.  C{isolated} nodes send and receive nothing;
    C{drop} is a predicate over messages that drops those it accepts;
    C{hold} keeps the messages to chosen nodes aside until L{release}.

    @ivar committed: node id -> list of (slot, value) applied, in order.
    @ivar readies: node id -> every L{Ready} the node produced.
    """

    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        seed: int = 0,
        opts: Options = TEST_OPTIONS,
        state_machines: bool = False,
        voters: Optional[Iterable[int]] = None,
        started: bool = True,
    ) -> None:
        self.ids = list(ids)
        self.seed = seed
        self.opts = opts
        self.with_state_machines = state_machines
        #: Whether replicas start past their start guard (L{past_start_guard});
        #: a restarted one never does.
        self.started = started
        members = config(*(self.ids if voters is None else voters))
        self.storages: dict[int, MemoryStorage] = {}
        self.replicas: dict[int, Replica] = {}
        self.machines: dict[int, LogStateMachine] = {}
        self.committed: dict[int, list] = {}
        self.readies: dict[int, list[Ready]] = {}
        self.network: list = []
        self.isolated: set[int] = set()
        self.held: dict[int, list] = {}
        self.drop: Callable[[object], bool] = lambda message: False
        for node in self.ids:
            self.add(node, MemoryStorage(members))

    def add(self, node: int, storage: MemoryStorage, started: Optional[bool] = None) -> Replica:
        """
        Start replica C{node} over C{storage}, past its start guard if
        C{started} (by default the cluster's L{started}).
        """
        self.storages[node] = storage
        # state_machines: True for LogStateMachines, or the class to use.
        kind = self.with_state_machines
        machine = (kind if isinstance(kind, type) else LogStateMachine)() if kind else None
        self.machines[node] = machine
        replica = Replica(
            node,
            storage,
            random.Random(self.seed * 1000 + node),
            self.opts,
            state_machine=machine,
        )
        if self.started if started is None else started:
            past_start_guard(replica)
        self.replicas[node] = replica
        self.committed.setdefault(node, [])
        self.readies.setdefault(node, [])
        return replica

    def join(self, node: int) -> Replica:
        """Start a new node with an empty member set (it joins later)."""
        self.ids.append(node)
        return self.add(node, MemoryStorage(Config(frozenset())))

    def restart(self, node: int, started: bool = False) -> Replica:
        """
        Drop replica C{node} and build a new one from what it saved; it
        refuses pre-votes and Prepares for its first election_ticks unless
        C{started}.
        """
        self.network = [m for m in self.network if m.dst != node]
        return self.add(node, self.storages[node], started)

    def __getitem__(self, node: int) -> Replica:
        return self.replicas[node]

    # --- performing Readies ----------------------------------------------

    def process(self, node: int) -> Optional[Ready]:
        """Perform one L{Ready} of C{node}, if it has one; return it."""
        replica = self.replicas[node]
        if not replica.has_ready():
            return None
        rd = replica.ready()
        self.storages[node].save(rd.hard_state, rd.entries, rd.snapshot)
        self._send(rd.messages)
        self._send(rd.durable_messages)
        machine = self.machines[node]
        if rd.install_snapshot and machine is not None:
            machine.restore(rd.snapshot.data)
        for slot, value in rd.committed:
            self.committed[node].append((slot, value))
            if machine is not None:
                machine.apply(slot, value)
        for peer in rd.snapshot_wanted:
            message = replica.snapshot_message(peer, *machine.snapshot_now())
            if message is not None:
                self._send([message])
                rd.messages.append(message)  # recorded with the Ready that asked, for sent()
        self.readies[node].append(rd)
        replica.advance(rd)
        return rd

    def _send(self, messages) -> None:
        for message in messages:
            if message.src in self.isolated or self.drop(message):
                continue
            self.network.append(message)

    def deliver(self, limit: int = 100_000) -> None:
        """
        Perform Readies and deliver messages until nothing is left to do.
        """
        for _ in range(limit):
            for node in self.ids:
                while self.process(node) is not None:
                    pass
            if not self.network:
                return
            batch, self.network = self.network, []
            for message in batch:
                dst = message.dst
                if dst in self.isolated or dst not in self.replicas:
                    continue
                if dst in self.held:
                    self.held[dst].append(message)
                    continue
                self.replicas[dst].step(message)
        raise AssertionError("the cluster did not settle")

    def tick(self, count: int = 1, nodes: Optional[Iterable[int]] = None) -> None:
        """Tick C{nodes} (every node by default) C{count} times, settling after each."""
        for _ in range(count):
            for node in self.ids if nodes is None else nodes:
                self.replicas[node].tick()
            self.deliver()

    def hold(self, node: int) -> None:
        """Keep messages addressed to C{node} aside."""
        self.held.setdefault(node, [])

    def release(self, node: int) -> list:
        """Stop holding messages to C{node}; deliver those held.  Return them."""
        held = self.held.pop(node)
        self.network.extend(held)
        self.deliver()
        return held

    # --- looking at the cluster -----------------------------------------

    def leaders(self) -> list[int]:
        """Return the ids of the replicas that lead, in order."""
        return [n for n in self.ids if self.replicas[n].is_leader]

    def elect(self, node: int) -> Replica:
        """Make C{node} campaign, deliver everything, and check that it won."""
        self.replicas[node].campaign()
        self.deliver()
        replica = self.replicas[node]
        assert replica.is_leader, f"node {node} did not win"
        return replica

    def commands(self, node: int) -> list[bytes]:
        """Return the client commands C{node} has applied, in order."""
        out = []
        for _, value in self.committed[node]:
            if type(value) is Batch:
                out.extend(value.commands)
        return out

    def mark(self, node: int) -> int:
        """Return a marker for L{sent}: how many Readies C{node} produced so far."""
        return len(self.readies[node])

    def sent(self, node: int, kind=None, since: int = 0) -> list:
        """
        Return every message C{node} put in a Ready (of type C{kind}), from
        its Ready number C{since} on (see L{mark}).
        """
        out = []
        for rd in self.readies[node][since:]:
            for message in rd.messages + rd.durable_messages:
                if kind is None or type(message) is kind:
                    out.append(message)
        return out

    def read_states(self, node: int) -> list:
        """Return every L{ReadState} C{node} handed out, in order."""
        return [rs for rd in self.readies[node] for rs in rd.read_states]
