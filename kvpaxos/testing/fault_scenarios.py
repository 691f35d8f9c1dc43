"""
The targeted scenarios about peers and storage (L{kvpaxos.testing.scenarios}).

Forged peer messages (L{ForgedPeer}), a crash just after an early answer
(L{EarlyAnswerCrash}), a disk that fails a commit (L{DiskFailure}) and a
snapshot copied while LMDB's map grows (L{SnapshotDuringGrowth}).
"""

from __future__ import annotations

from typing import Optional

import random

from kvpaxos.kv.commands import Op, Request
from kvpaxos.encoding.commands import encode_request
from kvpaxos.encoding.state import encode_record_of, encode_snapshot
from kvpaxos.encoding.transfer import (
    TABLE_RECORDS,
    Digest,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
    encode_records,
)
from kvpaxos.paxos import Batch
from kvpaxos.paxos.messages import Catchup, InstallSnapshot, Snapshot
from kvpaxos.testing.scenario_kit import (
    KEY,
    Scenario,
    Script,
    add_client,
    cut_off,
    leader_id,
    put,
    repeat,
    voters,
)


class ForgedPeer(Scenario):
    """
    A hostile or misrouted neighbour (another cluster on a reused address,
    a stale process) sends well-formed peer messages under a member's id
    (issue 9, hole 9): unsolicited Catchups with a junk value for a
    follower's next slot, and InstallSnapshots of an empty state far
    ahead, from a member that is not the leader and was not asked; and
    InstallSnapshots whose state does not decode, from any member, the
    leader included; and, with those, snapshot transfers in chunks (issue
    11) whose one chunk holds a record that cannot be (a revision past the
    offered state's), in the leader's name.  A node must refuse them,
    never take or stop on them.
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
                data = encode_snapshot(index, 1, [], [], [])
            else:
                data = rng.getrandbits(8 * 24).to_bytes(24, "big")
            message = InstallSnapshot(src, victim, Snapshot(index, replica.config, data))
        process.io(0, self._deliver, sim, process, kind, message)
        if kind == "corrupt" and leader is not None:
            # Its own stream of numbers, so the forgeries above stay as they were.
            forger = random.Random(index * 7919 + victim)
            process.io(forger.uniform(0, 0.2), self._forge_transfer, sim, process, leader,
                       index, forger.getrandbits(32))

    def _forge_transfer(self, sim, process, src: int, index: int, transfer: int) -> None:
        service = process.service
        replica = service.replica
        dst = replica.id
        revision = 3
        records = encode_records(TABLE_RECORDS, [
            (KEY, encode_record_of(b"forged-transfer", 1, 1, revision + 6), False),
        ])
        digest = Digest()
        digest.add(records)
        sim.result.faults["forged transfer"] += 1
        sim._log(f"scenario: forged transfer from {src} to node {dst}")
        for message in (
            SnapshotOffer(src, dst, transfer, index, replica.config, revision, 2),
            SnapshotChunk(src, dst, transfer, 0, records),
            SnapshotDone(src, dst, transfer, 1, digest.digest()),
        ):
            service.snapshot_stream_received(message)

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
        from kvpaxos.testing.simrecords import Pending
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
        sim.transfer_chunk_bytes = 16 << 10
        if sim.threads is not None:
            # A few megabytes copied in steps of 64 KiB: some hundreds of
            # milliseconds for the whole, during which the map may grow.
            sim.threads.step_s = (0.002, 0.008)

    def start(self, sim) -> None:
        rng = self.rng
        first = rng.uniform(0.3, 0.6)

        def big(client):
            from kvpaxos.testing.simrecords import Pending

            key = b"big%d" % rng.randrange(256)
            value = rng.randbytes(rng.randint(1 << 10, 32 << 10))
            return Pending("put", Request(Op.PUT, key, value), key)

        def scan(client):
            from kvpaxos.kv.commands import Range
            from kvpaxos.testing.simrecords import Pending

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


class StalledInstall(Scenario):
    """
    A node's reactor stalls just as a snapshot transfer into it finishes
    (issue 11's review: a stepped install the core does not take).  Now
    and then a follower is killed and restarted once the leader has
    compacted past it, so the leader streams it the state; when the
    transfer's staging is being finished on the writer thread the node
    stalls for longer than a catch-up ask is
    remembered.  On resume the writer's answer runs before the missed
    ticks (a stall), so the node steps the install and only then counts
    the ticks: it has started an election and forgotten its ask, and the
    core does not take the install.  The node must drop it and catch up
    by another transfer.
    """

    name = "stalled-install"
    holes = "issue 11"
    quiet_share = 0.5

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        #: Once a stall has been aimed, nobody is killed any more (a
        #: restart would wipe whatever the stall left behind).
        self.stalled = False

    def start(self, sim) -> None:
        rng = self.rng
        first = rng.uniform(0.3, 0.6)
        for _ in range(2):
            add_client(sim, Script(sim, lambda: leader_id(sim), put(sim), first, sim.fault_s))
        repeat(sim, rng, first + 0.1, lambda leader: self._lag(sim, leader))

    def _lag(self, sim, leader: int) -> Optional[float]:
        rng = self.rng
        if self.stalled:
            return 10.0
        followers = [n for n in voters(sim) if n != leader and sim.nodes[n].process is not None]
        if not followers:
            return 0.1
        node = sim.nodes[rng.choice(followers)]
        sim._crash(node)
        back = rng.uniform(0.3, 0.6)
        sim.world.later(back, sim._restart, node.id)
        sim.world.later(back + 0.001, self._watch, sim, node.id, 2000)
        return back + rng.uniform(2.0, 2.5)

    def _watch(self, sim, node_id: int, left: int) -> None:
        """
        Every millisecond: once C{node_id}'s (simulated) writer thread has
        a transfer's staging to finish, stall it.
        """
        node = sim.nodes[node_id]
        if sim.healed or node.process is None or not left:
            return
        disk = getattr(node.process, "disk", None)
        writes = [] if disk is None else disk._writes
        finishing = any(getattr(call, "__name__", "") == "finish" for _, call, _ in writes)
        if finishing and not node.process.frozen:
            # Longer than a catch-up ask is remembered (ten election
            # timeouts of ticks, 1 s here), and deaf meanwhile: the first
            # thing it runs on resume is the writer's answer, not a
            # heartbeat that would tell it who leads.
            self.stalled = True
            stall = self.rng.uniform(1.1, 1.4)
            cut_off(sim, node_id, duration=stall + 0.01, ways="in")
            sim._freeze(node, "stall", stall)
            return
        sim.world.later(0.001, self._watch, sim, node_id, left - 1)
