"""
The checks the simulation runs as events happen (L{ChecksMixin}).

What the nodes commit (agreement, validity, the reference log and state
hashes), reads and results matched against the reference, one lease at
a time, and the per-event node checks (which also note when each
leadership began, for the KV lease checks of
L{kvpaxos.testing.simleasecheck}).  Part of
L{kvpaxos.testing.sim.Simulation}: it reads and sets that class's state.
"""

from __future__ import annotations

from kvpaxos.encoding.commands import decode_request
from kvpaxos.kv.commands import Op
from kvpaxos.paxos import Batch, ChangeKind, ConfigChange
from kvpaxos.testing import invariants
from kvpaxos.testing.reference import state_hash, tag_of
from kvpaxos.testing.simrecords import sim_addresses
from kvpaxos.testing.simworld import Process


class ChecksMixin:
    """The per-event checks of a L{kvpaxos.testing.sim.Simulation}."""

    def _commit_asked(self, process: Process, args) -> None:
        """A node commits these slots as chosen: agreement and validity."""
        committed = args[0].committed
        for slot, value in committed:
            held = self.chosen.get(slot)
            if held is None:
                self._choose(process.node_id, slot, value)
            elif held != value:
                self.fail(
                    "agreement",
                    f"slot {slot} chosen as {held!r} and as {value!r} (node {process.node_id})",
                )
                return
        self._feed_reference()

    def _choose(self, node_id: int, slot: int, value) -> None:
        self.chosen[slot] = value
        self.chosen_at[slot] = self.world.now
        if type(value) is Batch:
            seen = set()
            for data in value.commands:
                other = self.chosen_bytes.setdefault(data, slot)
                if other != slot or data in seen:
                    self.fail("validity", f"a command was chosen twice (slots {other} and {slot})")
                seen.add(data)
                try:
                    request = decode_request(data)
                except Exception as error:
                    self.fail("validity", f"slot {slot} holds a corrupt command: {error}")
                    continue
                if request.op is Op.COMPACT:
                    self._compaction_chosen(slot, request)  # kvpaxos.testing.simwatch
                    continue
                if request.op is Op.LEASE_EXPIRE:
                    continue  # the leader's: checked as it applies (kvpaxos.testing.simleasecheck)
                tag = tag_of(request)
                if tag != ("open",) and tag not in self.submitted and not self._lease_submitted(request):
                    self.fail("validity", f"slot {slot} holds unsubmitted {request!r}")
        elif type(value) is ConfigChange and value not in self.proposed_changes and not (
            # A leader publishes the addresses a member reported (UPDATE).
            value.kind is ChangeKind.UPDATE
            and {value.peer, value.client} - {""} <= set(sim_addresses(value.node))
        ):
            self.fail("validity", f"slot {slot} holds unproposed {value!r}")

    def _feed_reference(self) -> None:
        reference = self.reference
        advanced = False
        while reference.applied + 1 in self.chosen:
            slot = reference.applied + 1
            problem = reference.apply(slot, self.chosen[slot])
            advanced = True
            if problem:
                self.fail("session", problem)
            self._watch_reference_applied(slot)
            self._lease_reference_applied(slot)  # kvpaxos.testing.simleasecheck
        if advanced:
            self._recheck()

    def _commit_durable(self, process: Process, results) -> None:
        """A node's commit is durable: its store must equal the reference at its applied index."""
        node = self.nodes[process.node_id]
        if self.threads is not None:
            self.threads.checking += 1
        try:
            applied, data = node.store.snapshot_now()
        finally:
            if self.threads is not None:
                self.threads.checking -= 1
        self._match_hash(node.id, applied, state_hash(data))

    def _match_hash(self, node_id: int, applied: int, digest: bytes) -> bool:
        expected = self.reference.hashes.get(applied)
        if expected is None:
            self.unmatched_hashes.append((node_id, applied, digest))
            return False
        if expected != digest:
            self.fail(
                "state agreement",
                f"node {node_id}'s store differs from the chosen log's state at slot {applied}",
            )
        return True

    def _recheck(self) -> None:
        hashes, self.unmatched_hashes = self.unmatched_hashes, []
        for node_id, applied, digest in hashes:
            self._match_hash(node_id, applied, digest)
        reads, self.unmatched_reads = self.unmatched_reads, []
        for item in reads:
            self._match_read(*item)
        for tag in sorted(self._acked_waiting, key=repr):
            if tag in self.reference.results:
                self._acked_waiting.discard(tag)
                self._match_result(tag)
        self._watch_recheck()

    # --- per-event node checks -------------------------------------------------------

    def _check_leases(self) -> None:
        leaders = {}
        for node_id, process in self.processes.items():
            held = invariants.lease_holder(process.service)
            if held is not None:
                leaders[node_id] = held
        if not leaders:
            return
        promised = {}
        for node_id, node in self.nodes.items():
            process = self.processes.get(node_id)
            replica = getattr(process.service, "replica", None) if process is not None else None
            promised[node_id] = replica.promised if replica is not None else node.promised_down
        problem = invariants.lease_problem(leaders, promised)
        if problem:
            self.fail("lease overlap", problem)

    def _check_nodes(self) -> None:
        self._check_leases()
        if self.violation is not None:
            return
        for node_id in sorted(self.processes):
            process = self.processes[node_id]
            service = process.service
            replica = getattr(service, "replica", None)
            if replica is None:
                continue
            if not replica.is_leader and getattr(process, "lease_lead", None) is not None:
                process.lease_lead = None
            node = self.nodes[node_id]
            if replica.chosen_index < node.chosen_seen:
                self.fail(
                    "invariant",
                    f"node {node_id} chosen index went from {node.chosen_seen} down to"
                    f" {replica.chosen_index}",
                )
                return
            node.chosen_seen = replica.chosen_index
            if self.verbose:
                role = (replica.role.name, replica.role.ballot)
                if getattr(process, "seen_role", None) != role:
                    process.seen_role = role
                    self._log(
                        f"node {node_id} is {role[0]} {role[1] or ''} chosen"
                        f" {replica.chosen_index} applied {replica.applied} config"
                        f" {sorted(replica.config.voters)}+{sorted(replica.config.learners)}"
                    )
            if replica.is_leader:
                lead = getattr(process, "lease_lead", None)
                if lead is None or lead[0] != replica.leader_ballot:
                    self._lease_lead(process, replica)  # when this leadership began (simlease)
                role = replica.role
                stale = [s for s in getattr(role, "inflight", ()) if s <= replica.chosen_index]
                if stale:
                    self.fail("invariant", f"leader {node_id} keeps chosen slots {stale} in flight")

    def _match_read(self, node_id: int, revision: int, got: tuple, what: str) -> None:
        expected = self.reference.values_at(revision)
        if expected is None:
            self.unmatched_reads.append((node_id, revision, got, what))
        elif expected != got:
            self.fail(
                "read", f"{what} returned {got} at revision {revision}; the log has {expected}"
            )

    def _match_result(self, tag) -> None:
        value, client_id, node_id = self.acked[tag]
        slot, expected = self.reference.results[tag]
        if value != expected:
            self.fail(
                "result",
                f"node {node_id} answered client {client_id} {value!r} for {tag}; the chosen"
                f" log (slot {slot}) gives {expected!r}",
            )
