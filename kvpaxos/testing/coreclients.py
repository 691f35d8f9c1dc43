"""
The core simulator's clients (L{ClientsMixin}): writes proposed, read
indexes and lease reads asked for, and what they were told recorded for
the checker.  Part of L{kvpaxos.testing.coresim.Simulation}: it reads and
sets that class's state.
"""

from __future__ import annotations

from kvpaxos.paxos import Batch, NotLeader, ProposalRejected, ReadState
from kvpaxos.testing.kvmachine import encode_command
from kvpaxos.testing.corerecords import CLIENT_TIMEOUT_MS, LIVENESS_COMMANDS, Client, SimNode


class ClientsMixin:
    """The clients of a L{kvpaxos.testing.coresim.Simulation}."""

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
