"""
The fault phase and the heal (L{FaultsMixin}).

Random faults (crashes, pauses, stalls, partitions, resets, clock steps),
the operator's membership changes and leader transfers, then the heal:
faults stop, every node comes back, and the cluster must converge; the
final checks.  Part of L{kvpaxos.testing.sim.Simulation}: it reads and
sets that class's state.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.admin.commands import MemberAdd, MemberPromote, MemberRemove, TransferLeadership
from kvpaxos.paxos import ChangeKind, ConfigChange
from kvpaxos.testing.linearizability import check
from kvpaxos.testing.reference import state_hash
from kvpaxos.testing.simworld import Process
from kvpaxos.testing.simrecords import (
    HISTORY_CHECK_S,
    LIVENESS_BOUND_S,
    LIVENESS_COMMANDS,
    MAX_NODES,
    Client,
    Node,
    sim_addresses,
)

#: The admin errors that refuse a request (and change nothing, or may
#: still be carried out: UNAVAILABLE).
_REFUSALS = (b"REJECTED", b"UNAVAILABLE", b"NOT_LEADER")


class FaultsMixin:
    """The faults, operator actions and heal of a L{kvpaxos.testing.sim.Simulation}."""

    def _up(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes) if self.nodes[i].process is not None]

    def _leader(self) -> Optional[Node]:
        leaders = []
        for node in self._up():
            replica = getattr(node.process.service, "replica", None)
            if replica is not None and replica.is_leader and not node.process.frozen:
                leaders.append((replica.role.ballot, node.id))
        if not leaders:
            return None
        return self.nodes[max(leaders)[1]]

    def _fault(self) -> None:
        if self.healed:
            return
        rng = self.rng
        self.world.later(rng.uniform(0.05, 0.4), self._fault)
        up = self._up()
        choice = rng.random()
        faults = self.result.faults
        if choice < 0.2 and up:
            victim = self._victim(up)
            self._crash(victim)
            self.world.later(rng.uniform(0.03, 1.2), self._restart, victim.id)
        elif choice < 0.32:
            nodes = self._members()
            rng.shuffle(nodes)
            cut = rng.randint(1, len(nodes) - 1)
            leader = self._leader()
            if leader is not None and rng.random() < 0.4:
                # The leader alone on one side: what a lease must survive.
                nodes = [leader.id] + [n for n in self._members() if n != leader.id]
                cut = 1
                self._and_its_clock(leader)
            pairs = {(a, b) for a in nodes[:cut] for b in nodes[cut:]}
            pairs |= {(b, a) for a, b in pairs}
            for a, b in sorted(pairs):
                self.network.block(a, b)
            faults["partition"] += 1
            self._log(f"partition {sorted(nodes[:cut])} | {sorted(nodes[cut:])}")
            self.world.later(rng.uniform(0.1, 1.5), self._mend, pairs)
        elif choice < 0.42:
            a, b = rng.sample(self._members(), 2)
            leader = self._leader()
            if leader is not None and rng.random() < 0.4:
                # The leader hears nobody (or nobody hears it).
                a = rng.choice([n for n in self._members() if n != leader.id])
                a, b = (a, leader.id) if rng.random() < 0.5 else (leader.id, a)
                self._and_its_clock(leader)
            self.network.block(a, b)
            faults["one-way partition"] += 1
            self._log(f"block {a} -> {b}")
            self.world.later(rng.uniform(0.1, 1.5), self._mend, {(a, b)})
        elif choice < 0.5:
            a, b = rng.sample(self._members(), 2)
            self.network.drop_between(a, b, "reset")
            faults["connection reset"] += 1
        elif choice < 0.6 and up:
            self._freeze(self._victim(up), "pause", rng.uniform(0.05, 1.5))
        elif choice < 0.7 and up:
            self._freeze(self._victim(up), "stall", rng.uniform(0.05, 1.5))
        elif choice < 0.8 and up and self.wall_steps:
            self.step_wall_clock(self._victim(up).id, rng.choice((-1, 1)) * rng.uniform(0.05, 30.0))
        elif choice < 0.85 and up and self.wall_steps:
            # A forward step of a monotonic clock is a clock running fast:
            # harmless on a leader (its lease ends early), unsound beside a
            # lease on a follower (it stops deferring to the leader early),
            # so there only in seeds without lease reads.
            leader = self._leader()
            node = leader if self.lease_reads else rng.choice(up)
            if node is not None:
                step = rng.uniform(0.01, 0.5)
                node.process.mono.offset += step
                node.process.reactor.monotonic_stepped()
                faults["monotonic clock step"] += 1
                self._log(f"node {node.id} monotonic clock steps +{step:.3f} s")

    def step_wall_clock(self, node_id: int, step: float) -> None:
        """Step node C{node_id}'s wall clock (C{reactor.seconds()}) by C{step} seconds."""
        node = self.nodes[node_id]
        node.machine.wall_offset += step
        if node.process is not None:
            node.process.reactor.clock_stepped()
        self.result.faults["wall clock step"] += 1
        self._log(f"node {node_id} wall clock steps {step:+.3f} s")

    def _and_its_clock(self, leader: Node) -> None:
        """Now and then a leader being cut off also has its wall clock stepped back."""
        if self.wall_steps and self.rng.random() < 0.3:
            self.result.faults["leader cut off, its clock stepped back"] += 1
            self.step_wall_clock(leader.id, -self.rng.uniform(2.0, 30.0))

    def _victim(self, up: list) -> Node:
        """A node to hurt: the leader half the time (where a lease lives), else any."""
        leader = self._leader()
        if leader is not None and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(up)

    def _freeze(self, node: Node, mode: str, duration: float) -> None:
        process = node.process
        if process.frozen:
            return
        process.freeze(mode)
        self.result.faults[mode] += 1
        self._log(f"{mode} node {node.id} for {duration:.3f} s")
        self.world.later(duration, self._resume, process)

    def _resume(self, process: Process) -> None:
        if process.alive and process.frozen:
            self._log(f"resume node {process.node_id} ({process.frozen})")
            process.resume()

    def _mend(self, pairs) -> None:
        self.network.heal(pairs)

    def _restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.process is None and not node.exited:
            self.result.faults["restart"] += 1
            self._boot(node)

    def _operator(self) -> None:
        """
        The operator: membership changes and leader transfers through the
        admin port's own protocol (L{kvpaxos.admin.server.AdminProtocol}),
        sent to any live node (a follower carries them to the leader).
        """
        if self.healed:
            return
        rng = self.rng
        self.world.later(rng.uniform(0.2, 0.9), self._operator)
        leader = self._leader()
        up = [n for n in self._up() if not n.process.frozen]
        if leader is None or not up:
            return
        via = rng.choice(up)
        config = leader.process.service.replica.role.leader_config
        choice = rng.random()
        if choice < 0.3:
            target = rng.choice(sorted(config.voters))
            self._admin(via, TransferLeadership, None, target=target)
        elif choice < 0.45 and len(self.nodes) < MAX_NODES and (self.auth is None or self.auth.joiners):
            node_id = self.next_id
            self.next_id += 1
            peer, client = sim_addresses(node_id)
            change = ConfigChange(ChangeKind.ADD_LEARNER, node_id, peer, client)
            self._admin(via, MemberAdd, change, id=node_id, peer=peer, client=client,
                        then=lambda: self.world.later(rng.uniform(0.3, 1.5), self._promote, node_id))
            self._add_node(node_id, None)
        elif choice < 0.6 and config.learners:
            self._promote(rng.choice(sorted(config.learners)))
        elif choice < 0.8 and (len(config.voters) > 3 or config.learners):
            pool = sorted(config.voters) if len(config.voters) > 3 and rng.random() < 0.7 else sorted(config.learners)
            if pool:
                node_id = rng.choice(pool)
                force = rng.random() < 0.15
                self._admin(via, MemberRemove, ConfigChange(ChangeKind.REMOVE, node_id),
                            id=node_id, force=force)
        elif choice >= 0.9:
            self._backup(via)  # kvpaxos snapshot save (kvpaxos.testing.simbackup)

    def _promote(self, node_id: int) -> None:
        """Promote learner C{node_id} through a live node's admin port (refused while it lags)."""
        up = [n for n in self._up() if not n.process.frozen]
        if self.healed or not up:
            return
        self._admin(self.rng.choice(up), MemberPromote, ConfigChange(ChangeKind.PROMOTE, node_id),
                    id=node_id)

    def _admin(self, node: Node, command, change: Optional[ConfigChange], then=None,
               **arguments) -> None:
        """
        Send admin C{command} to C{node} as the CLI does: the arguments
        serialized into an AMP box and dispatched to the admin protocol's
        responder, the answer or error read back as the CLI reads it.  A
        refusal (REJECTED, UNAVAILABLE, NOT_LEADER) is counted; any other
        failure is a violation.
        """
        from twisted.protocols import amp

        from kvpaxos.admin.server import AdminProtocol

        if change is not None:
            self.proposed_changes.add(change)
        name = command.commandName.decode()
        self._log(f"admin {name} {arguments} via node {node.id}")
        protocol = AdminProtocol(node.process.service)
        box = command.makeArguments(arguments, protocol)
        responder = protocol.locateResponder(command.commandName)

        def done(_) -> None:
            self.result.faults[f"admin {name} done"] += 1
            if then is not None:
                then()

        def refused(failure) -> None:
            if failure.check(amp.RemoteAmpError) and failure.value.errorCode in _REFUSALS:
                self.result.faults["admin refused"] += 1
                self._log(f"admin {name} refused: {failure.value.description}")
                return
            self.fail("admin", f"{name} {arguments} via node {node.id}: {failure.getErrorMessage()}")

        def call() -> None:
            responder(box).addCallbacks(done, refused)

        self.result.faults["admin " + name] += 1
        self._run_in(node.process, call, ())

    # --- heal and liveness -----------------------------------------------------------

    def _heal(self) -> None:
        self.healed = True
        if self.quota_bytes:  # the operator lifts the quota (scenario space-quota)
            self.quota_bytes = 0
            for node in self.nodes.values():
                if node.process is not None:
                    node.process.service.quota_bytes = 0
                    node.process.service.space_alarm = False
        self.network.heal()
        self.network.faults = None
        self.network.reply_loss = 0.0
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.process is None and not node.exited:
                self._boot(node)
            elif node.process is not None and node.process.frozen:
                self._resume(node.process)
        self._log("heal")
        live = Client(100, liveness=True)
        self.clients[live.id] = live
        self.world.later(0.001, self._client_step, live)
        self.world.later(LIVENESS_BOUND_S, self._deadline)
        self.world.later(0.05, self._converged)

    def _deadline(self) -> None:
        running = self._removed_running()
        self.fail(
            "liveness",
            f"{self._liveness_acked} of {LIVENESS_COMMANDS} writes acknowledged and members not"
            f" converged {LIVENESS_BOUND_S} s after the heal"
            + (f"; removed nodes {running} still running" if running else ""),
        )

    def _removed_running(self) -> list[int]:
        """
        The nodes whose removal the leader's member set holds that still run
        with a member set of their own: each must learn it was removed and
        exit (a node that never had the state takes no notice, as a joiner).
        """
        leader = self._leader()
        if leader is None:
            return []
        running = []
        for node_id in sorted(leader.process.service.replica.config.removed):
            node = self.nodes.get(node_id)
            process = None if node is None else node.process
            replica = None if process is None else getattr(process.service, "replica", None)
            if replica is not None and replica.config.voters:
                running.append(node_id)
        return running

    def _converged(self) -> None:
        self.world.later(0.05, self._converged)
        if self._liveness_acked < LIVENESS_COMMANDS:
            return
        if any(client.busy for client in self.clients.values()):
            return
        leader = self._leader()
        if leader is None:
            return
        replica = leader.process.service.replica
        target = replica.chosen_index
        if target < max(self.chosen, default=0) or self.reference.applied < target:
            return
        for member in sorted(replica.config.members):
            node = self.nodes.get(member)
            if node is None or node.process is None:
                return
            if node.store.applied_index() != target:
                return
            service = node.process.service
            if service.replica.applied != target or service._busy is not None:
                return
        if self._removed_running():
            return
        self.done = True

    def _final_checks(self) -> None:
        self._recheck()
        self._check_backups()
        if self.violation is not None:
            return
        applied = sorted((tag for tag in self.space_refused if tag in self.reference.results), key=repr)
        if applied:
            self.fail("space", f"writes refused for space are in the chosen log: {applied[:3]}")
            return
        missing = sorted((tag for tag in self.acked if tag not in self.reference.results), key=repr)
        if missing:
            self.fail("durability", f"acknowledged writes not in the chosen log: {missing[:3]}")
            return
        if self.unmatched_reads:
            self.fail("read", f"reads at revisions the log never reached: {self.unmatched_reads[:2]}")
            return
        leader = self._leader()
        replica = leader.process.service.replica
        for member in sorted(replica.config.members):
            node = self.nodes[member]
            applied, data = node.store.snapshot_now()
            if state_hash(data) != self.reference.hashes.get(applied):
                self.fail("state agreement", f"node {member} differs from the log at {applied}")
                return
        if self.auth is not None:
            self.history.extend(self.auth.history())
            if self.violation is not None:
                return
        self.result.history_ops = len(self.history)
        verdict = check(self.history, time_limit_s=HISTORY_CHECK_S)
        if verdict.outcome == "illegal":
            self.fail("linearizability", verdict.explain())
        elif verdict.outcome == "unknown":
            self.result.unchecked_histories += 1
