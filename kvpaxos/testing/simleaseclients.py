"""
The lease clients of the node simulator (issue 14; L{LeaseClientsMixin},
part of L{kvpaxos.testing.simlease.LeaseMixin}).

Each L{LeaseClient} does one grant, revoke or put with a lease at a time
(L{LeaseOp}), through any node, the way the plain clients do
(L{kvpaxos.testing.simclients}): an answer, a refusal for space, a
timeout (outcome unknown: never retried, as a write without a session),
a connection refused (certainly not delivered: sent again elsewhere).  Each
lease it keeps alive (L{HeldLease}) has a keep-alive loop of its own,
every third or quarter of the TTL and at once elsewhere after a failure,
as the real client's stream; a time-to-live now and then.  What the
clients are told goes to the checks (L{kvpaxos.testing.simleasecheck}):
results against the log, puts into the linearizable history, every
keep-alive's TTL.  Draws come from C{lease_rng} only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvpaxos.api.errors import NoSpace
from kvpaxos.kv.commands import InvalidArgument, Op, Put, Request, Txn
from kvpaxos.kv.leases import LeaseGranted, LeaseRefused
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.testing.linearizability import Operation, project_txn
from kvpaxos.testing.reference import tag_of
from kvpaxos.testing.simleasecheck import min_ttl
from kvpaxos.testing.simrecords import (
    ATTEMPT_TIMEOUT_S,
    KEYS,
    REQUEST_TIMEOUT_S,
    RETRY_FOR_S,
    HeldLease,
    LeaseClient,
)

#: How long a keep-alive or time-to-live waits for its answer.
ASK_TIMEOUT_S = 0.5
#: What the history calls the lease clients (after the plain ones and the liveness client).
HISTORY_CLIENT = 300


@dataclass
class LeaseOp:
    """A lease client's grant, revoke or put with a lease, in flight (perhaps over several attempts)."""

    kind: str
    request: Request
    #: What the log will call it (a grant's once a node raised its TTL).
    tag: tuple = ()
    held: Optional[HeldLease] = None
    first_call: float = 0.0
    give_up_at: float = 0.0
    node: int = 0
    delivered: bool = False
    deliveries: int = 0


class LeaseClientsMixin:
    """The lease clients' grants, revokes, puts, keep-alives and time-to-lives."""

    # --- the clients: grants, revokes, puts --------------------------------------------

    def _lease_credential(self) -> dict:
        if self.auth is None:
            return {}
        from kvpaxos.testing.simauth import ROOT_CREDENTIAL

        return {"credential": ROOT_CREDENTIAL}

    def _lease_node(self, guess: Optional[int]) -> int:
        """Where a lease client sends: the leader it was last told of, mostly, else any node."""
        if guess in self.nodes and self.lease_rng.random() < 0.7:
            return guess
        return self.lease_rng.choice(sorted(self.nodes))

    def _lease_step(self, client: LeaseClient) -> None:
        if client.busy or self.done or self.violation is not None:
            return
        now, rng = self.world.now, self.lease_rng
        if self.healed:
            return
        live = [held for held in client.held.values() if not held.dropped]
        closing = now >= self.lease_wind_down
        if closing and not (self.lease_close and live):
            return
        due = [held for held in live if closing or (held.revoke_at and held.revoke_at <= now)]
        choice = rng.random()
        if due:
            held = due[0]
            self._lease_op(client, LeaseOp("revoke", Request(Op.LEASE_REVOKE, lease=held.id), held=held))
        elif len(live) < 3 and (not live or choice < 0.3):
            client.ids += 1
            lease = (client.id << 24) | client.ids if rng.random() < 0.3 else 0  # else the node picks
            ttl = rng.choice((0, 1, 1, 1, 1, 2))  # 0: the node raises it to its least
            self._lease_op(client, LeaseOp("grant", Request(Op.LEASE_GRANT, lease=lease, ttl=ttl)))
        elif choice < 0.7 and self.auth is None:
            held, key = rng.choice(live), rng.choice(KEYS)
            client.written += 1
            value = f"L{client.id}.{client.written}".encode()
            if rng.random() < 0.7:
                request = Request(Op.PUT, key, value, lease=held.id)
            else:
                other = rng.choice([k for k in KEYS if k != key])
                puts = (Put(key, value, lease=held.id), Put(other, value + b"'", lease=rng.choice((0, held.id))))
                request = Request(Op.TXN, txn=Txn((), puts, ()))
            self._lease_op(client, LeaseOp("put", request))
        else:
            if choice < 0.8:
                held = rng.choice(live)
                if not held.asking:
                    self._lease_ask(client, held, "time-to-live")
            self._lease_done(client)

    def _lease_done(self, client: LeaseClient) -> None:
        client.busy = False
        self.world.later(self.lease_rng.uniform(0.02, 0.2), self._lease_step, client)

    def _lease_op(self, client: LeaseClient, op: LeaseOp) -> None:
        client.busy = True
        op.first_call = self.world.now
        op.give_up_at = op.first_call + RETRY_FOR_S
        if op.kind != "grant":  # a grant's TTL is the one the node raises it to
            op.tag = tag_of(op.request)
            self.submitted.add(op.tag)
        if op.kind == "revoke":
            self.lease_calls.setdefault(op.request.lease, op.first_call)
        self._lease_attempt(client, op, self._lease_node(client.guess))

    def _lease_attempt(self, client: LeaseClient, op: LeaseOp, node_id: int) -> None:
        client.attempt += 1
        attempt = client.attempt
        op.node = node_id
        process = self.processes.get(node_id)
        if process is None or not process.alive:
            self.world.later(0.001, self._lease_answered, client, op, attempt, "refused", None)
            return
        self.world.later(ATTEMPT_TIMEOUT_S, self._lease_answered, client, op, attempt, "timeout", None)
        process.io(0.0005, self._lease_call, client, op, attempt, process)

    def _lease_call(self, client: LeaseClient, op: LeaseOp, attempt: int, process) -> None:
        op.delivered = True
        op.deliveries += 1
        service, who, request = process.service, self._lease_credential(), op.request
        if op.kind == "grant":
            ttl = max(request.ttl, service.min_lease_ttl)
            op.tag = ("lease", int(Op.LEASE_GRANT), request.lease, ttl)
            self.submitted.add(op.tag)
            d = service.lease_grant(request.ttl, REQUEST_TIMEOUT_S, lease_id=request.lease, **who)
        elif op.kind == "revoke":
            d = service.lease_revoke(request.lease, REQUEST_TIMEOUT_S, **who)
        else:
            d = service.submit(request, REQUEST_TIMEOUT_S, **who)
        d.addCallbacks(
            lambda value: self.world.later(0.0005, self._lease_answered, client, op, attempt, "ok", value),
            lambda failure: self.world.later(0.0005, self._lease_answered, client, op, attempt, "error", failure))

    def _lease_answered(self, client: LeaseClient, op: LeaseOp, attempt: int, how: str, value) -> None:
        if attempt != client.attempt or not client.busy or self.violation is not None:
            return
        client.attempt += 1
        if how == "ok":
            process = self.processes.get(op.node)
            leader = process.service.status().leader if process is not None and process.alive else None
            client.guess = leader or op.node
            self._lease_succeeded(client, op, value)
            self._lease_done(client)
            return
        if how == "error" and value.check(InvalidArgument):
            self.fail("client", f"the node refused {op.request!r}: {value.getErrorMessage()}")
            return
        if how == "error" and value.check(NoSpace):
            self.result.ops["lease refused for space"] += 1
            if op.kind == "put" and op.deliveries == 1:
                self.space_refused.add(op.tag)  # refused before anything was proposed
        elif how == "refused" and self.world.now < op.give_up_at:
            node = self._lease_node(None)  # certainly not delivered: try another node
            self.world.later(self.lease_rng.uniform(0.01, 0.1), self._lease_attempt, client, op, node)
            return
        elif op.kind == "put" and op.delivered:
            self._lease_history(client, op, None)  # outcome unknown
        if op.held is not None:
            op.held.dropped = True  # a revoke it gave up on: it uses the lease no more
        self._lease_done(client)

    def _lease_succeeded(self, client: LeaseClient, op: LeaseOp, value) -> None:
        tag = op.tag
        if op.kind == "grant" and type(value) is LeaseGranted:
            asked, rng = op.request, self.lease_rng
            least = min_ttl(self.nodes[op.node].tick_s)
            if value.ttl != max(asked.ttl, least) or (asked.lease and value.id != asked.lease):
                self.fail("lease", f"node {op.node} answered {value!r} to a grant of lease {asked.lease} for"
                          f" {asked.ttl} s (the least TTL it grants is {least} s)")
                return
            tag = ("lease", int(Op.LEASE_GRANT), value.id, value.ttl)
            self._log(f"lease client {client.id} <- node {op.node}: lease {value.id} granted for {value.ttl} s")
            self.result.ops["lease granted"] += 1
            keep_until = op.first_call + rng.uniform(0.5, 4.0) if rng.random() < 0.65 else 0.0
            held = client.held[value.id] = HeldLease(
                value.id, value.ttl, keep_until=keep_until,
                revoke_at=self.world.now + rng.uniform(0.1, 2.0) if rng.random() < 0.3 else 0.0,
                alive_from=op.first_call, guess=client.guess)
            self._lease_client_acked(value.id, op.first_call, value.ttl)
            if held.keep_until:
                self.world.later(rng.uniform(value.ttl / 4, value.ttl / 3), self._lease_keep, client, held)
        elif op.kind == "revoke":
            op.held.dropped = True
            self.result.ops["lease revoke answered"] += 1
        elif op.kind == "put":
            refused = type(value) is LeaseRefused
            self.result.ops["lease put refused" if refused else "lease put"] += 1
            if not refused:
                self._lease_history(client, op, value)
        self.acked[tag] = (value, HISTORY_CLIENT + client.id, op.node)
        self._acked_waiting.add(tag)
        self._recheck()

    def _lease_history(self, client: LeaseClient, op: LeaseOp, value) -> None:
        """A put with a lease into the history (C{value} None: its outcome is unknown)."""
        request, who = op.request, HISTORY_CLIENT + client.id
        ret = None if value is None else self.world.now
        if request.op is Op.PUT:
            self.history.append(Operation(who, "put", request.key, input=request.value,
                                          call=op.first_call, ret=ret))
        else:
            self.history.extend(project_txn(who, request.txn, value, op.first_call, ret))

    # --- the clients: keep-alives and time-to-lives ------------------------------------

    def _lease_keep(self, client: LeaseClient, held: HeldLease, again: bool = True) -> None:
        """
        Now and then while its client keeps it (C{again}: and then again):
        a keep-alive, unless one is in flight.
        """
        if held.dropped or not held.keep_until or self.done or self.violation is not None:
            return
        now = self.world.now
        if self.healed or now >= min(held.keep_until, self.lease_wind_down):
            held.keep_until = 0.0
            self.result.ops["lease let lapse"] += 1
            return
        if now > held.alive_from + held.ttl:
            held.dropped = True  # as the client counts, it may have run out: it gives it up
            self.result.faults["lease given up by its client"] += 1
            return
        if again:
            self.world.later(self.lease_rng.uniform(held.ttl / 4, held.ttl / 3), self._lease_keep, client, held)
        if not held.asking:
            self._lease_ask(client, held, "keep-alive")

    def _lease_ask(self, client: LeaseClient, held: HeldLease, what: str, node: int = 0) -> None:
        node = node or self._lease_node(held.guess)
        self._lease_asks += 1
        number = held.asking = self._lease_asks
        sent = self.world.now
        process = self.processes.get(node)
        if process is None or not process.alive:
            self.world.later(0.001, self._lease_told, client, held, number, node, sent, what, "refused", None)
            return
        self.world.later(ASK_TIMEOUT_S, self._lease_told, client, held, number, node, sent, what, "timeout", None)
        process.io(0.0005, self._lease_ask_call, client, held, number, node, sent, what, process)

    def _lease_ask_call(self, client, held, number, node, sent, what, process) -> None:
        service = process.service
        if what == "keep-alive":
            d = service.lease_keep_alive(held.id)
        else:
            d = service.lease_time_to_live(held.id)
        d.addCallbacks(
            lambda value: self.world.later(0.0005, self._lease_told, client, held, number, node, sent, what,
                                           "ok", value),
            lambda failure: self.world.later(0.0005, self._lease_told, client, held, number, node, sent, what,
                                             "error", failure))

    def _lease_told(self, client, held: HeldLease, number: int, node: int, sent: float, what: str,
                    how: str, value) -> None:
        if held.asking != number or self.violation is not None:
            return
        held.asking = 0
        if how == "ok":
            process = self.processes.get(node)
            leader = process.service.status().leader if process is not None and process.alive else None
            held.guess = leader or node
            if what == "time-to-live":
                held.dropped = held.dropped or value is None
                return
            if value:
                self.result.ops["lease kept alive"] += 1
                held.alive_from = max(held.alive_from, sent)
                self._lease_client_acked(held.id, sent, value)
            else:
                held.dropped = True  # told it is gone (or ran out)
                self.result.ops["lease keep-alive: none"] += 1
            return
        if how == "error" and value.check(InvalidArgument):
            self.fail("client", f"node {node} refused a {what} of lease {held.id}: {value.getErrorMessage()}")
            return
        held.guess = value.value.leader if how == "error" and value.check(NotLeaderError) else None
        if what == "keep-alive":  # as the real client's stream: at once to another node
            self.world.later(self.lease_rng.uniform(0.03, 0.1), self._lease_keep, client, held, False)
