"""
Leases in the node simulator (issue 14; L{LeaseMixin}, part of
L{kvpaxos.testing.sim.Simulation}).

A few lease clients (L{LeaseClient}, one to three a seed, drawing from a
stream of their own) grant leases with small TTLs (0 to 2 s asked: the
node raises what is under its minimum, 1.5 election timeouts, rounded up
to a whole second), through any node, with an id of their own or one the
node picks; they keep some alive through any node (a follower carries the
keep-alive to the leader) every third or quarter of the TTL, for a while
or until told the lease is gone, let the others lapse, revoke some, ask
some their time to live, and attach the simulated keys to them (a put
with a lease, or a transaction of two puts; not in seeds with the auth
workload, whose permissions the history's model follows).  They stop a
little before the heal (in most seeds revoking what they hold first, and
the operator, after the heal, every lease left), so every lease ends soon
after it.  What they do is L{kvpaxos.testing.simleaseclients}'.  In a
third of the seeds with random faults the leader also stalls once, just
as a keep-alive reaches it (L{LeaseMixin._lease_stall}): on resume it
takes the keep-alive before its ticks, while a successor may lead.

Each node's boot is watched where the product decides (L{_lease_started}):
the leader's C{LEASE_EXPIRE} submissions (who decided, under which
ballot, on which clock, and whether its core took it in that turn), the
keep-alives and time-to-lives a leader answers (from when it began to
confirm it leads), and the grants it applies while it leads.  The checks
are L{kvpaxos.testing.simleasecheck}'s.  Deletes of attached keys by a
revoke or an expiry go into the linearizable history, each from its first
call (or its leader's decision) to when it was chosen.

Nothing here reads the wall clock or iterates an unordered collection;
the draws come from the seed's own stream (L{LeaseMixin._lease_setup}),
so the other streams draw what they drew before.
"""

from __future__ import annotations

import random
from typing import Optional

from kvpaxos.kv.commands import Op, Request
from kvpaxos.kv.leases import LeaseGranted
from kvpaxos.testing.reference import tag_of
from kvpaxos.testing.simleasecheck import Decision, LeaseChecksMixin, LeaseModel, Refresh, election_timeout_s
from kvpaxos.testing.simleaseclients import HISTORY_CLIENT, LeaseClientsMixin
from kvpaxos.testing.simrecords import REQUEST_TIMEOUT_S, LeaseClient

#: How many lease clients a seed runs (a range, drawn per seed).
LEASE_CLIENTS = (1, 3)


def _keeps_leases(provider: str) -> bool:
    if provider == "lmdb":
        from kvpaxos.storage.lmdb import LMDBStore as store_class
    else:
        from kvpaxos.storage.memory import MemoryStore as store_class
    return hasattr(store_class, "lease_items")


class LeaseMixin(LeaseClientsMixin, LeaseChecksMixin):
    """The lease clients and the nodes' lease decisions of a L{kvpaxos.testing.sim.Simulation}."""

    # --- setup -----------------------------------------------------------------

    def _lease_setup(self) -> None:
        """Draw this seed's lease clients (before the nodes boot), from a stream of their own."""
        rng = random.Random(self.seed * 1_000_037 + 0x1EA5E)
        self.lease_rng = random.Random(rng.getrandbits(64))
        #: When the lease clients stop granting and keeping alive: a little
        #: before the heal, so that every lease runs out soon after it.
        self.lease_wind_down = self.fault_s - rng.uniform(0.5, 1.5)
        #: Whether the clients then revoke what they hold, and after the heal
        #: the operator every lease left (else every lease lapses, and must
        #: expire after the heal).
        self.lease_close = rng.random() < 0.6
        self.lease_model = LeaseModel()
        #: lease -> when each keep-alive (or its grant) acknowledged to a client was sent.
        self.lease_acks: dict[int, list] = {}
        #: lease -> every L{Refresh} a leader made.
        self.lease_refreshes: dict[int, list] = {}
        #: (origin, boot, lease) -> the L{Decision}s of its LEASE_EXPIREs.
        self.lease_decisions: dict[tuple, list] = {}
        #: lease -> the decision of the expiry that ended it.
        self.lease_ending: dict[int, Decision] = {}
        #: (virtual time, ballot) of each leadership, as it began.
        self.lease_leaderships: list[tuple] = []
        #: lease -> when a client first asked to revoke it.
        self.lease_calls: dict[int, float] = {}
        self._lease_deciding: Optional[Decision] = None
        self._lease_asks = 0
        self.healed_at = 0.0
        self.lease_clients: dict[int, LeaseClient] = {}
        if _keeps_leases(self.provider):
            for i in range(1, rng.randint(*LEASE_CLIENTS) + 1):
                self.lease_clients[i] = LeaseClient(i)

    def _lease_start(self) -> None:
        """Start the lease clients (after the nodes booted), and plan this seed's stalled leaders."""
        rng = self.lease_rng
        for client in self.lease_clients.values():
            self.world.later(rng.uniform(0.2, 0.6), self._lease_step, client)
        if self.lease_clients and self.random_faults and rng.random() < 0.35:
            self.world.later(rng.uniform(0.8, max(0.9, self.lease_wind_down)), self._lease_stall)

    def _lease_stall(self, tries: int = 40) -> None:
        """
        The leader stalls (a long GC) just as a keep-alive reaches it: on
        resume the keep-alive comes before its ticks, while its successor
        may lead already (what a keep-alive must be confirmed against).
        Tried again a little later, C{tries} times, while there is no
        leader or no lease kept alive.
        """
        if self.healed or self.world.now >= self.lease_wind_down:
            return
        leader = self._leader()
        held = [(c, h) for c in self.lease_clients.values() for h in c.held.values()
                if h.keep_until and not h.dropped and not h.asking]
        if leader is None or not held:
            if tries:
                self.world.later(0.05, self._lease_stall, tries - 1)
            return
        # Long enough for the others to elect (it can take a second in
        # three), short enough for the lease to outlive it at the leader:
        # the one with the most time left there.
        service = leader.process.service
        now = service.clock.seconds()
        left, client, lease = max(((service.lessor.deadline(h.id) or now) - now, c.id, h.id) for c, h in held)
        left /= leader.machine.rate
        if left < 0.6:
            if tries:
                self.world.later(0.05, self._lease_stall, tries - 1)
            return
        client = self.lease_clients[client]
        lease = client.held[lease]
        self._freeze(leader, "stall", self.lease_rng.uniform(0.5, min(1.2, left - 0.05)))
        self.result.faults["lease: the leader stalls with a keep-alive"] += 1
        lease.guess = leader.id
        self._lease_ask(client, lease, "keep-alive", leader.id)

    def _heal(self) -> None:
        self.healed_at = self.world.now
        super()._heal()
        if self.lease_close and self.lease_clients:
            self.world.later(0.1, self._lease_sweep)

    def _lease_sweep(self) -> None:
        """
        After the heal, now and then until none is left: the operator lists
        the leases at a member and revokes each one nobody asked to revoke
        yet (C{etcdctl lease list}, C{lease revoke}).
        """
        if self.done or self.violation is not None or not self.lease_model.table:
            return
        self.world.later(0.3, self._lease_sweep)
        up = [n for n in self._up() if not n.process.frozen]
        if up:
            process = self.lease_rng.choice(up).process
            process.io(0.0005, self._lease_swept, process)

    def _lease_swept(self, process) -> None:
        service, who = process.service, self._lease_credential()

        def listed(leases) -> None:
            for lease in leases:
                if lease in self.lease_calls:
                    continue  # a second revoke would be a second command of the same name
                request = Request(Op.LEASE_REVOKE, lease=lease)
                tag = tag_of(request)
                self.submitted.add(tag)
                self.lease_calls[lease] = self.world.now
                service.lease_revoke(lease, REQUEST_TIMEOUT_S, **who).addCallbacks(
                    lambda value, tag=tag: self._lease_sweep_answered(tag, value, process.node_id),
                    lambda failure: None)  # outcome unknown: it expires

        service.lease_list().addCallbacks(listed, lambda failure: None)

    def _lease_sweep_answered(self, tag: tuple, value, node_id: int) -> None:
        self.result.ops["lease revoked after the heal"] += 1
        self.acked[tag] = (value, HISTORY_CLIENT, node_id)
        self._acked_waiting.add(tag)
        self._recheck()

    # --- the nodes ------------------------------------------------------------

    def _boot(self, node) -> None:
        super()._boot(node)
        process = node.process
        if process is not None:
            process.lease_lead = None
            self._lease_started(node, process, process.service)

    def _lease_lead(self, process, replica) -> Optional[tuple]:
        """
        C{(ballot, virtual time, monotonic time)} of the leadership
        C{replica} holds (noted when first seen), or None.
        """
        if not replica.is_leader:
            process.lease_lead = None
            return None
        lead = getattr(process, "lease_lead", None)
        ballot = replica.leader_ballot
        if lead is None or lead[0] != ballot:
            lead = process.lease_lead = (ballot, self.world.now, process.mono.seconds())
            self.lease_leaderships.append((self.world.now, ballot))
        return lead

    def _lease_started(self, node, process, service) -> None:
        """
        A node started: note each LEASE_EXPIRE it submits (and whether its
        core takes it in that call), each keep-alive and time-to-live it
        answers as leader, and each grant it applies while it leads.
        """
        writes, replica = getattr(service, "writes", None), getattr(service, "replica", None)
        if writes is None or replica is None or not hasattr(node.store, "lease_items"):
            return
        base, boot = process.mono.offset, service._boot
        extend_s = election_timeout_s(node.tick_s)
        submit, propose = writes.submit, replica.propose

        def decided(request, timeout_s, *args, **kwargs):
            if request.op is not Op.LEASE_EXPIRE:
                return submit(request, timeout_s, *args, **kwargs)
            now, mono = self.world.now, process.mono.seconds()
            lead = self._lease_lead(process, replica) or (None, now, mono)
            decision = Decision(node.id, process.epoch, now, mono, lead[0], lead[1], lead[2],
                                node.machine.rate, process.mono.offset - base, extend_s)
            self.lease_decisions.setdefault((node.id, boot, request.lease), []).append(decision)
            self._lease_deciding = decision
            try:
                return submit(request, timeout_s, *args, **kwargs)
            finally:
                self._lease_deciding = None

        def proposed(data):
            taken = propose(data)
            deciding = self._lease_deciding
            if deciding is not None and deciding.node == node.id:
                deciding.proposed = True
            return taken

        writes.submit, replica.propose = decided, proposed
        keep_alive, time_to_live = service.lease_keep_alive_requested, service.lease_time_to_live_requested
        batch_applied = service._batch_applied

        def confirming() -> tuple:
            lead = self._lease_lead(process, replica)
            return (lead[0] if lead else None, self.world.now, process.mono.seconds())

        def keep_alive_requested(lease):
            at = confirming()
            return keep_alive(lease).addCallback(self._lease_refreshed, node.id, process, lease, at)

        def time_to_live_requested(lease):
            at = confirming()
            return time_to_live(lease).addCallback(self._lease_time_told, node.id, lease, at)

        def applied(results, rd) -> None:
            batch_applied(results, rd)
            if replica.is_leader:
                lead = self._lease_lead(process, replica)
                for _, result in results:
                    if type(result) is LeaseGranted:
                        self.lease_refreshes.setdefault(result.id, []).append(Refresh(
                            node.id, process.epoch, lead[0], self.world.now, process.mono.seconds(), "grant"))

        service.lease_keep_alive_requested = keep_alive_requested
        service.lease_time_to_live_requested = time_to_live_requested
        service._batch_applied = applied
