"""
The sequential specifications the linearizability checker
(L{kvpaxos.testing.linearizability}) searches against, one key at a time.

  - The register: a key's value (bytes, or None for absent) under get,
    put, delete, append and compare-and-swap (L{STEPS}), and the mark a
    write leaves on the value (L{mark}), which lets the checker drop a
    timed-out write once nothing could still have observed it.
  - The register under permissions (L{kvpaxos.testing.authmodel}) wraps
    these steps.

A step function, made by C{STEPS[op.kind](op, answered)}, takes the
model's state and returns the state after the operation, or L{ILLEGAL} if
the operation's answer is impossible from that state.  Pure: no I/O, no
clock, no randomness.  Operations are read through their attributes
(C{kind}, C{input}, C{output}) only, so this module imports none of the
checker's.
"""

from __future__ import annotations

from typing import Callable, Optional

#: What a step returns when its operation's answer is impossible from the state.
ILLEGAL = object()


def _get_step(op, answered: bool):
    read = op.output
    return lambda value: value if value == read else ILLEGAL


def _put_step(op, answered: bool):
    written = op.input
    return lambda value: written


def _delete_step(op, answered: bool):
    return lambda value: None


def _append_step(op, answered: bool):
    suffix = op.input
    if not answered or op.output is None:
        return lambda value: (value or b"") + suffix
    reported = op.output
    return lambda value: reported if (value or b"") + suffix == reported else ILLEGAL


def _cas_step(op, answered: bool):
    expected, new = op.input
    if not answered:
        return lambda value: new if value == expected else value
    if op.output:
        return lambda value: new if value == expected else ILLEGAL
    return lambda value: value if value != expected else ILLEGAL


STEPS = {
    "get": _get_step,
    "put": _put_step,
    "delete": _delete_step,
    "append": _append_step,
    "cas": _cas_step,
}


def mark(op, has_appends: bool) -> Optional[Callable[[object], bool]]:
    """
    Return the mark a write leaves on the key's value until the next put or
    delete, as a predicate, or None if it leaves none that can be told.
    """
    if op.kind == "put" and op.input:
        return lambda value: value is not None and value.startswith(op.input)
    if op.kind == "cas" and op.input[1]:
        return lambda value: value is not None and value.startswith(op.input[1])
    if op.kind == "append" and op.input:
        return lambda value: value is not None and op.input in value
    if op.kind == "delete" and not has_appends:
        return lambda value: value is None
    return None
