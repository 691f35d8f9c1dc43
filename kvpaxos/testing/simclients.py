"""
The simulated clients (L{ClientsMixin}): what they send, where, and how
their answers are recorded.

Each client opens a session, writes and reads through any node (or a
script's steps, L{kvpaxos.testing.scenarios}), retries after a timeout,
and puts what it was answered into the history and the checks' records.
Part of L{kvpaxos.testing.sim.Simulation}: it reads and sets that class's
state.
"""

from __future__ import annotations

import dataclasses

from kvpaxos.kv.commands import (
    CompareTarget,
    DeleteRange,
    InvalidArgument,
    Op,
    Put,
    Range,
    RangeResult,
    Request,
    SessionExpired,
    SessionOpened,
    StaleSequence,
    Txn,
    compare_and_swap,
)
from kvpaxos.api.errors import NoSpace
from kvpaxos.testing.linearizability import Operation, project_range, project_txn
from kvpaxos.testing.reference import tag_of
from kvpaxos.testing.simworld import Process
from kvpaxos.testing.simrecords import (
    ATTEMPT_TIMEOUT_S,
    KEYS,
    LIVENESS_COMMANDS,
    REQUEST_TIMEOUT_S,
    RETRY_FOR_S,
    Client,
    Pending,
)


class ClientsMixin:
    """The clients of a L{kvpaxos.testing.sim.Simulation} and their operations."""

    def _members(self) -> list[int]:
        return sorted(self.nodes)

    def _targets(self, client: Client) -> list[int]:
        """
        The nodes a client may send to: any node (a removed one too), but
        after the heal only the members of the latest member set.
        """
        if not client.liveness:
            if client.guess in self.nodes and self.client_rng.random() < 0.7:
                return [client.guess]  # as a real client: to the leader it knows
            return self._members()
        known = [
            (p.service.replica.chosen_index, p.node_id) for p in self.processes.values()
            if getattr(p.service, "replica", None) is not None
        ]
        if not known:
            return self._members()
        config = self.processes[max(known)[1]].service.replica.config
        return sorted(config.members & set(self.nodes)) or self._members()

    def _client_step(self, client: Client) -> None:
        if client.busy or self.done:
            return
        if self.healed and not client.liveness:
            return
        if client.liveness and self._liveness_acked >= LIVENESS_COMMANDS:
            return
        if self.auth is not None and not self.auth.admits(client):
            return
        if client.script is not None:
            client.script.step(client)
            return
        rng = self.client_rng
        node = rng.choice(self._targets(client))
        if client.session is None and (client.liveness or rng.random() < 0.6):
            self._start(client, Pending("open", Request(Op.OPEN_SESSION)), node)
            return
        if client.liveness or rng.random() < 0.55:
            self._start(client, self._write(client), node)
        else:
            self._start(client, self._read(client), node)

    def _value(self, client: Client) -> bytes:
        client.written += 1
        return f"{client.id}.{client.written}".encode()

    def _write(self, client: Client) -> Pending:
        rng = self.client_rng
        key = rng.choice(KEYS)
        choice = rng.random()
        if client.liveness or choice < 0.3:
            kind, request = "put", Request(Op.PUT, key, self._value(client))
        elif choice < 0.5:
            kind, request = "append", Request(Op.APPEND, key, self._value(client))
        elif choice < 0.6 and client.session is not None:
            # Only in a session: a delete carries no value to tell two apart.
            kind, request = "delete", Request(Op.DELETE, key)
        elif choice < 0.8:
            expected = client.seen.get(key)
            new = self._value(client)
            if expected is None:
                request = compare_and_swap(key, new, expected_version=0)
            else:
                request = compare_and_swap(key, new, expected_value=expected)
            kind = "cas"
        else:
            other = rng.choice([k for k in KEYS if k != key])
            if rng.random() < 0.5:
                ops = (Put(key, self._value(client)), Put(other, self._value(client)))
            elif rng.random() < 0.5:
                ops = (Put(key, self._value(client)), DeleteRange(other))
            else:
                ops = (Put(key, self._value(client)), Range(other))
            kind, request = "txn", Request(Op.TXN, txn=Txn((), ops, ()))
        if client.session is not None and (kind == "delete" or client.liveness or rng.random() < 0.85):
            client.sequence += 1
            request = dataclasses.replace(request, client_id=client.session, sequence=client.sequence)
        return Pending(kind, request, key)

    def _read(self, client: Client) -> Pending:
        rng = self.client_rng
        choice = rng.random()
        key = rng.choice(KEYS)
        if choice < 0.3:
            return Pending("get", key=key, consistency="linearizable")
        if choice < 0.5:
            return Pending("get", key=key, consistency="lease")
        if choice < 0.7:
            return Pending("range", consistency=rng.choice(("linearizable", "lease")),
                           query=Range(b"k", b"l"))
        return Pending("range", consistency="serializable", query=Range(b"k", b"l"))

    def _start(self, client: Client, op: Pending, node: int) -> None:
        client.busy = True
        op.first_call = self.world.now
        op.give_up_at = self.world.now + RETRY_FOR_S
        if op.request is not None and op.kind != "open":
            self.submitted.add(tag_of(op.request))
        self._attempt(client, op, node)

    def _attempt(self, client: Client, op: Pending, node_id: int) -> None:
        client.attempt += 1
        attempt = client.attempt
        op.node = node_id
        op.call = self.world.now
        process = self.processes.get(node_id)
        self._log(f"client {client.id} -> node {node_id}: {self._describe(op)}")
        if process is None or not process.alive:
            # Connection refused: certainly not delivered.
            self.world.later(0.001, self._answered, client, op, attempt, "refused", None)
            return
        self.world.later(ATTEMPT_TIMEOUT_S, self._answered, client, op, attempt, "timeout", None)
        process.io(0.0005, self._call_node, client, op, attempt, process)

    def _call_node(self, client: Client, op: Pending, attempt: int, process: Process) -> None:
        op.delivered = True
        op.deliveries += 1
        service = process.service
        who = {"credential": client.credential} if client.credential is not None else {}
        if op.request is not None:
            d = service.submit(op.request, REQUEST_TIMEOUT_S, **who)
        elif op.kind == "get":
            d = service.get(op.key, REQUEST_TIMEOUT_S, op.consistency, **who)
        else:
            d = service.range(op.query, REQUEST_TIMEOUT_S, op.consistency, **who)
        op.call = self.world.now

        def answer(value) -> None:
            self.world.later(0.0005, self._answered, client, op, attempt, "ok", value)

        def failed(failure) -> None:
            self.world.later(0.0005, self._answered, client, op, attempt, "error", failure)

        d.addCallbacks(answer, failed)

    def _answered(self, client: Client, op: Pending, attempt: int, how: str, value) -> None:
        if attempt != client.attempt or not client.busy or self.violation is not None:
            return  # an attempt given up on
        client.attempt += 1  # nothing later of this attempt counts
        if how == "ok":
            # What a response header says: the leader the answering node knows.
            process = self.processes.get(op.node)
            leader = process.service.status().leader if process is not None else None
            client.guess = leader or op.node
            self._succeeded(client, op, value)
            return
        if how == "error" and value.check(NoSpace):
            # Refused before anything was proposed: it changed nothing.
            self.result.ops["refused for space"] += 1
            if op.request is not None and op.kind != "open" and op.deliveries > 1:
                self._record_write(client, op, None)  # an earlier attempt's outcome is unknown
            elif op.request is not None:
                self.space_refused.add(tag_of(op.request))
            self._done(client)
            return
        if how == "error" and self.auth is not None and self.auth.refused(client, op, value):
            return
        if how == "error" and value.check(InvalidArgument):
            self.fail("client", f"the node refused {op.request!r}: {value.getErrorMessage()}")
            return
        certain = how == "refused"
        retry = op.request is not None and (
            certain or (op.request.client_id and self.world.now < op.give_up_at)
        )
        if op.kind == "open" and not certain:
            retry = False  # a new session is opened instead
        if retry and self.world.now < op.give_up_at + (1 if certain else 0):
            node = self.client_rng.choice(self._targets(client))
            self.world.later(self.client_rng.uniform(0.01, 0.1), self._attempt, client, op, node)
            return
        if op.request is not None and op.kind != "open" and op.delivered:
            self._record_write(client, op, None)  # outcome unknown
        self._done(client)

    def _done(self, client: Client, pause: tuple = (0.001, 0.03)) -> None:
        client.busy = False
        if client.script is not None:
            pause = getattr(client.script, "pause", pause)
        self.world.later(self.client_rng.uniform(*pause), self._client_step, client)

    def _succeeded(self, client: Client, op: Pending, value) -> None:
        now = self.world.now
        if op.kind == "open":
            if type(value) is not SessionOpened:
                self.fail("client", f"OPEN_SESSION answered {value!r}")
                return
            other = self.assigned.setdefault(value.client_id, client.id)
            if other != client.id:
                self.fail("session", f"session {value.client_id} given to clients {other} and {client.id}")
                return
            client.session = value.client_id
            client.sequence = 0
            self.result.ops["open"] += 1
            self._done(client)
            return
        if op.request is not None:
            if self.auth is not None and self.auth.refused_write(client, op, value):
                return
            if type(value) in (StaleSequence, SessionExpired):
                self.fail("session", f"{op.request!r} answered {value!r}")
                return
            tag = tag_of(op.request)
            self.acked[tag] = (value, client.id, op.node)
            self._acked_waiting.add(tag)
            self._recheck()
            revision = value.revision
            client.answered[op.node] = max(client.answered.get(op.node, 0), revision)
            self._record_write(client, op, value)
            self.result.ops[op.kind] += 1
            if client.liveness:
                self._liveness_acked += 1
            self._log(f"client {client.id} <- node {op.node}: {value!r}")
            if client.script is not None:
                client.script.answered(client, op, value)
                self._done(client)
                return
            # Now and then read it back at once, serializably, where it was answered.
            if not client.liveness and self.client_rng.random() < 0.3:
                follow = Pending("range", consistency="serializable", query=Range(b"k", b"l"))
                follow.first_call = now
                follow.give_up_at = now
                self._attempt(client, follow, op.node)
                return
            self._done(client)
            return
        self.result.ops[f"{op.kind}/{op.consistency}"] += 1
        if op.kind == "get":
            self.history.append(Operation(client.id, "get", op.key, output=value, call=op.call, ret=now))
            client.seen[op.key] = value
        else:
            self._range_answered(client, op, value)
        self._done(client)

    def _range_answered(self, client: Client, op: Pending, value: RangeResult) -> None:
        node = self.nodes[op.node]
        values = {kv.key: kv.value for kv in value.kvs}
        got = tuple(values.get(key) for key in KEYS)
        for key in KEYS:
            client.seen[key] = values.get(key)
        what = f"{op.consistency} range at node {op.node} for client {client.id}"
        if value.revision < node.read_revision:
            self.fail(
                "read", f"{what} saw revision {value.revision} after one at {node.read_revision}"
            )
            return
        node.read_revision = value.revision
        if op.consistency == "serializable":
            answered = client.answered.get(op.node, 0)
            if value.revision < answered:
                self.fail(
                    "read",
                    f"{what} saw revision {value.revision}, though that node had answered"
                    f" the client's write at revision {answered}",
                )
                return
        else:
            self.history.extend(project_range(client.id, KEYS, got, op.call, self.world.now))
        self._match_read(op.node, value.revision, got, what)


    def _record_write(self, client: Client, op: Pending, value) -> None:
        request = op.request
        ret = None if value is None else self.world.now
        call = op.first_call
        if op.kind == "put":
            ops = [Operation(client.id, "put", request.key, input=request.value, call=call, ret=ret)]
        elif op.kind == "append":
            output = value.value if value is not None else None
            ops = [Operation(client.id, "append", request.key, input=request.value,
                             output=output, call=call, ret=ret)]
        elif op.kind == "delete":
            ops = [Operation(client.id, "delete", request.key, call=call, ret=ret)]
        elif op.kind == "cas":
            compare = request.txn.compares[0]
            expected = None if compare.target is CompareTarget.VERSION else compare.operand
            new = request.txn.success[0].value
            ops = [Operation(client.id, "cas", compare.key, input=(expected, new),
                             output=None if value is None else value.succeeded, call=call, ret=ret)]
        else:
            ops = project_txn(client.id, request.txn, value, call, ret)
        self.history.extend(ops)

    def _describe(self, op: Pending) -> str:
        if op.request is not None:
            r = op.request
            if r.op is Op.TXN:
                return f"{op.kind} {r.txn} session {r.client_id}:{r.sequence}"
            return f"{op.kind} {r.key!r} {r.value!r} session {r.client_id}:{r.sequence}"
        return f"{op.kind} {op.consistency} {op.key or op.query!r}"
