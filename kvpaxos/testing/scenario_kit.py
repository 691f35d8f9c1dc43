"""
What the targeted scenarios (L{kvpaxos.testing.scenarios}) are built from.

Scripted clients (L{Script}, L{add_client}, L{lease_get}, L{put}), helpers
over a running simulation (L{leader_id}, L{replica_of}, L{voters},
L{cut_off}, L{freeze}, L{fast}, L{new_leader}, L{aim}, L{repeat},
L{later_with_leader}), and the L{Scenario} base.  They only inject the
simulator's own faults and aim clients; no check lives here.  The
simulator's records are imported lazily (L{kvpaxos.testing.simrecords}),
as the scenarios are.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from kvpaxos.kv.commands import Op, Request


#: The key scripted clients write and read (so a stale read shows).
KEY = b"k0"
# --- scripted clients ----------------------------------------------------------


class Script:
    """
    What a scripted client does (C{Client.script}): from C{start} to
    C{stop} (virtual seconds), each step sends C{make(client)} to the node
    C{pick()} names; with no node to aim at it waits a little.
    """

    #: The pause between two operations (a scripted client presses on).
    pause = (0.001, 0.004)

    def __init__(self, sim, pick: Callable, make: Callable, start: float, stop: float,
                 answered: Optional[Callable] = None) -> None:
        self.sim = sim
        self.pick = pick
        self.make = make
        self.start = start
        self.stop = stop
        self._answered = answered

    def step(self, client) -> None:
        sim = self.sim
        now = sim.world.now
        if now >= self.stop:
            return
        node = self.pick() if now >= self.start else None
        if node is None:
            sim.world.later(max(0.002, self.start - now), sim._client_step, client)
            return
        sim._start(client, self.make(client), node)

    def answered(self, client, op, value) -> None:
        if self._answered is not None:
            self._answered(client, op, value)


def add_client(sim, script: Script):
    """Add a scripted client to C{sim}; return it."""
    from kvpaxos.testing.simrecords import Client

    client_id = 200 + len([c for c in sim.clients if c >= 200])
    client = Client(client_id, script=script)
    sim.clients[client_id] = client
    sim.world.at(script.start, sim._client_step, client)
    return client


def lease_get(client):
    from kvpaxos.testing.simrecords import Pending

    return Pending("get", key=KEY, consistency="lease")


def put(sim):
    from kvpaxos.testing.simrecords import Pending

    def make(client):
        return Pending("put", Request(Op.PUT, KEY, sim._value(client)), KEY)

    return make


# --- helpers over the simulation ---------------------------------------------------


def leader_id(sim) -> Optional[int]:
    leader = sim._leader()
    return None if leader is None else leader.id


def replica_of(sim, node_id: int):
    node = sim.nodes.get(node_id)
    if node is None or node.process is None:
        return None
    return getattr(node.process.service, "replica", None)


def voters(sim) -> list[int]:
    leader = sim._leader()
    if leader is None:
        return sorted(sim.nodes)
    return sorted(leader.process.service.replica.config.voters)


def cut_off(sim, node_id: int, keep=(), duration: float = 0.5, ways: str = "both") -> None:
    """Block node C{node_id} from every node but C{keep} (both ways, or "in"/"out") for C{duration}."""
    pairs = set()
    for other in sorted(sim.nodes):
        if other == node_id or other in keep:
            continue
        if ways in ("both", "out"):
            pairs.add((node_id, other))
        if ways in ("both", "in"):
            pairs.add((other, node_id))
    for a, b in sorted(pairs):
        sim.network.block(a, b)
    sim.result.faults["partition"] += 1
    sim._log(f"scenario: cut node {node_id} off ({ways}) but {sorted(keep)} for {duration:.3f} s")
    sim.world.later(duration, sim._mend, pairs)


def freeze(sim, node_id: int, mode: str, duration: float) -> None:
    """Freeze node C{node_id} (if it is up) for C{duration}."""
    node = sim.nodes[node_id]
    if node.process is not None and not sim.healed:
        sim._freeze(node, mode, duration)


def fast(sim) -> None:
    """
    A fast network and (on the memory provider) fast disks: an election
    fits in a few milliseconds.  LMDB keeps its drawn latencies: each of
    its commits is a real one, and a fast one per Ready costs real time.
    """
    if sim.provider == "memory":
        sim.disk_s = (0.0, 0.0005)
        sim.slow_disk = 0.0
    sim.network.delay_s = (0.0003, 0.001)


def new_leader(sim, old: int) -> Callable:
    """A picker: the leader once it is another node than C{old} (else None: wait)."""

    def pick() -> Optional[int]:
        leader = leader_id(sim)
        return leader if leader != old else None

    return pick


def aim(sim, rng, start: float, stop: float, reads_at: Callable, writes_at: Callable,
        readers: int = 2, writers: int = 2) -> None:
    """Lease reads of L{KEY} aimed by C{reads_at()}, puts of it by C{writes_at()}."""
    for _ in range(readers):
        add_client(sim, Script(sim, reads_at, lease_get, start, stop))
    for _ in range(writers):
        add_client(sim, Script(sim, writes_at, put(sim), start, stop))


def repeat(sim, rng, first: float, action: Callable) -> None:
    """
    From C{first} until the heal: C{action(leader id)} whenever a leader is
    known; it returns how long to wait before the next time, or None (it
    did nothing: try again soon).
    """

    def attempt() -> None:
        if sim.healed:
            return
        leader = leader_id(sim)
        wait = None
        if leader is not None and len(voters(sim)) >= 3:
            wait = action(leader)
        sim.world.later(wait if wait is not None else rng.uniform(0.05, 0.15), attempt)

    sim.world.at(first, attempt)


def later_with_leader(sim, rng, when: float, action: Callable, tries: int = 20) -> None:
    """At C{when}, C{action(leader_id)} if a leader is known, else try again a little later."""

    def attempt(left: int) -> None:
        if sim.healed:
            return
        leader = leader_id(sim)
        if leader is None or len(voters(sim)) < 3:
            if left:
                sim.world.later(rng.uniform(0.05, 0.15), attempt, left - 1)
            return
        action(leader)

    sim.world.at(when, attempt, tries)


# --- the scenarios -----------------------------------------------------------------


class Scenario:
    """One targeted scenario: C{configure} before the nodes boot, C{start} once the clients exist."""

    name = ""
    #: The holes (issue 9) whose interleaving it makes likely.
    holes = ""
    #: Whether the seed runs with lease reads (they are what it attacks).
    lease_reads = False
    #: The share of its seeds that run without random faults (its own only).
    quiet_share = 0.0
    #: Whether the random mix draws it (else only C{--scenario} runs it).
    drawn = True

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def configure(self, sim) -> None:
        pass

    def node_added(self, sim, node) -> None:
        """Node C{node} was made and is about to boot for the first time."""

    def start(self, sim) -> None:
        pass
