"""
The core simulator's fault phase and heal (L{FaultsMixin}): partitions,
crashes and restarts, membership changes and leader transfers, then the
heal, liveness and convergence.  Part of
L{kvpaxos.testing.coresim.Simulation}: it reads and sets that class's
state.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.paxos import (
    ChangeKind,
    ConfigChange,
    ConfigError,
    NotLeader,
    ProposalRejected,
    Replica,
)
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.network import Faults
from kvpaxos.testing.corerecords import (
    LIVENESS_BOUND_MS,
    LIVENESS_COMMANDS,
    MAX_NODES,
    SimNode,
    Violation,
)


class FaultsMixin:
    """The faults, operator actions and heal of a L{kvpaxos.testing.coresim.Simulation}."""

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
            if self.remove_after_transfer is not None:
                # An operator removing the leader: the leader was asked to
                # hand over first (the core refuses a leader's own removal);
                # the new leader is asked to remove it (or, if the transfer
                # failed, the old one is asked again and refuses).
                node, self.remove_after_transfer = self.remove_after_transfer, None
                if node in config.voters and len(config.voters) > 3:
                    self._change(replica, ConfigChange(ChangeKind.REMOVE, node))
            elif choice < 0.25:
                target = rng.choice(sorted(config.voters))
                if target != leader.id:
                    replica.transfer_leadership(target)
                    self.result.transfers += 1
                    self._log(f"transfer {leader.id} -> {target}")
            elif choice < 0.45 and len(self.nodes) < MAX_NODES:
                node_id = self.next_id
                change = ConfigChange(rng.choice((ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER)), node_id)
                self._change(replica, change)
                if self.options.auto_promote and change.kind is ChangeKind.ADD_LEARNER:
                    # The leader of the day may promote it by itself.
                    self.proposed_changes.add(ConfigChange(ChangeKind.PROMOTE, node_id))
                self.next_id += 1
                self.nodes[node_id] = SimNode(node_id, MemoryStorage())
                self._start(node_id)
                if change.kind is ChangeKind.ADD_LEARNER:
                    # An eager operator: promoting soon after adding is
                    # refused while the learner still lags.
                    self._schedule(rng.randint(5, 300), "promote", node_id)
            elif choice < 0.6 and config.learners:
                # Refused (ProposalRejected) unless the learner is caught up.
                self._change(replica, ConfigChange(ChangeKind.PROMOTE, rng.choice(sorted(config.learners))))
            elif choice < 0.75 and len(config.voters) > 3:
                target = rng.choice(sorted(config.voters))
                if target == leader.id:
                    self._remove_leader(leader, config)
                else:
                    # Refused when the voters heard from lately, less the
                    # target, are no quorum of what is left; sometimes forced.
                    force = rng.random() < 0.2
                    self._change(replica, ConfigChange(ChangeKind.REMOVE, target), force)
                    if force:
                        self.result.forced_removes += 1
            elif choice < 0.8 and config.learners:
                self._change(replica, ConfigChange(ChangeKind.REMOVE, rng.choice(sorted(config.learners))))
        except (ProposalRejected, ConfigError, NotLeader) as error:
            self.result.refused_changes += 1
            self._log(f"refused: {error}")
        self._pump(leader)

    def _on_promote(self, node_id: int) -> None:
        leader = self._leader()
        if self.healed or leader is None:
            return
        try:
            self._change(leader.replica, ConfigChange(ChangeKind.PROMOTE, node_id))
        except (ProposalRejected, ConfigError) as error:
            self.result.refused_changes += 1
            self._log(f"refused: {error}")
        self._pump(leader)

    def _remove_leader(self, leader: SimNode, config) -> None:
        """Hand leadership to another voter; the next operator event removes the old leader."""
        replica = leader.replica
        refused = None
        try:
            replica.propose_config_change(ConfigChange(ChangeKind.REMOVE, leader.id))
        except ProposalRejected as error:
            refused = error
        if refused is None:
            raise Violation("membership", f"leader {leader.id} took its own removal")
        others = sorted(config.voters - {leader.id})
        target = max(others, key=lambda n: (replica.role.match.get(n, -1), -n))
        replica.transfer_leadership(target)
        self.result.transfers += 1
        self.remove_after_transfer = leader.id
        self._log(f"remove leader {leader.id}: transfer to {target} first")

    def _change(self, replica: Replica, change: ConfigChange, force: bool = False) -> None:
        replica.propose_config_change(change, force)
        self.proposed_changes.add(change)
        self.result.config_changes += 1
        self._log(f"propose {change}{' (forced)' if force else ''}")

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
