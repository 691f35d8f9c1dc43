"""
The lease checks of the node simulator (issue 14; L{LeaseChecksMixin},
part of L{kvpaxos.testing.sim.Simulation} through
L{kvpaxos.testing.simlease.LeaseMixin}, which runs the lease workload and
feeds these checks what the nodes do).

What is checked (violation C{lease}; an expiry the log never gets is
C{liveness}):

  - L{LeaseModel}: the leases the chosen log gives, followed command by
    command apart from the state machine's own tables (grants make a
    lease, revokes and expiries end it and delete every key attached to
    it, all in one revision, one delete event each in key order; a put
    with a lease attaches its key, one without, or a delete, detaches it).
    After every slot it must equal the reference's lease table and
    attachments (the chosen log replayed through the real state machine),
    and at the end every member's store; a state machine that let a key
    outlive its lease is caught here, not by the state hashes (the
    reference replays the same code);
  - every chosen LEASE_EXPIRE was decided by a node that was the leader,
    and proposed by it in the same turn, under the ballot it decided
    under (never queued for a later leadership nor forwarded);
  - an expiry that ended a lease came only after its TTL had passed, on
    the deciding leader's monotonic clock (its rate and its forward steps
    allowed for), since every keep-alive or grant acknowledged to a
    client (from when the client sent it) and since every refresh a
    leader made; and, if the last refresh was made under another
    leadership, no sooner than TTL + the election timeout after this
    leadership began;
  - a keep-alive a leader answered with a TTL is honest: the TTL granted,
    by a leader no higher ballot had deposed before it began to confirm
    it leads, never for a lease whose end was chosen before that, nor
    after an expiry of it was decided; a time-to-live likewise (and "no
    such lease" only if there is none);
  - after the heal, every lease ends within its TTL (and the election
    timeout, and L{EXPIRY_SLACK_S}) of its last refresh, the heal, or
    the start of the leadership, whichever is last; and before the
    liveness deadline.

Nothing here reads a clock or iterates an unordered collection.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Optional

from kvpaxos.kv.commands import TO_THE_END, DeleteRange, Op, Put, TxnResult
from kvpaxos.kv.history import EventKind
from kvpaxos.kv.leases import LeaseError, LeaseGranted, LeaseRefused, LeaseRevoked
from kvpaxos.testing.linearizability import Operation
from kvpaxos.testing.simrecords import DRIFT_MAX, LIVENESS_BOUND_S, SIM_OPTIONS

#: How much later than TTL + election timeout after its last refresh (or
#: the heal, or the start of the leadership) a lease nobody keeps alive
#: may end, once healed: the expiry's round through a slow disk.
EXPIRY_SLACK_S = 2.5
#: Rounding between a node's clock readings and ours.
EPS = 1e-9


@dataclass
class Decision:
    """A leader's decision that a lease ran out: its C{LEASE_EXPIRE} submitted at node C{node}."""

    node: int
    epoch: int
    #: Virtual time, and the node's monotonic clock then.
    at: float
    mono: float
    #: The ballot it led under (None: it did not lead), and when (virtual,
    #: monotonic) that leadership began, as the simulator saw it.
    ballot: object
    lead_at: float
    lead_mono: float
    #: Its clock's rate, its forward steps in this boot, its election timeout.
    rate: float
    steps: float
    extend_s: float
    #: The core took it in the same call (the leader's own turn).
    proposed: bool = False


@dataclass(frozen=True)
class Refresh:
    """A leader ran a lease out at now + TTL: a keep-alive it answered, or a grant it applied."""

    node: int
    epoch: int
    ballot: object
    at: float
    mono: float
    kind: str


def election_timeout_s(tick_s: float) -> float:
    return SIM_OPTIONS.election_ticks * tick_s


def min_ttl(tick_s: float) -> int:
    """The shortest TTL a node of tick C{tick_s} grants: 1.5 election timeouts, rounded up, at least 1 s."""
    return max(1, math.ceil(1.5 * election_timeout_s(tick_s) - EPS))


def _in_range(key: bytes, start: bytes, end) -> bool:
    if end is None:
        return key == start
    if end == TO_THE_END:
        return key >= start
    return start <= key < end


class LeaseModel:
    """The leases and attachments the chosen log gives, followed command by command."""

    def __init__(self) -> None:
        #: lease -> TTL, those the log has now; key -> lease of each attached key.
        self.table: dict[int, int] = {}
        self.attached: dict[bytes, int] = {}
        #: lease -> TTL, of every lease ever granted; lease -> the virtual
        #: time its grant, and its end (revoke or expiry), were first chosen.
        self.ttl_of: dict[int, int] = {}
        self.granted_at: dict[int, float] = {}
        self.ended_at: dict[int, float] = {}

    def keys_of(self, lease: int) -> list[bytes]:
        return sorted(key for key, held in self.attached.items() if held == lease)

    def _attach(self, key: bytes, lease: int) -> Optional[str]:
        if not lease:
            self.attached.pop(key, None)
            return None
        if lease not in self.table:
            return f"a put attached {key!r} to lease {lease}, which the log does not have"
        self.attached[key] = lease
        return None

    def applied(self, request, result, before: int, after: int, at: float, events_at):
        """
        Follow one command as the reference applied it: C{result}, the
        revision C{before} and C{after}, first chosen at virtual time
        C{at}; C{events_at(r)} gives the reference's events at revision
        C{r}.  Return C{(problem or None, keys a revoke deleted)}.
        """
        op, kind = request.op, type(result)
        applied = after != before
        if op is Op.LEASE_GRANT:
            lease = request.lease
            if kind is LeaseGranted:
                if lease in self.table:
                    return f"lease {lease} granted again while the log has it", ()
                if result.ttl != request.ttl or result.id != lease:
                    return f"the grant of lease {lease} for {request.ttl} s answered {result!r}", ()
                self.table[lease] = self.ttl_of[lease] = request.ttl
                self.granted_at[lease] = at
            elif not (kind is LeaseRefused and result.error is LeaseError.EXISTS and lease in self.table):
                return f"the grant of lease {lease} applied as {result!r}; the log has {self.table.get(lease)}", ()
            return None, ()
        if op is Op.LEASE_REVOKE or op is Op.LEASE_EXPIRE:
            return self._revoked(request, result, before, after, at, events_at)
        if kind is LeaseRefused:
            if applied:
                return f"{request!r} was refused ({result!r}) but changed the store", ()
            leases = (request.lease,) if op is Op.PUT else tuple(
                o.lease for o in request.txn.success + request.txn.failure if type(o) is Put and o.lease)
            if all(lease in self.table for lease in leases):
                return f"{request!r} refused as {result!r}, though the log has every lease it names", ()
            return None, ()
        if not applied:
            return None, ()  # a session's retry, a refusal, a read
        if op is Op.PUT:
            return self._attach(request.key, request.lease), ()
        if op is Op.DELETE:
            self.attached.pop(request.key, None)
        elif op is Op.TXN and kind is TxnResult:
            for o in (request.txn.success if result.succeeded else request.txn.failure):
                if type(o) is Put:
                    problem = self._attach(o.key, o.lease)
                    if problem:
                        return problem, ()
                elif type(o) is DeleteRange:
                    for key in [k for k in sorted(self.attached) if _in_range(k, o.key, o.end)]:
                        del self.attached[key]
        return None, ()

    def _revoked(self, request, result, before: int, after: int, at: float, events_at):
        lease, what = request.lease, request.op.name
        if type(result) is LeaseRefused:
            if result.error is not LeaseError.NOT_FOUND or lease in self.table or after != before:
                return f"{what} of lease {lease} applied as {result!r}; the log has {self.table.get(lease)}", ()
            return None, ()
        if type(result) is not LeaseRevoked or lease not in self.table:
            return f"{what} of lease {lease} applied as {result!r}; the log has {self.table.get(lease)}", ()
        keys = self.keys_of(lease)
        if result.deleted != len(keys):
            return (f"{what} of lease {lease} deleted {result.deleted} keys; {len(keys)} were attached"
                    f" ({[k.decode() for k in keys]})", ())
        if keys:
            if after != before + 1 or result.revision != after:
                return f"{what} of lease {lease} deleted its keys over revisions {before}..{after}", ()
            got = [(e.kind, e.kv.key) for e in events_at(after)]
            if got != [(EventKind.DELETE, key) for key in keys]:
                return (f"{what} of lease {lease} at revision {after} wrote {got}; its keys"
                        f" {[k.decode() for k in keys]} were to be deleted, in order", ())
        elif after != before:
            return f"{what} of lease {lease}, with no keys, changed the revision", ()
        for key in keys:
            del self.attached[key]
        del self.table[lease]
        self.ended_at[lease] = at
        return None, keys

    def differs(self, leases: dict, attached: dict) -> Optional[str]:
        """What is wrong with a state whose lease table is C{leases} and attachments C{attached}, or None."""
        if leases != self.table:
            extra = sorted(set(leases.items()) - set(self.table.items()))[:3]
            missing = sorted(set(self.table.items()) - set(leases.items()))[:3]
            return f"its leases differ from the log's: has {extra}, lacks {missing}"
        if attached != self.attached:
            extra = sorted(set(attached.items()) - set(self.attached.items()))[:3]
            missing = sorted(set(self.attached.items()) - set(attached.items()))[:3]
            return f"its attached keys differ from the log's: has {extra}, lacks {missing}"
        return None


class LeaseChecksMixin:
    """The lease checks of a L{kvpaxos.testing.sim.Simulation} (state set up by L{kvpaxos.testing.simlease})."""

    # --- the chosen log -------------------------------------------------------------

    def _lease_submitted(self, request) -> bool:
        """Whether a client asked for the lease command C{request} (a grant of id 0: any id)."""
        if request.op is Op.LEASE_GRANT:
            return ("lease", int(Op.LEASE_GRANT), 0, request.ttl) in self.submitted
        return False

    def _lease_reference_applied(self, slot: int) -> None:
        """The reference applied C{slot}: follow its commands in the model; check expiries."""
        reference, model = self.reference, self.lease_model
        if not reference.slot_results:
            return
        at = self.chosen_at.get(slot, self.world.now)
        events_at = self._lease_events_at
        for request, result, before, after in reference.slot_results:
            problem, deleted = model.applied(request, result, before, after, at, events_at)
            if problem:
                self.fail("lease", f"slot {slot}: {problem}")
                return
            if request.op is Op.LEASE_EXPIRE:
                self._lease_expiry_applied(slot, request, result)
                if self.violation is not None:
                    return
            if type(result) is LeaseRevoked:
                self._log(f"slot {slot}: lease {request.lease} {request.op.name} (node {request.origin}),"
                          f" deleting {[k.decode() for k in deleted]}")
                self.result.ops["lease expired" if request.op is Op.LEASE_EXPIRE else "lease revoked"] += 1
                if deleted:
                    self.result.ops["lease keys deleted"] += len(deleted)
                self._lease_deletes(request, deleted, at)
        state = reference.state
        problem = model.differs(state.leases, state.key_leases)
        if problem:
            self.fail("lease", f"the state machine after slot {slot}: {problem}")

    def _lease_events_at(self, revision: int) -> list:
        history = self.reference_history
        lo, hi = bisect_left(history.revisions, revision), bisect_right(history.revisions, revision)
        return history.events[lo:hi]

    def _lease_deletes(self, request, keys, at: float) -> None:
        """A revoke or expiry deleted C{keys}: deletes in the history, from its first call to its choice."""
        if not keys:
            return
        if request.op is Op.LEASE_REVOKE:
            call = self.lease_calls.get(request.lease, 0.0)
        else:
            decisions = self.lease_decisions.get((request.origin, request.request_id >> 32, request.lease), ())
            call = min([d.at for d in decisions] or [0.0])
        for key in keys:
            self.history.append(Operation(0, "delete", key, call=min(call, at), ret=at))

    def _lease_expiry_applied(self, slot: int, request, result) -> None:
        """A chosen LEASE_EXPIRE: its leader decided and proposed it; if it ended the lease, not too soon."""
        lease = request.lease
        decisions = self.lease_decisions.get((request.origin, request.request_id >> 32, lease))
        if not decisions:
            self.fail("validity", f"slot {slot} holds an expiry of lease {lease} no node decided: {request!r}")
            return
        good = [d for d in decisions if d.ballot is not None and d.proposed]
        if not good:
            d = decisions[-1]
            self.fail("lease", f"slot {slot} holds node {d.node}'s expiry of lease {lease}, decided at"
                      f" {d.at:.3f} s {'while it was not the leader' if d.ballot is None else 'as leader'}"
                      f" and not proposed in that turn (queued for later, or forwarded)")
            return
        if type(result) is LeaseRevoked:
            decision = self.lease_ending[lease] = max(good, key=lambda d: d.at)
            self._lease_expired_in_time(slot, lease, decision)

    def _lease_expired_in_time(self, slot: int, lease: int, d: Decision) -> None:
        ttl = self.lease_model.ttl_of[lease]
        where = (f"slot {slot}: node {d.node} (leading under {d.ballot} since {d.lead_at:.3f} s) decided at"
                 f" {d.at:.3f} s that lease {lease} (TTL {ttl} s) ran out")
        for sent in self.lease_acks.get(lease, ()):
            problem = self._lease_too_soon(d, sent, ttl, "a keep-alive or grant acknowledged to a client, sent")
            if problem:
                self.fail("lease", f"{where}: {problem}")
                return
        refreshes = self.lease_refreshes.get(lease, ())
        for r in refreshes:
            if (r.node, r.epoch, r.ballot) == (d.node, d.epoch, d.ballot):
                if d.mono - r.mono <= ttl - EPS:
                    self.fail("lease", f"{where}, {d.mono - r.mono:.3f} s on its clock after its own {r.kind}")
                    return
            elif r.at >= d.lead_at:
                problem = self._lease_too_soon(d, r.at, ttl, f"node {r.node}'s {r.kind} under {r.ballot} at")
                if problem:
                    self.fail("lease", f"{where}: {problem}")
                    return
        last = max((r for r in refreshes if r.at <= d.at + EPS), key=lambda r: r.at, default=None)
        if last is None or (last.node, last.epoch, last.ballot) != (d.node, d.epoch, d.ballot):
            if d.mono - d.lead_mono <= ttl + d.extend_s - EPS:
                self.fail("lease", f"{where}, {d.mono - d.lead_mono:.3f} s on its clock after its leadership"
                          f" began; the last refresh was {last}: TTL + election timeout ({d.extend_s:.3f} s)"
                          f" is the least after a change of leader")

    @staticmethod
    def _lease_too_soon(d: Decision, since: float, ttl: int, what: str) -> Optional[str]:
        """
        What is wrong if C{d} came within C{ttl} of virtual time C{since}
        on the decider's clock (lenient: every forward step it took in its
        boot counts), or None.
        """
        elapsed = (d.at - since) * d.rate + d.steps
        if elapsed <= ttl - EPS:
            return f"{what} at {since:.3f} s, {elapsed:.3f} s before on its clock"
        return None

    # --- what the leaders and the clients were told -------------------------------------

    def _lease_client_acked(self, lease: int, sent: float, ttl: int) -> None:
        """A client was told lease C{lease} lives C{ttl} s (a keep-alive it sent at C{sent}, or its grant)."""
        expected = self.lease_model.ttl_of.get(lease)
        if expected is not None and ttl != expected:
            self.fail("lease", f"lease {lease} granted for {expected} s was kept alive for {ttl} s")
            return
        self.lease_acks.setdefault(lease, []).append(sent)
        ended = self.lease_model.ended_at.get(lease)
        for d in self._lease_ending_decisions(lease):
            problem = self._lease_too_soon(d, sent, ttl, "a keep-alive acknowledged to a client, sent")
            if problem:
                self.fail("lease", f"lease {lease} (TTL {ttl} s, ended at {ended:.3f} s): node {d.node}"
                          f" decided its expiry at {d.at:.3f} s: {problem}")
                return

    def _lease_ending_decisions(self, lease: int) -> list:
        """The decision of the expiry that ended C{lease}, in a list (empty: it lives, or a client revoked it)."""
        ending = self.lease_ending.get(lease)
        return [ending] if ending is not None else []

    def _lease_refreshed(self, ttl, node_id: int, process, lease: int, at: tuple):
        """Leader C{node_id} answered a keep-alive of C{lease} it began to confirm at C{at}: check and note it."""
        if type(ttl) is int and ttl > 0 and self.violation is None:
            ballot, when, mono = at
            self._lease_leader_told(node_id, ballot, lease, when, f"kept lease {lease} alive for {ttl} s")
            expected = self.lease_model.ttl_of.get(lease)
            if expected != ttl:
                self.fail("lease", f"node {node_id} kept lease {lease} alive for {ttl} s; the log granted"
                          f" it {expected}")
            self.lease_refreshes.setdefault(lease, []).append(
                Refresh(node_id, process.epoch, ballot, when, mono, "keep-alive"))
            self.result.ops["lease refreshed"] += 1
        return ttl

    def _lease_leader_told(self, node_id: int, ballot, lease: int, when: float, what: str) -> None:
        """
        A leader (under C{ballot}) that began to confirm it leads at
        C{when} says C{lease} lives: not if another leadership under a
        higher ballot had begun before (a quorum had promised it, so this
        one could not have confirmed), nor if the lease's end was chosen,
        or its expiry decided, before.
        """
        later = [(at, b) for at, b in self.lease_leaderships
                 if at < when - EPS and ballot is not None and b > ballot]
        if ballot is None or later:
            self.fail("lease", f"node {node_id} {what} under {ballot}, confirming from {when:.3f} s, though"
                      f" {later[0][1] if later else 'no leadership'} had begun"
                      f"{f' at {later[0][0]:.3f} s' if later else ''}")
            return
        ended = self.lease_model.ended_at.get(lease)
        if ended is not None and ended < when:
            self.fail("lease", f"node {node_id} {what}, confirming from {when:.3f} s; its end was chosen at"
                      f" {ended:.3f} s")
            return
        for d in self._lease_ending_decisions(lease):
            if d.at < when:
                self.fail("lease", f"node {node_id} {what}, confirming from {when:.3f} s; node {d.node}"
                          f" decided at {d.at:.3f} s that it ran out (chosen since)")
                return

    def _lease_time_told(self, answer, node_id: int, lease: int, at: tuple):
        """Leader C{node_id} answered a time-to-live of C{lease} it began to confirm at C{at}."""
        if self.violation is not None:
            return answer
        ballot, when, _ = at
        model = self.lease_model
        if answer is None:
            granted = model.granted_at.get(lease)
            ended = model.ended_at.get(lease)
            if granted is not None and granted < when and ended is None:
                self.fail("lease", f"node {node_id} said there is no lease {lease} (confirming from"
                          f" {when:.3f} s); the log granted it at {granted:.3f} s and never ended it")
            return answer
        self.result.ops["lease time-to-live"] += 1
        ttl = model.ttl_of.get(lease)
        extend = election_timeout_s(self.nodes[node_id].tick_s)
        if answer.granted_ttl != ttl or not 0 <= answer.remaining_s <= math.ceil(ttl + extend):
            self.fail("lease", f"node {node_id} said lease {lease} of {ttl} s has {answer}")
        elif answer.remaining_s:
            self._lease_leader_told(node_id, ballot, lease, when,
                                    f"said lease {lease} has {answer.remaining_s} s left")
        return answer

    # --- after the heal ---------------------------------------------------------------

    def _lease_overdue(self) -> list:
        """
        The leases past their bound after the heal, C{(lease, seconds
        past)}: a leader that has led since the heal, the lease's grant and
        its last refresh expires it within its TTL, the election timeout
        and L{EXPIRY_SLACK_S} (each new leader gives every lease its TTL
        and the election timeout again: the deadline of the liveness
        check bounds how often that may happen).
        """
        leader = self._leader() if self.healed else None
        lead = None if leader is None else getattr(leader.process, "lease_lead", None)
        if lead is None:
            return []
        model, now, late = self.lease_model, self.world.now, []
        extend_s = election_timeout_s(leader.tick_s)
        for lease in sorted(model.table):
            ttl = model.ttl_of[lease]
            refreshed = [r.at for r in self.lease_refreshes.get(lease, ())]
            start = max([self.healed_at, lead[1], model.granted_at.get(lease, 0.0)] + refreshed)
            bound = start + ttl * (1 + DRIFT_MAX) + extend_s + EXPIRY_SLACK_S
            if now > bound:
                late.append((lease, round(now - bound, 3)))
        return late

    def _converged(self) -> None:
        """
        Converged also means: every lease has ended (nobody keeps one alive
        after the heal), each in time, and no lease client waits for an
        answer (a put it is sent would be missing from the history).
        """
        if self.healed and (self.lease_model.table or any(c.busy for c in self.lease_clients.values())):
            late = self._lease_overdue()
            if late:
                self.fail("liveness", f"leases (id, seconds past TTL + election timeout + {EXPIRY_SLACK_S} s"
                          f" after the heal, the leadership or their last refresh) {late[:3]} not expired")
                return
            self.world.later(0.05, self._converged)
            return
        super()._converged()

    def _deadline(self) -> None:
        if self.lease_model.table:
            self.fail("liveness", f"leases {sorted(self.lease_model.table)[:3]} not expired"
                      f" {LIVENESS_BOUND_S} s after the heal")
            return
        super()._deadline()

    def _final_checks(self) -> None:
        super()._final_checks()
        if self.violation is not None or self.lease_model is None:
            return
        leader = self._leader()
        if leader is None:
            return
        for member in sorted(leader.process.service.replica.config.members):
            store = self.nodes[member].store
            if store.applied_index() != self.reference.applied or not hasattr(store, "lease_items"):
                continue
            leases = dict(store.lease_items())
            attached = {key: lease for lease in sorted(leases) for key in store.lease_keys(lease)}
            problem = self.lease_model.differs(leases, attached)
            if problem:
                self.fail("lease", f"node {member}'s store at slot {store.applied_index()}: {problem}")
                return
