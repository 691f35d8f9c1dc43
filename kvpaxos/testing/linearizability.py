"""
A linearizability checker for key-value histories (Wing & Gong's search with
Lowe's memoization, as in porcupine).

A history is a list of L{Operation}s as clients saw them: what was asked,
what came back, and when the request was sent and answered.  L{check} decides
whether some total order of the operations, consistent with real time (an
operation that returned before another was called comes first), explains
every answer under a sequential register model per key
(L{kvpaxos.testing.registers}), or, for a key whose history holds auth
changes or refused requests, the register under permissions
(L{kvpaxos.testing.authmodel}).

Keys are independent in a key-value map (linearizability is compositional,
Herlihy & Wing 1990 §3.3), so each key's sub-history is checked on its own.

Cost: a linearizable history is found nearly greedily.  Proving a history
illegal may visit every set of timed-out writes that could still take
effect, exponential in how many are pending at once; C{time_limit_s} bounds
it (the answer is then "unknown").

Transactions and ranges are checked by projection onto the keys they touch
(L{project_txn}, L{project_range}): a write-only transaction becomes one
put or delete per key, all with the transaction's interval, and a range read
becomes one get per key of the range.  Projection is sound for what it
checks: a history linearizable as a whole has every projection
linearizable, so an illegal projection is a real violation.  It does not
check atomicity across keys (two keys of one transaction taking effect at
different points); the node simulator checks that separately, comparing
every acknowledged result and every range's records with the chosen log
replayed through the real state machine.  A multi-key model would check
both at once, at a search cost exponential in the keys; the simulator's
conditional transactions are single-key compare-and-swaps, which the
register model has (C{cas}).

This module is pure: no I/O, no wall clock except the injected C{clock}, no
randomness, no set iteration on a decision path.  Nothing in the node imports
it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from kvpaxos.testing import authmodel
from kvpaxos.testing.registers import ILLEGAL as _ILLEGAL
from kvpaxos.testing.registers import STEPS as _STEPS
from kvpaxos.testing.registers import mark as _mark

KINDS = ("get", "put", "delete", "append", "cas", "auth")

#: How many search steps pass between two looks at the clock.
CLOCK_STEPS = 256
#: How many operations of the longest linearizable prefix a window shows.
WINDOW_PREFIX_OPS = 3


@dataclass(frozen=True)
class Operation:
    """
    One client request and what the client learned of it.

    @ivar client: Who asked (only shown in explanations).
    @ivar kind: C{"get"}, C{"put"}, C{"delete"}, C{"append"}, C{"cas"}, or
        C{"auth"} (a change of the permissions, L{authmodel.CHANGES}).
    @ivar key: The key operated on.
    @ivar input: The value written (put, append); C{None} for get and delete;
        for cas the pair C{(expected, new)}, C{expected=None} meaning "absent";
        for auth the change.
    @ivar output: get: the value read, C{None} meaning absent; cas: C{True}
        if it swapped; append: the new value, or C{None} if not reported;
        put and delete: C{None}; auth: C{True} if it applied, C{False} if
        refused for its precondition.  Ignored when C{ret} is C{None}.
    @ivar call: When the request was sent.
    @ivar ret: When the answer came, or C{None} if none did (a timeout): the
        operation may have taken effect at any time after C{call}, or never.
    @ivar denied: Answered PERMISSION_DENIED: it must not have been
        permitted, and changed nothing (L{authmodel}).
    @ivar root: Its user may do everything: no permission is checked.
    """

    client: int
    kind: str
    key: bytes
    input: object = None
    output: object = None
    call: float = 0
    ret: Optional[float] = 0
    denied: bool = False
    root: bool = False

    def __post_init__(self) -> None:
        # Caller misuse: a malformed history, not a linearizability verdict.
        if self.kind not in KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before its call ({self.call})")
        if self.kind == "cas" and not (isinstance(self.input, tuple) and len(self.input) == 2):
            raise ValueError("cas input must be the pair (expected, new)")
        if self.kind == "auth":
            authmodel.check_change(self.input)

    def describe(self) -> str:
        """Return one line for a human: interval, client, request and answer."""
        ret = "?" if self.ret is None else f"{self.ret:g}"
        if self.kind == "cas":
            request = f"cas {_show(self.input[0])} -> {_show(self.input[1])}"
        elif self.kind in ("put", "append", "auth"):
            request = f"{self.kind} {_show(self.input)}"
        else:
            request = self.kind
        if self.ret is None:
            answer = " (timed out)"
        elif self.denied:
            answer = " => PERMISSION_DENIED"
        elif self.kind == "auth":
            answer = " => applied" if self.output else " => refused"
        elif self.kind in ("get", "cas") or (self.kind == "append" and self.output is not None):
            answer = f" => {_show(self.output)}"
        else:
            answer = ""
        return f"[{self.call:g}, {ret}] client {self.client}: {request}{answer}"


def _show(value: object) -> str:
    return "absent" if value is None else repr(value)


def _show_state(state: object) -> str:
    return authmodel.show(state) if isinstance(state, tuple) else _show(state)


@dataclass(frozen=True)
class Result:
    """
    The verdict of L{check}.

    @ivar outcome: C{"ok"} (linearizable), C{"illegal"} (no linearization
        exists) or C{"unknown"} (the time limit ran out first).
    @ivar key: The offending key when illegal; the key being checked when the
        time ran out; C{None} when ok.
    @ivar window: When illegal, the operations around the first point where
        no linearization exists: the last few of one longest linearizable
        prefix and every operation overlapping the first operation that could
        not be linearized after it (C{frontier}), by call time.
    @ivar frontier: That first operation, when illegal.
    @ivar value: The key's value after that longest prefix, when illegal.
    @ivar linearized: How many operations that longest prefix holds.
    @ivar operations: How many operations were looked at (the key's, when
        illegal or unknown; the whole history's when ok).
    """

    outcome: str
    key: Optional[bytes] = None
    window: list = field(default_factory=list)
    frontier: Optional[Operation] = None
    value: Optional[bytes] = None
    linearized: int = 0
    operations: int = 0

    def explain(self) -> str:
        """Return a multi-line account of the verdict for a human."""
        if self.outcome == "ok":
            return f"ok: all {self.operations} operations are linearizable"
        if self.outcome == "unknown":
            return (
                f"unknown: the time limit ran out while checking key {self.key!r} "
                f"({self.operations} operations); no verdict"
            )
        lines = [
            f"illegal: the {self.operations} operations on key {self.key!r} have no linearization",
            f"a longest linearizable prefix holds {self.linearized} operations "
            f"and leaves the value {_show_state(self.value)};",
            f"no order lets this operation follow it: {self.frontier.describe()}",
            "operations around that point, by call time:",
        ]
        lines.extend("  " + op.describe() for op in self.window)
        return "\n".join(lines)


def check(
    history: Sequence[Operation],
    time_limit_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """
    Decide whether a key-value history is linearizable.

    Every key starts absent.  Keys are checked in the order they first
    appear in C{history}; the first illegal one is reported.  Operations that
    touch in time (one returns at the instant another is called) count as
    concurrent: equal timestamps cannot order them.

    @param history: The operations, in any order.
    @param time_limit_s: Give up after this many seconds of C{clock}.
    @param clock: Returns seconds; looked at before each key and every
        L{CLOCK_STEPS} search steps.
    @return: A L{Result}; C{"unknown"} if the time ran out, never C{"ok"}
        unless every key was checked in full.
    """
    start = clock()

    def expired() -> bool:
        return clock() - start > time_limit_s

    by_key: dict[bytes, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    for key, ops in by_key.items():
        if expired():
            return Result("unknown", key=key, operations=len(ops))
        result = _check_key(key, ops, expired)
        if result is not None:
            return result
    return Result("ok", operations=len(history))


def _deadlines(ops: list[Operation]) -> list[tuple[Operation, float, int]]:
    """
    Return C{(op, deadline, kind)} for every operation the search needs:
    kind 1 for an answered one (it must be linearized by its return), kind 2
    for a timed-out one that may be dropped (as never taking effect) once
    the search passes its deadline.

    A timed-out get changes nothing and is left out.  A timed-out write W
    leaves a mark (L{_mark}).  Its observers are the answered operations,
    returning at or after W's call, that saw a marked value (get output,
    reported append output, cas expected value), and the answered cas that
    failed.  W's deadline is the last observer's return (W is left out if it
    has none), or +infinity if its mark is unknown or a timed-out cas
    expects a marked value.

    Why W linearized after its deadline is as good as never: every observer
    then comes before W.  Between W and the next put or delete the value is
    marked, so every answered operation there is an unreported append (any
    other would be an observer), and every timed-out one had no visible
    effect (a timed-out cas there fails).  Remove W and those timed-out
    operations: the unreported appends check nothing, and from the next put
    or delete on every value is as before.  (A refused operation or an
    auth change observes no value; L{authmodel}.)
    """
    answered = [op for op in ops if op.ret is not None and not op.denied]
    seen = [(op.output, op.ret) for op in answered if op.kind == "get"]
    appended = [op for op in answered if op.kind == "append" and op.output is not None]
    seen += [(op.output, op.ret) for op in appended]
    seen += [(op.input[0], op.ret) for op in answered if op.kind == "cas"]
    failed_cas = [op.ret for op in answered if op.kind == "cas" and not op.output]
    hoped = [op.input[0] for op in ops if op.kind == "cas" and op.ret is None]
    has_appends = any(op.kind == "append" for op in ops)
    deadlines = []
    for op in ops:
        if op.ret is not None:
            deadlines.append((op, op.ret, 1))
            continue
        if op.kind == "get":
            continue
        mark = _mark(op, has_appends)
        if mark is None or any(mark(value) for value in hoped):
            deadlines.append((op, math.inf, 2))
            continue
        late = [ret for value, ret in seen if ret >= op.call and mark(value)]
        late += [ret for ret in failed_cas if ret >= op.call]
        if late:
            deadlines.append((op, max(late), 2))
    return deadlines


def _check_key(key: bytes, all_ops: list[Operation], expired) -> Optional[Result]:
    """
    Search one key's linearizations; return C{None} if one exists, else an
    illegal or unknown L{Result}.

    The search (porcupine's C{checkSingle}): the history is a doubly linked
    list of call and return entries in time order.  Walking from the head, a
    call entry is tried as the next linearization point; if the model
    allows it and (linearized set, value) was not seen before, the operation
    is linearized and its two entries are lifted out of the list.  Reaching
    a return entry means that operation's deadline passed unlinearized, so
    the last choice is undone and the walk resumes after it.  A timed-out
    operation's entry at its deadline (L{_deadlines}) instead drops it, a
    step that changes no value; at +infinity it means every answered
    operation is linearized, and the rest may never happen.
    """
    needed = _deadlines(all_ops)
    ops = [op for op, _, _ in needed]
    ends = [end for _, end, _ in needed]
    permissions = authmodel.uses_auth(all_ops)
    step_of = authmodel.step if permissions else (lambda op, answered: _STEPS[op.kind](op, answered))
    steps = [step_of(op, op.ret is not None) for op in ops]
    # A read-only operation legal now can be linearized now without loss of
    # generality: in any linearization from here that puts it later, moving
    # it here changes no value and keeps real-time order (its call passed).
    # So it is a forced move, never a choice to revisit.
    read_only = [
        op.kind == "get" or (op.ret is not None and (
            (op.kind == "cas" and not op.output) or authmodel.read_only(op)))
        for op in ops
    ]
    entries = [(op.call, 0, i) for i, op in enumerate(ops)]
    entries += [(end, kind, i) for i, (_, end, kind) in enumerate(needed)]
    entries.sort()
    count = len(entries)
    head, tail = count, count + 1
    op_of = [i for _, _, i in entries]
    kind_of = [kind for _, kind, _ in entries]
    match = [0] * count  # call entry <-> its return or deadline entry
    call_entry = {}
    for e, (_, kind, i) in enumerate(entries):
        if kind == 0:
            call_entry[i] = e
        else:
            match[e], match[call_entry[i]] = call_entry[i], e
    nxt = [tail] * (count + 2)
    prv = [head] * (count + 2)
    order = [head, *range(count), tail]
    for a, b in zip(order, order[1:]):
        nxt[a], prv[b] = b, a

    def lift(c: int) -> None:
        """Take call entry c and its return out of the list."""
        r = match[c]
        nxt[prv[c]] = nxt[c]
        prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    value = authmodel.INITIAL if permissions else None
    linearized = 0  # bitset of ops indexes, linearized or dropped
    trail = None  # (op index, trail before it): the linearization so far
    stack = []  # (call entry, value before, trail before, forced)
    seen = set()  # (linearized, value) pairs already explored
    best = (-1, None, None, None)  # (stack size, trail, value, frontier op index)
    budget = CLOCK_STEPS
    e = nxt[head]
    while nxt[head] != tail:
        budget -= 1
        if not budget:
            if expired():
                return Result("unknown", key=key, operations=len(all_ops))
            budget = CLOCK_STEPS
        kind = kind_of[e]
        if kind == 1:
            if len(stack) > best[0]:
                best = (len(stack), trail, value, op_of[e])
        else:
            i = op_of[e]
            if kind == 0:
                c, after, forced = e, steps[i](value), read_only[i]
            elif ends[i] == math.inf:
                return None
            else:
                # A timed-out operation's deadline: drop it, changing nothing.
                c, after, forced = match[e], value, True
            if after is not _ILLEGAL:
                state = (linearized | (1 << i), after)
                if state not in seen:
                    seen.add(state)
                    stack.append((c, value, trail, forced))
                    linearized, value = state
                    if kind == 0:
                        trail = (i, trail)
                    lift(c)
                    e = nxt[head]
                    continue
            if after is _ILLEGAL or not forced:
                e = nxt[e]
                continue
            # A forced move into a state already explored: a dead end.
        # A dead end: undo the last choice (and the forced moves after it),
        # then try what follows it.
        forced = True
        while forced and stack:
            e, value, trail, forced = stack.pop()
            linearized ^= 1 << op_of[e]
            # Put the return back, then the call: the reverse of lift.
            r = match[e]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[e]] = e
            prv[nxt[e]] = e
        if forced:
            break
        e = nxt[e]
    else:
        return None
    return _illegal(key, ops, all_ops, best)


def _illegal(key: bytes, ops: list[Operation], all_ops: list[Operation], best) -> Result:
    """Build the illegal L{Result} from the longest prefix the search saw."""
    _, trail, value, frontier_index = best
    assert frontier_index is not None, "a failed search passed no return"
    frontier = ops[frontier_index]
    prefix = []  # op indexes, last linearized first
    while trail is not None:
        prefix.append(trail[0])
        trail = trail[1]
    chosen = set(prefix[:WINDOW_PREFIX_OPS])
    for i, op in enumerate(ops):
        if op.call <= frontier.ret and (op.ret is None or op.ret >= frontier.call):
            chosen.add(i)
    window = [ops[i] for i in sorted(chosen, key=lambda i: (ops[i].call, i))]
    return Result(
        "illegal",
        key=key,
        window=window,
        frontier=frontier,
        value=value,
        linearized=len(prefix),
        operations=len(all_ops),
    )


def project_range(client: int, keys: Sequence[bytes], values: Sequence, call: float,
                  ret: float) -> list[Operation]:
    """
    Return the gets a linearizable range read of C{keys} stands for: one per
    key, C{values[i]} the value it returned for C{keys[i]} (C{None}: absent),
    all with the read's interval.
    """
    return [
        Operation(client, "get", key, output=value, call=call, ret=ret)
        for key, value in zip(keys, values)
    ]


def project_txn(client: int, txn, answer, call: float, ret: Optional[float]) -> list[Operation]:
    """
    Return the per-key operations of an unconditional transaction C{txn}
    (a L{kvpaxos.kv.commands.Txn} with no compares): a put per C{Put}, a
    delete per single-key C{DeleteRange}, and, when it was answered
    (C{answer}, its C{TxnResult}), a get per single-key C{Range} with what
    it read.  C{ret} None: not answered (outcome unknown).

    @raise ValueError: C{txn} has compares, or ranges over several keys
        (the register model cannot express them).
    """
    if txn.compares or txn.failure:
        raise ValueError("only unconditional transactions project onto keys")
    ops = []
    responses = answer.responses if answer is not None and ret is not None else ()
    for i, op in enumerate(txn.success):
        kind = type(op).__name__
        if getattr(op, "end", None) is not None:
            raise ValueError("only single-key ranges and deletes project onto keys")
        if kind == "Put":
            ops.append(Operation(client, "put", op.key, input=op.value, call=call, ret=ret))
        elif kind == "DeleteRange":
            ops.append(Operation(client, "delete", op.key, call=call, ret=ret))
        elif responses:
            kvs = responses[i].kvs
            ops.append(Operation(client, "get", op.key, output=kvs[0].value if kvs else None,
                                 call=call, ret=ret))
    return ops
