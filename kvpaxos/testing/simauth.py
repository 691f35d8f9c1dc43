"""
Authentication and authorization in the node simulator (issue 13, part 2):
every simulated node checks credentials with an L{AuthPath} of its own
(L{auth_path}: its simulated wall clock, seeded random bytes, a cheap
scrypt, hashing on the simulated pool thread), and in some seeds an
administrator changes permissions while the clients work
(L{AuthWorkload}: scenario C{auth}, and a share of the plain random seeds).

The workload (etcd's model): an admin client, as user C{root} (a client
certificate's common name), adds C{root} with the C{root} role, a user
(L{USER}) and a role (L{ROLE}) with readwrite permission on both halves of
the simulated keys (L{PARTS}), grants it the role and enables auth; each
step is retried until its answer is known.  The clients, as that user,
wait until every member has applied the enable (L{AuthWorkload.admits}),
then write and read as in any seed, while the admin, until the heal,
takes write permission on the second half away and gives it back (a grant
of READ, then of READWRITE, over the same range) under the seed's faults.
At the heal it gives it back for good, and the liveness client starts.

What the checker knows: each auth change is an operation of the history,
projected onto the keys it covers (L{kvpaxos.testing.authmodel}): the
model holds the permission state, a write answered must have been
permitted at its linearization point and one refused (PERMISSION_DENIED)
must not have been, and changed nothing.  An auth change whose answer was
lost is settled from the chosen log at the end (L{AuthWorkload.history}):
never chosen, it never happened; chosen, it took effect, with the
reference's result, by the time a node first committed it.  So no change
stays open to the end of the history, which keeps the search's cost where
it was.

What the workload does is L{STRICT} (C{--auth-strict} on the command
line): C{reads} takes read permission away too (session 10 fixed the node
to check a read's permission when it runs, after its read index: plant
C{take-time-read-auth} reopens it), C{early} lets the clients start as
soon as the enable is answered (a member that has not applied it still
names a certificate's user: plant C{user-dropped-while-disabled}), both on
by default; C{joiners} lets the operator add members, which is off by
default because a joiner still serves once its core has stepped the
snapshot, before its store installed it, so with an empty auth table.  Nothing here reads the wall clock or the global reactor.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.internet.threads import deferToThreadPool

from kvpaxos.api.errors import PermissionDenied, Unauthenticated
from kvpaxos.kv.auth import ROOT, AuthAction, AuthChanged, AuthCommand, AuthError, AuthRefused, Credential
from kvpaxos.kv.auth import KeyPermission, Permission
from kvpaxos.kv.commands import Op, Request
from kvpaxos.kv.credentials import ScryptCost
from kvpaxos.node.auth import AuthPath
from kvpaxos.testing.authmodel import READ, READWRITE, WRITE
from kvpaxos.testing.linearizability import Operation
from kvpaxos.testing.reference import tag_of
from kvpaxos.testing.scenario_kit import Scenario
from kvpaxos.testing.simrecords import ATTEMPT_TIMEOUT_S, KEYS, REQUEST_TIMEOUT_S

#: A cheap scrypt: the simulator checks the path, not the cost.
CHEAP = ScryptCost(n=2, r=1, p=1)
ROOT_CREDENTIAL = Credential(common_name=ROOT)
USER = "alice"
ROLE = "app"
USER_CREDENTIAL = Credential(common_name=USER)
#: The two halves of the simulated keys' range [b"k", b"l"): a range read
#: of it needs both.  The second one's write permission comes and goes.
PARTS = ((b"k", b"k2"), (b"k2", b"l"))
#: The share of plain random seeds (no scenario) that run the workload.
SHARE = 0.1
#: Opt-in changes the node does not keep exact (the module's docstring):
#: "reads" also takes read permission away (a revoke of the range, a
#: grant of WRITE alone, the role revoked and granted again); "early"
#: lets the clients start before every member has applied the enable;
#: "joiners" lets the operator add members (which serve before they have
#: installed the state, so with an empty auth table).
STRICT: frozenset = frozenset({"reads", "early"})

_BITS = {Permission.READ: READ, Permission.WRITE: WRITE, Permission.READWRITE: READWRITE}
_PRECONDITIONS = (AuthError.PERMISSION_NOT_GRANTED, AuthError.ROLE_NOT_GRANTED)
_ALREADY = (AuthError.USER_EXISTS, AuthError.ROLE_EXISTS)


def auth_path(sim, node, process) -> AuthPath:
    """The L{AuthPath} of one boot of C{node}: deterministic, cheap, on the simulated threads."""
    rng = random.Random(sim.node_seed ^ 0xA07 ^ (node.id * 7919 + node.epochs))
    reactor = process.reactor

    def in_pool(call, *args):
        return deferToThreadPool(reactor, reactor.getThreadPool(), call, *args)

    return AuthPath(node.store, wall=reactor.seconds, cost=CHEAP, run_in_thread=in_pool,
                    random_bytes=rng.randbytes)


def draw(sim, drawn: bool) -> None:
    """
    Run the workload in a share of the plain random seeds (C{drawn}: the
    seed's scenario was drawn, and none was; an independent draw, so that
    every other seed runs as before).
    """
    if sim.auth is None and sim.scenario is None and sim.random_faults and drawn \
            and random.Random(sim.seed * 1_000_003 + 0xA07).random() < SHARE:
        sim.auth = AuthWorkload(sim, random.Random(sim.seed * 7_919 + 0xA07))
        sim.result.faults["auth workload"] += 1


def _grant(part: int, kind: Permission) -> AuthCommand:
    key, end = PARTS[part]
    return AuthCommand(AuthAction.ROLE_GRANT_PERMISSION, role=ROLE, permission=KeyPermission(kind, key, end))


def _revoke(part: int) -> AuthCommand:
    key, end = PARTS[part]
    return AuthCommand(AuthAction.ROLE_REVOKE_PERMISSION, role=ROLE,
                       permission=KeyPermission(Permission.READ, key, end))


#: The setup, in order: (command, password).
SETUP = (
    (AuthCommand(AuthAction.USER_ADD, name=ROOT), "rootpw"),
    (AuthCommand(AuthAction.ROLE_ADD, role=ROOT), None),
    (AuthCommand(AuthAction.USER_GRANT_ROLE, name=ROOT, role=ROOT), None),
    (AuthCommand(AuthAction.USER_ADD, name=USER), "userpw"),
    (AuthCommand(AuthAction.ROLE_ADD, role=ROLE), None),
    (_grant(0, Permission.READWRITE), None),
    (_grant(1, Permission.READWRITE), None),
    (AuthCommand(AuthAction.USER_GRANT_ROLE, name=USER, role=ROLE), None),
    (AuthCommand(AuthAction.ENABLE), None),
)


def _keys_of(part: int) -> tuple:
    key, end = PARTS[part]
    return tuple(k for k in KEYS if key <= k < end)


def change_of(command: AuthCommand) -> Optional[tuple]:
    """The model's change (L{kvpaxos.testing.authmodel.CHANGES}) of C{command} and its keys, or None."""
    action = command.action
    if action is AuthAction.ENABLE:
        return ("enable",), KEYS
    if command.role == ROLE and action in (AuthAction.ROLE_GRANT_PERMISSION, AuthAction.ROLE_REVOKE_PERMISSION):
        part = [p for p, (key, _) in enumerate(PARTS) if key == command.permission.key][0]
        if action is AuthAction.ROLE_GRANT_PERMISSION:
            return ("grant", _BITS[command.permission.kind]), _keys_of(part)
        return ("revoke",), _keys_of(part)
    if command.name == USER and command.role == ROLE:
        return ("role", action is AuthAction.USER_GRANT_ROLE), KEYS
    return None


class Change:
    """One attempt of an auth change, as the admin saw it (and the log settles)."""

    def __init__(self, command: AuthCommand, call: float, node: int) -> None:
        self.command = command
        self.call = call
        self.node = node
        self.ret: Optional[float] = None
        self.output: Optional[bool] = None
        #: (origin, request id) of the submission, once a node took it.
        self.submitted: Optional[tuple] = None
        self.answer = None


class AuthWorkload:
    """The admin and the clients' credentials of one seed (the module's docstring)."""

    def __init__(self, sim, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.strict = STRICT
        #: Whether the operator adds members in this seed (L{STRICT}).
        self.joiners = "joiners" in STRICT
        self._setup = list(SETUP)
        #: The enable is answered; every node has applied it (the clients' gate).
        self.enabled = False
        self.open = False
        #: At the heal, write permission is given back for good (the liveness client's gate).
        self.restored = False
        self.changes: list[Change] = []
        self._toggle = 0
        self._attempt = 0
        self._guess: Optional[int] = None

    def start(self) -> None:
        for client in self.sim.clients.values():
            client.credential = USER_CREDENTIAL
        self.sim.world.later(self.rng.uniform(0.05, 0.2), self._next)

    # --- the clients' gate ------------------------------------------------------

    def admits(self, client) -> bool:
        """Whether C{client} may send now; if not, it is asked again a little later."""
        sim = self.sim
        if client.credential is None:
            client.credential = USER_CREDENTIAL
        if not self.open and self.enabled:
            leader = sim._leader()
            members = leader.process.service.replica.config.members if leader is not None else None
            self.open = "early" in self.strict or members is not None and all(
                node.process is not None and node.process.service.auth.state.enabled
                for node in (sim.nodes[n] for n in sorted(members) if n in sim.nodes))
        if self.open and (self.restored or not client.liveness):
            return True
        sim.world.later(0.01, sim._client_step, client)
        return False

    # --- the admin --------------------------------------------------------------

    def _next(self) -> None:
        sim = self.sim
        if sim.done or sim.violation is not None:
            return
        if self._setup:
            command, password = self._setup[0]
            self._send(command, password, self._setup_answered)
        elif sim.healed and self.open:
            if not self.restored:
                self._send(_grant(1, Permission.READWRITE), None, self._restore_answered)
        elif self.open:
            self._send(self._toggled(), None, self._later)
        else:
            sim.world.later(0.02, self._next)

    def _toggled(self) -> AuthCommand:
        self._toggle += 1
        if "reads" in self.strict:
            choice = self.rng.randrange(6)
            if choice == 0:
                return _revoke(1)
            if choice == 1:
                return _grant(1, Permission.WRITE)
            if choice == 2:
                return AuthCommand(AuthAction.USER_REVOKE_ROLE, name=USER, role=ROLE)
            if choice == 3:
                return AuthCommand(AuthAction.USER_GRANT_ROLE, name=USER, role=ROLE)
        return _grant(1, Permission.READ if self._toggle % 2 else Permission.READWRITE)

    def _later(self, how, value) -> None:
        self.sim.world.later(self.rng.uniform(0.02, 0.15), self._next)

    def _setup_answered(self, how, value) -> None:
        if how == "ok" and (type(value) is AuthChanged or value.error in _ALREADY
                            or value.error is AuthError.PERMISSION_DENIED):  # enabled already
            command, _ = self._setup.pop(0)
            if command.action is AuthAction.ENABLE:
                self.enabled = True
        self.sim.world.later(0.01 if how == "ok" else self.rng.uniform(0.01, 0.1), self._next)

    def _restore_answered(self, how, value) -> None:
        self.restored = how == "ok"
        if not self.restored:
            self.sim.world.later(self.rng.uniform(0.01, 0.1), self._next)

    def _send(self, command: AuthCommand, password, then) -> None:
        sim = self.sim
        members = sim._members()
        node_id = self._guess if self._guess in sim.nodes and self.rng.random() < 0.7 else \
            self.rng.choice(members)
        change = Change(command, sim.world.now, node_id)
        self._attempt += 1
        attempt = self._attempt
        process = sim.processes.get(node_id)
        sim._log(f"admin -> node {node_id}: {command}")
        if process is None or not process.alive:
            sim.world.later(0.001, self._answered, attempt, change, "refused", None, then)
            return
        sim.submitted.add(tag_of(Request(Op.AUTH, auth=command)))
        self.changes.append(change)
        sim.world.later(ATTEMPT_TIMEOUT_S, self._answered, attempt, change, "timeout", None, then)
        process.io(0.0005, self._call, attempt, change, process, password, then)

    def _call(self, attempt: int, change: Change, process, password, then) -> None:
        service = process.service
        writes = service.writes
        before = writes.proposed if writes is not None else None
        d = service.auth_change(change.command, REQUEST_TIMEOUT_S, ROOT_CREDENTIAL, password)
        if writes is not None and writes.proposed == before + 1:
            change.submitted = (process.node_id, (service._boot << 32) | (writes._counter & 0xFFFFFFFF))
        elif password is not None:
            change.submitted = "hashing"  # submitted later, or not: only the setup has passwords

        def answer(value) -> None:
            self.sim.world.later(0.0005, self._answered, attempt, change, "ok", value, then)

        def failed(failure) -> None:
            self.sim.world.later(0.0005, self._answered, attempt, change, "error", failure, then)

        d.addCallbacks(answer, failed)

    def _answered(self, attempt: int, change: Change, how: str, value, then) -> None:
        sim = self.sim
        if attempt != self._attempt or sim.violation is not None:
            return
        self._attempt += 1
        if how == "ok":
            process = sim.processes.get(change.node)
            if process is not None:
                self._guess = process.service.status().leader or change.node
            if type(value) is AuthRefused and value.error not in _PRECONDITIONS + _ALREADY and not (
                    # A retried enable taken by a member that has not applied
                    # the first: it carries no user (STRICT "early").
                    change.command.action is AuthAction.ENABLE
                    and value.error is AuthError.PERMISSION_DENIED):
                sim.fail("auth", f"the admin's {change.command} was refused: {value.error.value}")
                return
            change.ret = sim.world.now
            change.output = type(value) is AuthChanged
            change.answer = value
            sim.result.ops["auth change" if change.output else "auth change refused"] += 1
        elif how == "error":
            sim.result.ops["auth change failed"] += 1
        sim._log(f"admin <- {how} {value!r}")
        then(how, value)

    # --- the clients' refusals --------------------------------------------------

    def refused_write(self, client, op, value) -> bool:
        """A write answered C{value}: if it is a refusal, record it (and go on); else False."""
        if type(value) is not AuthRefused:
            return False
        sim = self.sim
        sim.result.ops["refused: permission"] += 1
        if op.deliveries > 1:
            sim._record_write(client, op, None)  # an earlier attempt may still apply
        elif op.kind in ("put", "append", "delete", "cas"):
            start = len(sim.history)
            sim._record_write(client, op, None)
            sim.history[start:] = [_denied(o, sim.world.now) for o in sim.history[start:]]
        if client.liveness:
            sim._liveness_acked += 1
        sim._done(client)
        return True

    def refused(self, client, op, failure) -> bool:
        """A request failed with C{failure}: if auth refused it, record it (and go on); else False."""
        if not failure.check(PermissionDenied, Unauthenticated):
            return False
        sim = self.sim
        kind = "permission" if failure.check(PermissionDenied) else "unauthenticated"
        sim.result.ops[f"refused: {kind}"] += 1
        if op.request is not None and op.kind != "open" and op.deliveries > 1:
            sim._record_write(client, op, None)
        elif op.kind == "get" and kind == "permission" and op.consistency != "serializable":
            sim.history.append(Operation(client.id, "get", op.key, call=op.call, ret=sim.world.now,
                                         denied=True))
        sim._done(client)
        return True

    # --- the history --------------------------------------------------------------

    def history(self) -> list[Operation]:
        """
        The auth changes as operations of the history, each projected onto
        the keys it covers; one whose answer was lost settled from the
        chosen log (the module's docstring).  A violation is reported to
        the simulation (C{result}: an answer unlike the log's).
        """
        sim = self.sim
        applied = sim.reference.auth_applied
        ops = []
        for change in self.changes:
            projected = change_of(change.command)
            logged = applied.get(change.submitted) if isinstance(change.submitted, tuple) else None
            if logged is not None and change.ret is not None and logged[1] != change.answer:
                sim.fail("result", f"the admin's {change.command} was answered {change.answer!r};"
                         f" the chosen log (slot {logged[0]}) gives {logged[1]!r}")
            if projected is None:
                continue
            what, keys = projected
            ret, output = change.ret, change.output
            if ret is None:
                if change.submitted is None or logged is None:
                    continue  # never chosen: it never took effect
                ret, output = max(change.call, sim.chosen_at[logged[0]]), type(logged[1]) is AuthChanged
            ops.extend(Operation(0, "auth", key, input=what, output=output, call=change.call, ret=ret)
                       for key in keys)
        return ops


def _denied(op: Operation, ret: float) -> Operation:
    return Operation(op.client, op.kind, op.key, input=op.input, call=op.call, ret=ret, denied=True)


class AuthScenario(Scenario):
    """Scenario C{auth}: the workload in every seed (the module's docstring)."""

    name = "auth"
    holes = "issue 13 part 2"
    #: Not drawn for the random mix (which runs the workload in a share of
    #: its plain seeds instead, L{draw}): the other seeds keep their draws.
    drawn = False

    def configure(self, sim) -> None:
        sim.auth = AuthWorkload(sim, random.Random(self.rng.getrandbits(64)))
