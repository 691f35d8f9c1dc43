"""
The core simulator's nodes and their Ready performer (L{NodesMixin}).

Starting and crashing a replica over its storage, ticks, message
delivery and sending, and the performer that persists, sends and applies
what a L{kvpaxos.paxos.Ready} hands back (a crash loses what was not yet
persisted).  Part of L{kvpaxos.testing.coresim.Simulation}: it reads and
sets that class's state.
"""

from __future__ import annotations

import heapq
import random

from kvpaxos.paxos import InstallSnapshot, Replica
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.kvmachine import DigestKV
from kvpaxos.testing.corerecords import TICK_MS, SimNode, Violation, _Event
from kvpaxos.testing.coreplants import _PLANTED_REPLICAS


class NodesMixin:
    """Starting, crashing and driving the replicas of a L{kvpaxos.testing.coresim.Simulation}."""

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
            node_id, node.storage, rng, self.options, state_machine=node.machine,
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
        slow = 0
        if type(message) is InstallSnapshot and self.slow_snapshots:
            slow = self.rng_snapshots.randint(300, 1500)
        for at in self.network.arrivals(message.src, message.dst, self.now):
            at += slow
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
