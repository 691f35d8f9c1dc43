"""
The core simulator's checker (L{ChecksMixin}): agreement, validity,
state agreement, read safety and the linearizable history, checked as
slots are chosen and reads served.  Part of
L{kvpaxos.testing.coresim.Simulation}: it reads and sets that class's
state.
"""

from __future__ import annotations

from kvpaxos.paxos import Batch, ChangeKind, ConfigChange, ReadState
from kvpaxos.testing.linearizability import Operation, check
from kvpaxos.testing.corerecords import HISTORY_CHECK_S, SimNode, Violation


class ChecksMixin:
    """The checker of a L{kvpaxos.testing.coresim.Simulation}."""

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
            if type(value) is ConfigChange and value.kind is ChangeKind.PROMOTE:
                self.result.promotions += 1
                self._check_promoted(value.node, slot)
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

    def _check_promoted(self, member: int, slot: int) -> None:
        """
        A learner promoted in C{slot} had the state: a voter with no member
        set (a joiner whose snapshot has not arrived) would count toward
        quorums it cannot serve (issue 11's review).  Checked when the
        promotion is first chosen, on the learner's replica if it is up.
        """
        promoted = self.nodes.get(member)
        replica = None if promoted is None or not promoted.up else promoted.replica
        if replica is not None and not replica.config.voters:
            raise Violation(
                "promotion",
                f"learner {member} was promoted (slot {slot}) before it had the state",
            )

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
