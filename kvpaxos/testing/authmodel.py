"""
The register under permissions: the sequential specification the
linearizability checker (L{kvpaxos.testing.linearizability}) uses for a
key whose history holds auth changes or refusals (etcd's model, as
L{kvpaxos.kv.auth} applies it, seen from one key and one user).

A key's state is C{(value, grant)}; C{grant} is C{(enabled, bits,
role)}: whether auth is on, the READ / WRITE bits of the permission that
covers this key in the user's role, and whether the user holds that role.
While auth is off everything is permitted; while it is on, an operation
is permitted if the user holds the role and the bits hold what the
operation needs (L{NEEDS}: a get reads, a put or delete writes, an append
and a compare-and-swap do both, as L{kvpaxos.kv.auth.request_permitted}
decides).  An operation of a user who may do everything (C{root}) needs
nothing.

  - An answered operation that was not refused must be permitted at its
    linearization point, and then does what the register says.
  - A refused one (C{denied}: PERMISSION_DENIED) must not be, and changes
    nothing.
  - A timed-out one takes effect at a point where it is permitted, or
    never (a refusal changes nothing, as never does).
  - An auth change (kind C{"auth"}, L{CHANGES}) sets a part of C{grant};
    C{output} True: it applied, False: it was refused for its precondition
    (a revoke of what is not granted: etcd's "permission is not granted to
    the role", "role is not granted to the user").

Multi-key requests project onto each key as for the register
(L{kvpaxos.testing.linearizability}): an auth change onto every key it
covers, with its interval; a refused request over several keys is left
out (which of its keys refused it is not known).  Pure: no I/O, no clock,
no randomness.
"""

from __future__ import annotations

from kvpaxos.testing.registers import ILLEGAL, STEPS

READ = 1
WRITE = 2
READWRITE = READ | WRITE

#: What each kind of key operation needs.
NEEDS = {"get": READ, "put": WRITE, "delete": WRITE, "append": READWRITE, "cas": READWRITE}

#: Auth off, no permission, no role; the key absent.
GRANT = (False, 0, False)
INITIAL = (None, GRANT)

#: The auth changes (an C{"auth"} operation's C{input}):
#:   - C{("enable",)}: auth on (an enable of what is on is a success; one
#:     refused says auth was on: its sender was not a root user then);
#:   - C{("grant", bits)}: the key's permission becomes C{bits} (a grant
#:     replaces the range's permission);
#:   - C{("revoke",)}: the key's permission removed (refused if none);
#:   - C{("role", True)}, C{("role", False)}: the role granted to the user
#:     (always applies), revoked from it (refused if not held).
CHANGES = ("enable", "grant", "revoke", "role")


def check_change(change) -> None:
    """Raise ValueError unless C{change} is one of L{CHANGES}, well formed."""
    if not isinstance(change, tuple) or not change or change[0] not in CHANGES:
        raise ValueError(f"unknown auth change {change!r}")
    if change[0] == "grant" and not (len(change) == 2 and change[1] in (0, READ, WRITE, READWRITE)):
        raise ValueError("a grant is ('grant', bits)")
    if change[0] == "role" and not (len(change) == 2 and change[1] in (True, False)):
        raise ValueError("a role change is ('role', held)")


_KINDS = {0: "no permission", READ: "READ", WRITE: "WRITE", READWRITE: "READWRITE"}


def show(state: tuple) -> str:
    """One line for a human: a C{(value, grant)} state."""
    value, (enabled, bits, role) = state
    shown = "absent" if value is None else repr(value)
    if not enabled:
        return f"{shown} (auth off)"
    return f"{shown} (auth on: {_KINDS[bits]} on the key, the role {'held' if role else 'not held'})"


def uses_auth(ops) -> bool:
    """Whether a key's operations need this model (an auth change or a refusal among them)."""
    return any(op.kind == "auth" or op.denied for op in ops)


def permitted(grant: tuple, need: int) -> bool:
    enabled, bits, role = grant
    return not enabled or (role and bits & need == need)


def read_only(op) -> bool:
    """Whether C{op}, answered, changes no state (so a legal move of it is forced)."""
    return op.denied or (op.kind == "auth" and op.output is False)


def step(op, answered: bool):
    """The step function of C{op} over C{(value, grant)} states."""
    if op.kind == "auth":
        return _change_step(op.input, op.output if answered else None)
    need = 0 if op.root else NEEDS[op.kind]
    if answered and op.denied:
        return lambda state: state if not permitted(state[1], need) else ILLEGAL
    inner = STEPS[op.kind](op, answered)

    def checked(state):
        value, grant = state
        if not permitted(grant, need):
            return ILLEGAL
        after = inner(value)
        return ILLEGAL if after is ILLEGAL else (after, grant)

    return checked


def _change_step(change, applied):
    """C{applied}: True, False (refused for its precondition) or None (not known)."""
    what = change[0]
    if what == "enable":
        if applied is False:  # refused: only a root user may change auth while it is on
            return lambda state: state if state[1][0] else ILLEGAL
        return lambda state: (state[0], (True, state[1][1], state[1][2]))
    if what == "grant":
        bits = change[1]
        return lambda state: (state[0], (state[1][0], bits, state[1][2]))
    if what == "revoke":
        index, cleared = 1, 0
    elif change[1]:
        return lambda state: (state[0], (state[1][0], state[1][1], True))
    else:
        index, cleared = 2, False

    def revoke(state):
        grant = state[1]
        held = bool(grant[index])
        if applied is None or applied is held:
            # Not known: it applied if held, else it was refused (no change).
            return (state[0], grant[:index] + (cleared,) + grant[index + 1:])
        return ILLEGAL

    return revoke
