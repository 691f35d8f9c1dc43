"""
Targeted fault scenarios for the node simulator (L{kvpaxos.testing.sim}):
scripted but randomized sequences of the simulator's own faults that make a
rare interleaving common, as FoundationDB's "buggify" does.

Each seed with random faults also runs, with probability L{PROBABILITY}, one
scenario chosen by the seed (from its own C{random.Random} stream, so a seed
without a scenario draws exactly what it drew before scenarios existed).
A scenario only injects faults and aims clients; what catches a bug is
always one of the simulator's ordinary checks (agreement, the history
checker, read safety, liveness), plus one check that only makes sense in
the calm a scenario provides (L{CalmFollowerWrites}: a write taken by a
follower is answered soon after it is chosen).

Each scenario was designed from one of issue 9's holes (the plants of
L{kvpaxos.testing.holes}, registered in L{kvpaxos.testing.plants}); its
docstring names the interleaving it makes likely.  Nothing here reads the
wall clock, starts a thread or iterates an unordered collection.

What must not live here: new checks of a plant's own mechanism (a
scenario that recognised a plant would prove nothing), and edits of the
product's objects beyond what a fault or an operator does.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

from kvpaxos.kv.commands import Op, Request
from kvpaxos.encoding.commands import encode_request
from kvpaxos.encoding.state import encode_snapshot
from kvpaxos.paxos import Batch
from kvpaxos.paxos.messages import Catchup, InstallSnapshot, Snapshot, TimeoutNow
from kvpaxos.testing.simworld import BACKOFF_FIRST_S

#: Draw a scenario from the seed (the default of C{Simulation(scenario=)}).
DRAW = "draw"
#: The share of random-fault seeds that also run a scenario.
PROBABILITY = 0.3
#: The key scripted clients write and read (so a stale read shows).
KEY = b"k0"
#: How soon after it is chosen a write taken by a follower must be answered
#: in calm conditions (issue 9, hole 11): the chosen index goes out as soon
#: as it advances, so about one message delay and one commit; a heartbeat
#: period (heartbeat_ticks = 2: 20 ms) is too late.
LEARN_BOUND_S = 0.012


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
    from kvpaxos.testing.sim import Client

    client_id = 200 + len([c for c in sim.clients if c >= 200])
    client = Client(client_id, script=script)
    sim.clients[client_id] = client
    sim.world.at(script.start, sim._client_step, client)
    return client


def lease_get(client):
    from kvpaxos.testing.sim import Pending

    return Pending("get", key=KEY, consistency="lease")


def put(sim):
    from kvpaxos.testing.sim import Pending

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

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def configure(self, sim) -> None:
        pass

    def node_added(self, sim, node) -> None:
        """Node C{node} was made and is about to boot for the first time."""

    def start(self, sim) -> None:
        pass


class StalledFollower(Scenario):
    """
    The leader is cut off from every follower but as many as make its
    quorum; one of those stalls (a long GC) for longer than its election
    timeout but not so long that the leader's check of its quorum fails,
    and the connection that carries the leader's messages to it is reset
    as the stall begins (the leader reconnects), so that it wakes with one
    fresh heartbeat in its socket.  It must count the ticks it missed
    before it acks that heartbeat (issue 9, hole 2), or its ack extends the
    old leader's lease while it campaigns with the others.  Once its acks
    are on the way the old leader stops hearing it; lease reads go to the
    old leader, writes to whoever leads next.
    """

    name = "stalled-follower"
    holes = "2"
    lease_reads = True
    quiet_share = 1.0

    def configure(self, sim) -> None:
        fast(sim)

    def start(self, sim) -> None:
        repeat(sim, self.rng, self.rng.uniform(0.5, 0.8), lambda leader: self._hit(sim, leader))

    def _hit(self, sim, leader: int) -> Optional[float]:
        from kvpaxos.testing.sim import TICK_S

        rng = self.rng
        followers = [n for n in voters(sim) if n != leader and sim.nodes[n].process is not None]
        count = len(voters(sim))
        if not followers or count % 2 == 0:
            return 0.3  # no member set where one follower decides
        follower = rng.choice(followers)
        f = replica_of(sim, follower)
        role = replica_of(sim, leader).role
        # Longer than what is left of the follower's election timeout,
        # shorter than the leader's next failing check of its quorum (both
        # 10 to 20 ticks): timed from their state, as a well-aimed fault.
        lo = sim.world.now + (f.election_timeout - f.election_elapsed + 0.5) * TICK_S
        hi = sim.world.now + (
            2 * f.options.election_ticks - getattr(role, "quorum_elapsed", 0) - 1
        ) * TICK_S
        if f.role.name != "follower" or lo >= hi:
            return rng.uniform(0.02, 0.1)
        others = [n for n in followers if n != follower]
        keep = [follower] + rng.sample(others, count // 2 - 1)
        cut = rng.uniform(0.3, 0.6)
        cut_off(sim, leader, keep=keep, duration=cut)
        node = sim.nodes[follower]
        sim._freeze(node, "stall", 10.0)  # resumed below
        process = node.process
        # What the leader sends it waits in the connection, which is reset
        # (losing it) about a reconnect's time before the follower wakes.
        sim.network.block(leader, follower)

        def reset() -> None:
            conn = sim.network.conns.get((leader, follower))
            if conn is not None:
                sim.network.drop(conn, "reset")
            sim.network.heal({(leader, follower)})

        backoff = BACKOFF_FIRST_S  # the leader's first reconnect attempt
        reset_at = max(0.001, lo - sim.world.now - rng.uniform(backoff, backoff * 1.1))
        sim.world.later(reset_at, reset)

        def wake() -> None:
            if not (process.alive and process.frozen):
                return
            now = sim.world.now
            new = sim.network.conns.get((leader, follower))
            # Wake once the first message over the new connection is in.
            if now < hi and (new is None or new.last[0] == 0.0 or now <= new.last[0] or now < lo):
                sim.world.later(0.0005, wake)
                return
            sim._resume(process)
            sim.world.later(rng.uniform(0.0, 0.002), sim.network.block, follower, leader)
            sim.world.later(cut, sim._mend, {(follower, leader)})

        sim.world.later(reset_at + 0.0005, wake)
        now = sim.world.now
        aim(sim, rng, now, now + cut + 0.2, lambda: leader, new_leader(sim, leader))
        return cut + rng.uniform(0.2, 0.5)


class TransferHeld(Scenario):
    """
    A leader transfer whose TimeoutNow straggles (as the adversarial
    network may delay one Paxos message while later ones pass): it reaches
    the target after the leader gave the transfer up, while the target
    still follows that leader, and the target's campaign skips pre-vote
    and stickiness (issue 9, hole 4).  As it arrives the old leader stops
    hearing anyone for a while, so it keeps its view; lease reads go to
    it, writes to whoever leads next.
    """

    name = "transfer-held"
    holes = "4"
    lease_reads = True
    quiet_share = 0.5

    def configure(self, sim) -> None:
        fast(sim)

    def start(self, sim) -> None:
        repeat(sim, self.rng, self.rng.uniform(0.5, 0.8), lambda leader: self._hit(sim, leader))

    def _hit(self, sim, leader: int) -> Optional[float]:
        rng = self.rng
        targets = [n for n in voters(sim) if n != leader and sim.nodes[n].process is not None]
        if not targets:
            return None
        target = rng.choice(targets)
        held = rng.uniform(0.1, 0.3)
        process = sim.nodes[leader].process
        transport = process.service.peers

        def send(message) -> None:
            if type(message) is TimeoutNow and message.dst == target:
                del transport.send  # the next ones go as they should
                sim._log(f"scenario: TimeoutNow {leader} -> {target} held {held:.3f} s")
                sim.world.later(held, late, message)
                return
            type(transport).send(transport, message)

        def late(message) -> None:
            if process.alive and not sim.healed:
                cut_off(sim, leader, (), rng.uniform(0.05, 0.3), "in")
                sim.network.send(process, message)

        transport.send = send
        try:
            process.service.transfer_leadership(target)
        except Exception:
            del transport.send
            return None
        sim.result.faults["leader transfer"] += 1
        sim._log(f"scenario: transfer {leader} -> {target}")
        now = sim.world.now
        aim(sim, rng, now, now + held + 0.4, lambda: leader, new_leader(sim, leader))
        # Undo the hold if no TimeoutNow went out (the transfer was given up).
        sim.world.later(0.15, lambda: vars(transport).pop("send", None))
        return held + rng.uniform(0.3, 0.6)


class MisconfiguredTick(Scenario):
    """
    One member runs a slower tick than the others (a misconfigured
    C{tick_ms}): as leader, its lease lasts longer in real time than the
    others' stickiness.  It is made leader by a transfer, then cut off;
    lease reads go to it, writes to the others (issue 9, hole 6: a member
    must refuse lease reads while a voter's timing differs).
    """

    name = "misconfigured-tick"
    holes = "6"
    lease_reads = True
    quiet_share = 0.5

    def configure(self, sim) -> None:
        self.odd = self.rng.choice(sorted(sim.initial.voters))
        self.factor = self.rng.uniform(1.5, 2.5)

    def node_added(self, sim, node) -> None:
        from kvpaxos.testing.sim import TICK_S

        if node.id == self.odd:
            node.tick_s = TICK_S * self.factor

    def start(self, sim) -> None:
        sim.world.at(self.rng.uniform(0.5, 0.8), self._attack, sim)

    def _attack(self, sim) -> None:
        """Make the odd member leader (a transfer), then cut it off; again until the heal."""
        rng = self.rng
        if sim.healed:
            return
        odd = self.odd
        leader = leader_id(sim)
        if leader == odd and odd in voters(sim):
            duration = rng.uniform(0.3, 0.6)
            cut_off(sim, odd, duration=duration)
            now = sim.world.now
            aim(sim, rng, now, now + duration, lambda: odd, new_leader(sim, odd), writers=2)
            sim.world.later(duration + rng.uniform(0.2, 0.5), self._attack, sim)
            return
        if leader is not None and sim.nodes[odd].process is not None and odd in voters(sim):
            try:
                sim.nodes[leader].process.service.transfer_leadership(odd)
                sim.result.faults["leader transfer"] += 1
                sim._log(f"scenario: transfer {leader} -> {odd}")
            except Exception:
                pass
        sim.world.later(rng.uniform(0.1, 0.3), self._attack, sim)


class DriftAtTheLimit(Scenario):
    """
    Machine clocks at the edge of the drift allowance: one member runs
    slow (at 1 - DRIFT_MAX) and the others fast; the slow one is made
    leader and cut off.  Its lease must end before the others' stickiness
    does (issue 9, hole 6: C{lease_drift_ticks} covers rate error).
    """

    name = "drift-at-the-limit"
    holes = "6"
    lease_reads = True
    quiet_share = 0.5

    def configure(self, sim) -> None:
        self.slow = self.rng.choice(sorted(sim.initial.voters))
        fast(sim)

    def node_added(self, sim, node) -> None:
        from kvpaxos.testing.sim import DRIFT_MAX

        node.machine.rate = 1.0 - DRIFT_MAX if node.id == self.slow else 1.0 + DRIFT_MAX

    def start(self, sim) -> None:
        MisconfiguredTick.start(self, sim)

    _attack = MisconfiguredTick._attack

    @property
    def odd(self):
        return self.slow


class ForgedPeer(Scenario):
    """
    A hostile or misrouted neighbour (another cluster on a reused address,
    a stale process) sends well-formed peer messages under a member's id
    (issue 9, hole 9): unsolicited Catchups with a junk value for a
    follower's next slot, and InstallSnapshots of an empty state far
    ahead, from a member that is not the leader and was not asked; and
    InstallSnapshots whose state does not decode, from any member, the
    leader included.  A node must refuse them, never take or stop on them.
    """

    name = "forged-peer"
    holes = "9"

    def start(self, sim) -> None:
        rng = self.rng
        at = rng.uniform(0.5, 1.0)
        for _ in range(rng.randint(4, 10)):
            sim.world.at(at, self._forge, sim)
            at += rng.uniform(0.05, 0.4)

    def _forge(self, sim) -> None:
        if sim.healed:
            return
        rng = self.rng
        leader = leader_id(sim)
        up = [n for n in sorted(sim.nodes) if sim.nodes[n].process is not None and n != leader]
        if not up:
            return
        victim = rng.choice(up)
        process = sim.nodes[victim].process
        replica = getattr(process.service, "replica", None)
        if replica is None:
            return
        strangers = [n for n in sorted(sim.nodes) if n not in (victim, leader)]
        kind = rng.choice(("catchup", "snapshot", "corrupt"))
        if kind == "corrupt":
            src = rng.choice(strangers + ([leader] if leader is not None else []) or [victim])
        elif strangers:
            src = rng.choice(strangers)
        else:
            return
        if kind == "catchup":
            first = replica.chosen_index + 1
            forged = Request(Op.PUT, KEY, b"forged-%d" % rng.getrandbits(32))
            value = Batch((encode_request(forged),))
            message = Catchup(src, victim, first, ((replica.promised, value),), first)
        else:
            index = replica.chosen_index + rng.choice((1, 5, 1000))
            if kind == "snapshot":
                data = encode_snapshot(index, 1, [], [])
            else:
                data = rng.getrandbits(8 * 24).to_bytes(24, "big")
            message = InstallSnapshot(src, victim, Snapshot(index, replica.config, data))
        process.io(0, self._deliver, sim, process, kind, message)

    def _deliver(self, sim, process, kind: str, message) -> None:
        # Forged in the name of a member that, as it arrives, is neither the
        # leader the victim follows nor one it asked for catch-up: from
        # those, a node cannot tell a forgery (mutual TLS is that gate).
        replica = process.service.replica
        if kind != "corrupt" and (
            message.src == replica.leader or message.src in replica.catchup_asked
        ):
            return
        sim.result.faults[f"forged {kind}"] += 1
        sim._log(f"scenario: forged {kind} from {message.src} to node {message.dst}")
        process.service.message_received(message)


class EarlyAnswerCrash(Scenario):
    """
    A client writes through a node whose disk is slow; as soon as it is
    answered (early: before the fsync) the node crashes, restarts, and the
    client reads back there, serializably (issue 9, hole 8: what a node
    answered before a crash must not be missing from its first reads).
    """

    name = "early-answer-crash"
    holes = "8"

    def configure(self, sim) -> None:
        sim.disk_s = (0.005, 0.04)
        sim.slow_disk = 0.0

    def start(self, sim) -> None:
        rng = self.rng
        self.state = {}
        for _ in range(rng.randint(1, 2)):
            add_client(sim, Script(sim, None, None, rng.uniform(0.5, 1.0), sim.fault_s - 0.3))
            client = sim.clients[max(sim.clients)]
            client.script = _ReadBack(sim, rng, client.script.start, client.script.stop)


class _ReadBack(Script):
    def __init__(self, sim, rng, start, stop) -> None:
        super().__init__(sim, None, None, start, stop)
        self.rng = rng
        self.read_at: Optional[int] = None

    def step(self, client) -> None:
        from kvpaxos.testing.sim import Pending
        from kvpaxos.kv.commands import Range

        sim = self.sim
        now = sim.world.now
        if now >= self.stop:
            return
        if now < self.start:
            sim.world.later(self.start - now, sim._client_step, client)
            return
        if self.read_at is not None:
            node = self.read_at
            if sim.nodes[node].process is None:
                sim.world.later(0.0005, sim._client_step, client)  # read as soon as it is back
                return
            self.read_at = None
            sim._start(client, Pending("range", consistency="serializable",
                                       query=Range(b"k", b"l")), node)
            return
        up = [n for n in sorted(sim.nodes) if sim.nodes[n].process is not None]
        if not up:
            sim.world.later(0.01, sim._client_step, client)
            return
        if client.session is None:
            sim._start(client, Pending("open", Request(Op.OPEN_SESSION)), self.rng.choice(up))
            return
        sim._start(client, put(sim)(client), self.rng.choice(up))

    def answered(self, client, op, value) -> None:
        sim = self.sim
        node = sim.nodes.get(op.node)
        if node is None or node.process is None or self.rng.random() < 0.2:
            return
        sim._crash(node)
        sim.world.later(self.rng.uniform(0.005, 0.06), sim._restart, node.id)
        self.read_at = node.id


class DiskFailure(Scenario):
    """
    A disk fails a commit (EIO) on one node or two: the node stops on the
    fatal error, and the supervisor (systemd, C{Restart=on-failure})
    restarts it only if it exited non-zero, that is if it recorded why
    (issue 9, hole 10).  The cluster must converge after the heal.
    """

    name = "disk-failure"
    holes = "10"

    def start(self, sim) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 2)):
            sim.world.at(rng.uniform(0.4, sim.fault_s - 0.5), self._fail, sim)

    def _fail(self, sim) -> None:
        up = sim._up()
        if not up or sim.healed:
            return
        node = self.rng.choice(up)
        node.process.disk.failing = True
        sim.result.faults["disk failure"] += 1
        sim._log(f"scenario: node {node.id}'s disk fails its next commit")


class CalmFollowerWrites(Scenario):
    """
    Calm conditions (no random faults, fast disks and network) and a
    client writing through followers: each write must be answered within
    L{LEARN_BOUND_S} of being chosen (issue 9, hole 11: the leader tells
    followers the chosen index as soon as it advances).
    """

    name = "calm-follower-writes"
    holes = "11"

    def configure(self, sim) -> None:
        sim.random_faults = False
        sim.disk_s = (0.0, 0.0005)
        sim.slow_disk = 0.0
        sim.network.faults = None
        sim.network.reply_loss = 0.0
        sim.network.delay_s = (0.0003, 0.001)

    def start(self, sim) -> None:
        self.lateness = []

        def follower():
            leader = leader_id(sim)
            if leader is None:
                return None
            others = [n for n in voters(sim) if n != leader and sim.nodes[n].process is not None]
            return self.rng.choice(others) if others else None

        def answered(client, op, value) -> None:
            from kvpaxos.testing.reference import tag_of

            entry = sim.reference.results.get(tag_of(op.request))
            if entry is None or op.call < sim.chosen_at.get(entry[0], op.call) - 1.0:
                return
            chosen_at = sim.chosen_at.get(entry[0])
            if chosen_at is None or chosen_at < op.call:
                return
            late = sim.world.now - chosen_at
            self.lateness.append(late)
            if late > LEARN_BOUND_S:
                sim.fail(
                    "latency",
                    f"node {op.node} answered a write {late * 1000:.1f} ms after slot"
                    f" {entry[0]} was chosen (bound {LEARN_BOUND_S * 1000:.0f} ms, calm)",
                )

        # Low load: the random clients stay idle; one client writes.
        for client in sorted(sim.clients):
            sim.clients[client].script = Script(sim, None, None, 0.0, 0.0)
        add_client(sim, Script(sim, follower, put(sim), 0.5, 2.0, answered))


class RestartUnderLease(Scenario):
    """
    A follower restarts while the leader's lease rests on it, and a
    campaign's Prepare reaches it in its start window (issue 9, hole 5).

    Three voters.  Just after the leader's check of its quorum, its
    messages to both followers are held, so both stop hearing it while it
    stays leader for up to two election periods.  The first follower to
    campaign (C) wins its pre-vote from the other (F); its disk is slowed,
    so that its raised ballot, and with it its Prepares, are durable only
    a little later.  Shortly before that, the leader's messages to F flow
    again: F acks a heartbeat, extending the leader's lease, and is killed
    and restarted at once, and C reconnects to it in time for its Prepare.
    A replica that promised it would let C lead while the old leader's
    lease still counts on F.  Lease reads go to the old leader, writes to
    whoever leads.
    """

    name = "restart-under-lease"
    holes = "5"
    lease_reads = True
    quiet_share = 1.0

    def configure(self, sim) -> None:
        fast(sim)

    def start(self, sim) -> None:
        rng = self.rng
        first = rng.uniform(0.5, 0.8)
        self.old = None
        repeat(sim, rng, first, lambda leader: self._hit(sim, leader))

        def reads_at():
            old = self.old
            return old if old is not None and sim.nodes[old].process is not None else leader_id(sim)

        aim(sim, rng, first, sim.fault_s, reads_at, lambda: leader_id(sim))

    def _hit(self, sim, leader: int) -> Optional[float]:
        rng = self.rng
        members = voters(sim)
        followers = [n for n in members if n != leader]
        if len(members) != 3 or any(sim.nodes[n].process is None for n in members):
            return 0.3
        role = replica_of(sim, leader).role
        if role.name != "leader" or role.quorum_elapsed > 1:
            return 0.002  # aim just after its check of its quorum
        pairs = {(leader, n) for n in followers}
        for a, b in sorted(pairs):
            sim.network.block(a, b)
        sim.result.faults["partition"] += 1
        sim._log(f"scenario: hold leader {leader}'s messages to {followers}")
        self.old = leader
        disks = {n: sim.nodes[n].process.disk for n in followers}
        usual = {n: disk.latency for n, disk in disks.items()}
        commits = {n: [] for n in followers}
        for n, disk in disks.items():
            disk.latency = self._slow(sim, commits[n])
        deadline = sim.world.now + 0.5

        def end(why: str = "done") -> None:
            sim._log(f"scenario: restart-under-lease ends ({why})")
            for n, disk in disks.items():
                disk.latency = usual[n]
            sim._mend(pairs)

        def leading():
            l = replica_of(sim, leader)
            return l if l is not None and l.is_leader and sim.world.now < deadline else None

        #: When each follower was last seen not campaigning.
        calm = {n: sim.world.now for n in followers}

        def candidate() -> None:
            if leading() is None:
                return end("no longer leader")
            names = {n: getattr(getattr(replica_of(sim, n), "role", None), "name", None)
                     for n in followers}
            for n in followers:
                if names[n] != "candidate":
                    calm[n] = sim.world.now
            c = [n for n in followers if names[n] == "candidate"]
            if not c or not commits[c[0]] or commits[c[0]][-1][0] < calm[c[0]]:
                return sim.world.later(0.0005, candidate)
            (f,) = [n for n in followers if n != c[0]]
            if names[f] != "follower":
                return end("both campaign")
            asked, latency = commits[c[0]][-1]
            durable = asked + latency
            heal_at = durable - rng.uniform(0.025, 0.045)
            sim._log(f"scenario: node {c[0]} campaigns; its ballot is durable at {durable:.4f}")
            sim.world.at(max(sim.world.now, heal_at), reach, c[0], f)

        def reach(c: int, f: int) -> None:
            l = leading()
            if l is None:
                return end("no longer leader")
            sim._log(f"scenario: leader {leader} reaches node {f} again")
            sim._mend({(leader, f)})
            acked(c, f)

        def acked(c: int, f: int) -> None:
            l = leading()
            if l is None:
                return end("no longer leader")
            # The held beats flow oldest first: wait for an ack that leaves
            # the lease some ticks to run.
            if l.role.lease_until < l.ticks + 4:
                return sim.world.later(0.0002, acked, c, f)
            node = sim.nodes[f]
            if node.process is not None:
                # Its ack is in: it goes down, and the leader's messages
                # are held again so that C's Prepare is the first it hears.
                sim.network.block(leader, f)
                sim._crash(node)
                sim.world.later(rng.uniform(0.001, 0.003), sim._restart, f)
            sim.world.later(0.2, end)

        sim.world.later(0.0005, candidate)
        return rng.uniform(0.8, 1.5)

    def _slow(self, sim, commits: list) -> Callable:
        rng = self.rng

        def latency() -> float:
            took = rng.uniform(0.04, 0.08)
            commits.append((sim.world.now, took))
            return took

        return latency


class SnapshotDuringGrowth(Scenario):
    """
    A snapshot is copied for a lagging follower while commits grow LMDB's
    map (issue 9, hole 7).  The map starts small; a client writes large
    values to many keys, so the state grows and the map fills again and
    again; a follower is killed now and then and restarted once the
    leader has compacted past it, so the leader copies its state (a long
    read, in steps, on its pool thread) while its writer thread grows the
    map.  Clients read at the leader all along (serializable ranges: its
    reactor thread reads the store for them at once).  (On the memory provider it is a plain stress of
    large values and snapshots.)
    """

    name = "snapshot-during-growth"
    holes = "7"

    def configure(self, sim) -> None:
        sim.lmdb_map_bytes = 128 << 10
        sim.disk_s = (0.0, 0.002)
        sim.slow_disk = 0.0
        sim.snapshot_step_bytes = 64 << 10
        if sim.threads is not None:
            # A few megabytes copied in steps of 64 KiB: some hundreds of
            # milliseconds for the whole, during which the map may grow.
            sim.threads.step_s = (0.002, 0.008)

    def start(self, sim) -> None:
        rng = self.rng
        first = rng.uniform(0.3, 0.6)

        def big(client):
            from kvpaxos.testing.sim import Pending

            key = b"big%d" % rng.randrange(256)
            value = rng.randbytes(rng.randint(1 << 10, 32 << 10))
            return Pending("put", Request(Op.PUT, key, value), key)

        def scan(client):
            from kvpaxos.kv.commands import Range
            from kvpaxos.testing.sim import Pending

            # Served from the store at once, on the reactor's thread.
            return Pending("range", consistency="serializable", query=Range(b"k", b"l"))

        for _ in range(4):
            add_client(sim, Script(sim, lambda: leader_id(sim), big, first, sim.fault_s))
        for _ in range(2):
            add_client(sim, Script(sim, lambda: leader_id(sim), scan, first, sim.fault_s))
        repeat(sim, rng, first + 0.1, lambda leader: self._lag(sim, leader))

    def _lag(self, sim, leader: int) -> Optional[float]:
        rng = self.rng
        followers = [n for n in voters(sim) if n != leader and sim.nodes[n].process is not None]
        if not followers:
            return 0.1
        node = sim.nodes[rng.choice(followers)]
        sim._crash(node)
        sim.world.later(rng.uniform(0.4, 1.0), sim._restart, node.id)
        return rng.uniform(1.0, 1.6)


SCENARIOS = {
    cls.name: cls
    for cls in (
        StalledFollower, TransferHeld, MisconfiguredTick, DriftAtTheLimit, ForgedPeer,
        EarlyAnswerCrash, DiskFailure, CalmFollowerWrites, RestartUnderLease,
        SnapshotDuringGrowth,
    )
}


def names() -> list[str]:
    return sorted(SCENARIOS)


def draw(sim, choice) -> Optional[Scenario]:
    """
    The scenario C{sim} runs: C{choice} by name, None for none, or
    L{DRAW}: with random faults, one in 1 / L{PROBABILITY} seeds, chosen
    by the seed.  Configured here (before the nodes boot).
    """
    rng = random.Random(sim.seed * 7_368_787 + 0x5CE)
    if choice == DRAW:
        if not sim.random_faults or rng.random() >= PROBABILITY:
            return None
        choice = rng.choice(names())
    if choice is None:
        return None
    try:
        cls = SCENARIOS[choice]
    except KeyError:
        raise ValueError(f"unknown scenario {choice!r}; choose from {', '.join(names())}") from None
    scenario = cls(random.Random(rng.getrandbits(64)))
    if scenario.quiet_share and rng.random() < scenario.quiet_share:
        sim.random_faults = False  # the scenario's faults only
    if scenario.lease_reads and not sim.lease_reads:
        sim.lease_reads = True
        sim.timing = dataclasses.replace(sim.timing, lease_reads=True)
    scenario.configure(sim)
    sim.result.faults[f"scenario {scenario.name}"] += 1
    return scenario
