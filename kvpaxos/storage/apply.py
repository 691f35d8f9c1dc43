"""
Committed slots applied to a store's transaction view: L{apply_committed},
the one slot loop that every L{INodeStore} provider runs inside its commit.

What a command does lives in L{kvpaxos.kv.machine}; how a view keeps it
(an LMDB write transaction, a journaled in-memory state) lives in the
providers.  Nothing here opens, commits or rolls back a transaction, nor
stores the applied index: the caller does, in the same transaction as the
view's changes.
"""

from __future__ import annotations

from kvpaxos.kv import machine
from kvpaxos.paxos.messages import Batch


def apply_committed(view, committed, applied: int, limits, decoded=None) -> tuple[int, list]:
    """
    Apply the chosen C{(slot, value)} pairs of C{committed} to C{view}, in
    order: each L{Batch} through L{machine.apply_batch} with its slot; a
    no-op or a configuration change only advances the applied slot.

    @param view: the transaction view L{machine.apply_batch} expects.
    @param applied: the slot through which C{view} has applied.
    @param limits: the session table's bounds (L{kvpaxos.kv.sessions}).
    @param decoded: as for L{machine.apply_batch}: encoded commands mapped
        to their already checked requests, or C{None}.
    @return: C{(applied, results)}: the last slot applied (C{applied} if
        C{committed} is empty) and the C{(Request, result)} of every command
        applied, in order.
    @raise AssertionError: a slot does not follow the one before it (a
        broken invariant of the caller).  C{view} may hold the slots
        applied before it; the caller discards the transaction.
    """
    results: list = []
    for slot, value in committed:
        # Invariant: slots apply one by one, each exactly once (the caller
        # keeps the applied index in the same transaction as the view).
        assert slot == applied + 1, f"applying slot {slot} after {applied}"
        if type(value) is Batch:
            results.extend(machine.apply_batch(view, value.commands, slot, limits, decoded))
        applied = slot
    return applied, results
