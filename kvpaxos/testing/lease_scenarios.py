"""
The targeted scenarios about leases and timing (L{kvpaxos.testing.scenarios}).

A stalled follower waking to one heartbeat (L{StalledFollower}), a
straggling TimeoutNow (L{TransferHeld}), a member with another tick
(L{MisconfiguredTick}), clocks at the edge of the drift allowance
(L{DriftAtTheLimit}), calm follower writes that must be answered soon
(L{CalmFollowerWrites}) and a restart while a lease rests on the node
(L{RestartUnderLease}).
"""

from __future__ import annotations

from typing import Callable, Optional

from kvpaxos.paxos.messages import TimeoutNow
from kvpaxos.testing.simnet import BACKOFF_FIRST_S
from kvpaxos.testing.scenario_kit import (
    Scenario,
    Script,
    add_client,
    aim,
    cut_off,
    fast,
    leader_id,
    new_leader,
    put,
    repeat,
    replica_of,
    voters,
)


#: How soon after it is chosen a write taken by a follower must be answered
#: in calm conditions (issue 9, hole 11): the chosen index goes out as soon
#: as it advances, so about one message delay and one commit; a heartbeat
#: period (heartbeat_ticks = 2: 20 ms) is too late.
LEARN_BOUND_S = 0.012
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
        from kvpaxos.testing.simrecords import TICK_S

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
        from kvpaxos.testing.simrecords import TICK_S

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
        from kvpaxos.testing.simrecords import DRIFT_MAX

        node.machine.rate = 1.0 - DRIFT_MAX if node.id == self.slow else 1.0 + DRIFT_MAX

    def start(self, sim) -> None:
        MisconfiguredTick.start(self, sim)

    _attack = MisconfiguredTick._attack

    @property
    def odd(self):
        return self.slow


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
