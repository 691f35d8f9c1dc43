"""
How commands apply to the replicated state, independent of where it lives.
The byte formats of that state (a key's record, a session, the snapshot)
are L{kvpaxos.encoding.state}; of the commands, L{kvpaxos.encoding.commands}.

The state: every key's L{KeyValue} record, the store's global C{revision}
(0 when empty; each applied request that changes data adds exactly one, and
every write of that request carries it, as in etcd), and the session table
(L{kvpaxos.kv.sessions}).

A storage provider hands L{apply_batch} a transaction view (an
L{kvpaxos.storage.interfaces.IStateView}), inside the same atomic write that
records the applied index, with:

  - C{get(key) -> KeyValue | None}, C{put(kv)}, C{delete(key)};
  - C{write(key, value, revision, want_prev) -> (existed, prev)}: what
    L{write_record} does (a view may do it on its stored bytes, faster);
  - the history (L{kvpaxos.kv.history}): C{write_with_event(key, value,
    revision, index, want_prev)} (a C{write} that also records the put's
    event, the C{index}th of its revision), C{delete_with_event(key,
    revision, index) -> prev} (deletes and records the event, if the key
    is there), C{compacted_revision()}, C{compact_history(revision)};
  - C{scan(start, stop)}: the records with C{start <= key < stop} (C{stop}
    None: no bound) in key order; the caller does not write while it runs;
  - C{revision()}, C{set_revision(n)};
  - the session calls listed in L{kvpaxos.kv.sessions}.

Determinism: apply reads nothing but the view, the request and the slot;
no clock, no randomness, no iteration over unordered containers.  Every
replica that applies the same batches at the same slots holds the same
state (and the same snapshot bytes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Optional

from kvpaxos.encoding.commands import decode_request
from kvpaxos.kv import leases, sessions
from kvpaxos.kv.auth_apply import AuthGuard, apply_auth
from kvpaxos.kv.compaction import apply_compact
from kvpaxos.kv.commands import (
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
    CorruptCommand,
    DeleteRange,
    DeleteResponse,
    KeyValue,
    Op,
    Put,
    PutResponse,
    Range,
    RangeResult,
    Request,
    Result,
    TxnResult,
)
from kvpaxos.kv.sessions import DEFAULT_LIMITS, SessionLimits


def apply(view, request: Request, slot: int, limits: SessionLimits = DEFAULT_LIMITS,
          guard: Optional[AuthGuard] = None):
    """
    Apply one decoded request, chosen at C{slot}, to C{view}; return its
    result: L{Result} (put, delete, append), L{TxnResult},
    L{kvpaxos.kv.commands.SessionOpened}, L{kvpaxos.kv.auth.AuthChanged},
    or, changing nothing, a saved result,
    L{kvpaxos.kv.commands.StaleSequence} /
    L{kvpaxos.kv.commands.SessionExpired} (see L{kvpaxos.kv.sessions}) or
    L{kvpaxos.kv.auth.AuthRefused} (the request's user may not, or an auth
    command's precondition failed).

    @param guard: the batch's L{AuthGuard} over C{view} (None: one for
        this request alone).
    """
    answer = sessions.check(view, request)
    if answer is not None:
        return answer
    if guard is None:
        guard = AuthGuard(view)
    op = request.op
    if op is Op.AUTH:
        return apply_auth(view, request, guard)
    refused = guard.refusal(request)
    if refused is not None:
        return refused
    if op is Op.OPEN_SESSION:
        return sessions.open_session(view, slot, limits)
    if op is Op.COMPACT:
        return apply_compact(view, request)
    if op is Op.LEASE_GRANT:
        return leases.apply_grant(view, request)
    if op is Op.LEASE_REVOKE or op is Op.LEASE_EXPIRE:
        return leases.apply_revoke(view, request)
    if op is Op.TXN:
        result = apply_txn(view, request.txn)
        if type(result) is leases.LeaseRefused:
            return result  # nothing applied: not the session's answer
    else:
        if request.lease:
            refused = leases.lease_refusal(view, (request.lease,))
            if refused is not None:
                return refused
        result = _APPLY[op](view, request)
    sessions.record(view, request, slot, result)
    return result


def apply_batch(
    view, commands: Iterable[bytes], slot: int, limits: SessionLimits = DEFAULT_LIMITS,
    decoded: Optional[Mapping[bytes, Request]] = None,
) -> list:
    """
    Apply every command of the batch chosen at C{slot}, in order; return
    each decoded request with its result.  Sessions unused for too long
    expire first.  A command that does not decode is skipped on every
    replica alike (it was validated before it was proposed, so only a
    misbehaving peer can put one in the log).

    @param decoded: commands already decoded, by their encoding (the node
        encoded them itself from these checked requests): they are not
        decoded again.
    """
    sessions.expire(view, slot, limits)
    guard = AuthGuard(view)
    results = []
    for data in commands:
        request = decoded.get(data) if decoded else None
        if request is None:
            try:
                request = decode_request(data)
            except CorruptCommand:
                continue
        results.append((request, apply(view, request, slot, limits, guard)))
    return results


# --- single-key commands -----------------------------------------------------


def write_record(view, key: bytes, value: bytes, revision: int, want_prev: bool) -> tuple:
    """
    Store C{value} under C{key} at C{revision} (version 1 and created now,
    or the next version of the record there); return C{(existed, prev)}:
    whether a record was there, and that record if C{want_prev} (a view
    may return it anyway).  The generic form of a view's C{write}, for
    views over other stores.
    """
    prev = view.get(key)
    if prev is None:
        view.put(KeyValue(key, value, 1, revision, revision))
    else:
        view.put(KeyValue(key, value, prev.version + 1, prev.create_revision, revision))
    return prev is not None, prev


def _put(view, request: Request) -> Result:
    revision = view.revision() + 1
    existed, prev = view.write_with_event(request.key, request.value, revision, 0, request.prev_kv)
    leases.attach_put(view, request.key, request.lease)
    view.set_revision(revision)
    return Result(existed, None, revision, prev if request.prev_kv else None)


def _delete(view, request: Request) -> Result:
    revision = view.revision() + 1
    prev = view.delete_with_event(request.key, revision, 0)
    if prev is None:
        revision -= 1
    else:
        view.lease_detach(request.key)
        view.set_revision(revision)
    return Result(prev is not None, None, revision, prev if request.prev_kv else None)


def _append(view, request: Request) -> Result:
    revision = view.revision() + 1
    prev = view.get(request.key)
    value = (prev.value if prev is not None else b"") + request.value
    view.write_with_event(request.key, value, revision, 0, False)
    view.set_revision(revision)
    return Result(prev is not None, value, revision, prev if request.prev_kv else None)


_APPLY = {Op.PUT: _put, Op.DELETE: _delete, Op.APPEND: _append}


# --- transactions --------------------------------------------------------------


#: The response of every put that did not ask for its previous record
#: (immutable, so shared).
_PLAIN_PUT = PutResponse(None)


def compare(view, condition: Compare) -> bool:
    """
    Whether C{condition} holds in C{view}.  A missing key has version,
    create and mod revision 0 and does not exist; any VALUE compare on it
    is false (etcd: a missing value equals nothing and differs from nothing).
    """
    kv = view.get(condition.key)
    target = condition.target
    operand = condition.operand
    if target is CompareTarget.VALUE:
        if kv is None:
            return False
        actual = kv.value
    elif target is CompareTarget.EXISTS:
        actual, operand = int(kv is not None), int(operand)
    elif kv is None:
        actual = 0
    elif target is CompareTarget.VERSION:
        actual = kv.version
    elif target is CompareTarget.CREATE_REVISION:
        actual = kv.create_revision
    else:
        actual = kv.mod_revision
    relation = condition.result
    if relation is CompareResult.EQUAL:
        return actual == operand
    if relation is CompareResult.NOT_EQUAL:
        return actual != operand
    if relation is CompareResult.LESS:
        return actual < operand
    return actual > operand


def apply_txn(view, txn) -> TxnResult:
    """
    Apply transaction C{txn}: its C{success} ops if every compare holds,
    else its C{failure} ops, in order, each seeing the writes before it.
    If any op changed data the revision grows by one, and every write and
    every response carries it.
    """
    succeeded = all(compare(view, c) for c in txn.compares)
    branch = txn.success if succeeded else txn.failure
    refused = leases.lease_refusal(view, leases.branch_leases(branch))
    if refused is not None:
        return refused
    before = view.revision()
    revision = before + 1
    events = 0  # the index of the next event of this revision
    responses = []
    for op in branch:
        kind = type(op)
        if kind is Put:
            _, prev = view.write_with_event(op.key, op.value, revision, events, op.prev_kv)
            leases.attach_put(view, op.key, op.lease)
            events += 1
            responses.append(PutResponse(prev) if op.prev_kv else _PLAIN_PUT)
        elif kind is DeleteRange:
            doomed = [kv.key for kv in _scan(view, op.key, op.end)]
            prevs = []
            for key in doomed:
                prevs.append(view.delete_with_event(key, revision, events))
                view.lease_detach(key)
                events += 1
            responses.append(DeleteResponse(len(doomed), tuple(prevs) if op.prev_kv else ()))
        else:
            responses.append(read_range(view, op))
    if events:
        view.set_revision(revision)
    else:
        revision = before
    responses = tuple(
        replace(r, revision=revision) if type(r) is RangeResult else r for r in responses
    )
    return TxnResult(succeeded, responses, revision)


# --- range reads -----------------------------------------------------------------


def _scan(view, start: bytes, end: Optional[bytes]):
    """Yield the records in C{start}..C{end} (conventions of L{Range})."""
    if end is None:
        kv = view.get(start)
        if kv is not None:
            yield kv
        return
    if end == TO_THE_END:
        yield from view.scan(start, None)
    elif start < end:
        yield from view.scan(start, end)


def read_range(view, query: Range, revision: Optional[int] = None) -> RangeResult:
    """
    Return the L{RangeResult} of C{query} over C{view}: records in key
    order, at most C{query.limit} (0: no limit), C{count} all in range,
    C{more} when the limit cut some off; values left out if C{keys_only};
    no records at all if C{count_only}.  C{revision}: the view's (pass it
    when it is known, for many reads over one view).
    """
    kvs = []
    count = 0
    limit = query.limit
    for kv in _scan(view, query.key, query.end):
        count += 1
        if query.count_only or (limit and len(kvs) >= limit):
            continue
        kvs.append(replace(kv, value=b"") if query.keys_only else kv)
    return RangeResult(tuple(kvs), count, len(kvs) < count and not query.count_only,
                       view.revision() if revision is None else revision)
