"""
Conversions between etcd's v3 messages (L{kvpaxos.etcdpb}) and the
commands and results of L{kvpaxos.kv.commands}, for the etcd port
(L{kvpaxos.api.etcd_kv}).

Revisions: etcd's store starts at revision 1, kvpaxos's at 0, so on the
etcd port every revision is kvpaxos's + 1 (L{etcd_revision}); a missing
key's 0 stays 0.  A kvpaxos key's revisions are never 0 (its first write
makes revision 1), so a key's etcd revisions are 0 (missing) or >= 2.

Pure functions: no node, no grpcio context.  A request etcd refuses, or
one asking for what kvpaxos does not serve, raises the refusal
(L{kvpaxos.api.etcd_errors}); what converts is checked by
L{kvpaxos.kv.commands.validate_request} too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvpaxos.api import etcd_errors
from kvpaxos.api.etcd_errors import invalid, refuse, unimplemented
from kvpaxos.api.limits import MAX_TXN_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES
from kvpaxos.kv.commands import (
    MAX_LEASE_ID,
    MAX_LEASE_TTL,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResponse,
    KeyValue,
    Op,
    Put,
    PutResponse,
    Range,
    RangeResult,
    Request,
    Txn,
    TxnResult,
    in_range,
)
from kvpaxos.etcdpb import kv_pb2 as mvccpb
from kvpaxos.etcdpb import rpc_pb2 as pb

#: A sorted or filtered range reads every record of its range at the
#: member, sorts or filters them at the edge, then applies the limit (as
#: etcd does); a range of more keys than this is refused, so that the
#: work and the memory stay bounded.
SORT_RECORDS_MAX = 10_000

_INT64_MAX = (1 << 63) - 1
_SORT_ORDERS = frozenset(pb.RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(pb.RangeRequest.SortTarget.values())


def etcd_revision(revision: int) -> int:
    """A kvpaxos revision as etcd's: + 1, except a missing key's 0."""
    return revision + 1 if revision else 0


def key_value(kv: KeyValue) -> mvccpb.KeyValue:
    """
    C{kv} as an C{mvccpb.KeyValue} (etcd's revisions).  Its C{lease} is 0:
    a record read from the store does not say which lease its key is
    attached to (C{Lease.LeaseTimeToLive} with C{keys} does).
    """
    return mvccpb.KeyValue(key=kv.key, value=kv.value, version=kv.version,
                           create_revision=kv.create_revision + 1, mod_revision=kv.mod_revision + 1)


def _end(range_end: bytes) -> Optional[bytes]:
    """etcd's range_end: empty means the one key; b"\\0" every key from the start on (kvpaxos's too)."""
    return range_end or None


# --- ranges ------------------------------------------------------------------------


@dataclass(frozen=True)
class RangePlan:
    """
    How one etcd C{RangeRequest} is read: C{query}, the node's read; then,
    when C{whole} (a sort or a filter), every record of the range
    (C{query.limit} is L{SORT_RECORDS_MAX} + 1) filtered, sorted and cut
    to C{limit} here; C{strip_values}: values are dropped here (keys only,
    sorted by value: the read brings the values).  C{revision}: the
    revision asked for (0: the newest).
    """

    query: Range
    limit: int
    revision: int
    whole: bool = False
    order: int = pb.RangeRequest.NONE
    target: int = pb.RangeRequest.KEY
    strip_values: bool = False
    filters: tuple = ()


def _effective_order(message) -> int:
    """etcd's rule: a sort target other than the key with no order sorts ascending."""
    if message.sort_order not in _SORT_ORDERS or message.sort_target not in _SORT_TARGETS:
        refuse(etcd_errors.INVALID_SORT_OPTION)
    if message.sort_target != pb.RangeRequest.KEY and message.sort_order == pb.RangeRequest.NONE:
        return pb.RangeRequest.ASCEND
    return message.sort_order


def _filters(message) -> tuple:
    """(field, lowest, highest) of each revision filter set (etcd's revisions; 0: unbounded)."""
    found = []
    for field, low, high in (("mod_revision", message.min_mod_revision, message.max_mod_revision),
                             ("create_revision", message.min_create_revision, message.max_create_revision)):
        if low or high:
            found.append((field, low, high))
    return tuple(found)


def range_plan(message: pb.RangeRequest) -> RangePlan:
    """
    Return the L{RangePlan} of a C{RangeRequest} read.

    @raise _Abort: an empty key or a bad sort option (etcd's errors).
    """
    if not message.key:
        refuse(etcd_errors.EMPTY_KEY)
    order = _effective_order(message)
    limit = max(message.limit, 0)  # etcd: <= 0 is no limit
    filters = _filters(message)
    by_key = message.sort_target == pb.RangeRequest.KEY and order in (pb.RangeRequest.NONE, pb.RangeRequest.ASCEND)
    whole = not message.count_only and (bool(filters) or not by_key)
    keys_only = message.keys_only
    node_keys_only = keys_only and not (whole and message.sort_target == pb.RangeRequest.VALUE)
    query = Range(message.key, _end(message.range_end), SORT_RECORDS_MAX + 1 if whole else limit,
                  node_keys_only, message.count_only)
    return RangePlan(query, limit, max(message.revision, 0), whole, order, message.sort_target,
                     keys_only and whole and not node_keys_only, filters)


_SORT_KEYS = {
    pb.RangeRequest.KEY: lambda kv: kv.key,
    pb.RangeRequest.VERSION: lambda kv: kv.version,
    pb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    pb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    pb.RangeRequest.VALUE: lambda kv: kv.value,
}


def check_revision(plan: RangePlan, result_revision: int) -> None:
    """
    Refuse a read at a revision other than the newest, which the read saw
    (C{result_revision}, kvpaxos's): a later one is etcd's future-revision
    error; an earlier one is not served (kvpaxos keeps no history).
    """
    if plan.revision:
        newest = result_revision + 1
        if plan.revision > newest:
            refuse(etcd_errors.FUTURE_REVISION)
        if plan.revision < newest:
            unimplemented(f"reading at a past revision is not supported yet (asked for {plan.revision}, the "
                          f"newest is {newest}): kvpaxos keeps no history; read with revision 0")


def compact_request(message: pb.CompactionRequest) -> Request:
    """
    The COMPACT command of etcd's C{Compact(N)}: at kvpaxos revision
    C{N - 1}.  etcd's C{Compact(N)} keeps the revisions from C{N} on and
    kvpaxos's C{Compact(r)} the events from C{r} on, and etcd's revisions
    are kvpaxos's + 1.  etcd's 0 (which drops nothing either) is kvpaxos's
    0 too.  A negative C{N} is below any compacted revision etcd can have
    (-1 on a store never compacted): etcd's "compacted", refused here.
    C{physical} needs nothing: a compaction is done when its command
    applies, before the answer.

    One difference is left: a store never compacted, or compacted only at
    kvpaxos's 0, accepts kvpaxos's 0 again and again (it cannot tell the
    two apart), so etcd's C{Compact(0)} and C{Compact(1)} succeed there
    however often they are asked, where etcd refuses a repeat.
    """
    if message.revision < 0:
        refuse(etcd_errors.COMPACTED)
    return Request(Op.COMPACT, compact_revision=max(message.revision - 1, 0))


def range_records(plan: RangePlan, result: RangeResult, bounded: bool = True) -> tuple[list, bool]:
    """
    Return the C{mvccpb.KeyValue}s of C{result} that C{plan} answers with,
    and C{more}: the limit left some out.  A whole range is filtered,
    sorted, then cut to the limit, as etcd does.

    @param bounded: refuse a whole range of more than L{SORT_RECORDS_MAX}
        keys (a read's, refused before anything changed); a transaction's
        range was read whole and its transaction has applied: its size is
        the response's message limit's to refuse.
    @raise _Abort: a sorted or filtered range of more than
        L{SORT_RECORDS_MAX} keys.
    """
    if not plan.whole:
        return [key_value(kv) for kv in result.kvs], result.more
    if bounded and result.count > SORT_RECORDS_MAX:
        etcd_errors.exhausted(f"sorting or filtering a range of {result.count} keys is not supported: at "
                              f"most {SORT_RECORDS_MAX}; narrow the range, or read it in key order")
    records = [key_value(kv) for kv in result.kvs]
    for field, low, high in plan.filters:
        records = [r for r in records
                   if (not low or getattr(r, field) >= low) and (not high or getattr(r, field) <= high)]
    if plan.order != pb.RangeRequest.NONE:
        records.sort(key=_SORT_KEYS[plan.target], reverse=plan.order == pb.RangeRequest.DESCEND)
    more = False
    if plan.limit and len(records) > plan.limit:
        records, more = records[:plan.limit], True
    if plan.strip_values:
        for record in records:
            record.value = b""
    return records, more


# --- puts --------------------------------------------------------------------------


#: Why a put with ignore_lease is refused.
IGNORE_LEASE_UNSUPPORTED = (
    "ignore_lease is not supported: kvpaxos's put sets a key's lease (none, or the one it names) and cannot keep "
    "the lease the key has; put with that lease (lease timetolive ID --keys lists a lease's keys)")


def check_put(message: pb.PutRequest) -> None:
    """
    etcd's checks of a put (an empty key, a value or lease given with
    ignore_value or ignore_lease, a lease no lease can have: etcd's "not
    found"), and refusals of what kvpaxos does not serve (ignore_value,
    ignore_lease).  Whether a lease exists is the state machine's to say.
    """
    if not message.key:
        refuse(etcd_errors.EMPTY_KEY)
    if message.ignore_value and message.value:
        refuse(etcd_errors.VALUE_PROVIDED)
    if message.ignore_lease and message.lease:
        refuse(etcd_errors.LEASE_PROVIDED)
    if not 0 <= message.lease <= MAX_LEASE_ID:
        refuse(etcd_errors.LEASE_NOT_FOUND)  # a negative id: etcd finds no such lease either
    if message.ignore_value:
        unimplemented("ignore_value is not supported: put the value itself")
    if message.ignore_lease:
        unimplemented(IGNORE_LEASE_UNSUPPORTED)
    if len(message.value) > MAX_VALUE_BYTES:
        refuse(etcd_errors.REQUEST_TOO_LARGE)


def put_request(message: pb.PutRequest) -> Request:
    """The PUT of an etcd C{PutRequest} checked by L{check_put}, with its lease (0: none)."""
    return Request(Op.PUT, message.key, message.value, prev_kv=message.prev_kv, lease=message.lease)


# --- leases ------------------------------------------------------------------------


def check_grant(message: pb.LeaseGrantRequest) -> None:
    """
    etcd's check of a grant (a TTL over etcd's C{MaxLeaseTTL}: "too large
    lease TTL"; one under the minimum, negative too, the node raises as
    etcd does), and kvpaxos's of its id (0: the member picks one; a
    negative one is INVALID_ARGUMENT: kvpaxos's ids are 1 to 2**63 - 1).
    """
    if message.TTL > MAX_LEASE_TTL:
        refuse(etcd_errors.LEASE_TTL_TOO_LARGE)
    if message.ID < 0:
        invalid(f"a lease ID must be 0 (the member picks one) or from 1 to {MAX_LEASE_ID}, not {message.ID}")


# --- transactions ------------------------------------------------------------------

_RESULTS = {
    pb.Compare.EQUAL: CompareResult.EQUAL,
    pb.Compare.NOT_EQUAL: CompareResult.NOT_EQUAL,
    pb.Compare.LESS: CompareResult.LESS,
    pb.Compare.GREATER: CompareResult.GREATER,
}
_TARGETS = {
    pb.Compare.VERSION: (CompareTarget.VERSION, "version"),
    pb.Compare.CREATE: (CompareTarget.CREATE_REVISION, "create_revision"),
    pb.Compare.MOD: (CompareTarget.MOD_REVISION, "mod_revision"),
    pb.Compare.VALUE: (CompareTarget.VALUE, "value"),
}
#: A compare no key satisfies: a version is never below 0.
_NEVER = CompareTarget.VERSION, CompareResult.LESS, 0


def compare_from_etcd(message: pb.Compare) -> Optional[Compare]:
    """
    Return the kvpaxos L{Compare} that holds exactly when etcd's compare
    C{message} holds, or None when it holds for every key (it is left out
    of the conjunction).

    The operand is the C{target_union} field of the target; another or
    none set means 0 (or empty), as etcd reads it.  A revision operand is
    etcd's: a key's etcd revision is 0 (missing) or kvpaxos's + 1 >= 2,
    so an operand X >= 2 is kvpaxos's X - 1 and 0 is 0; operand 1 lies
    between every key's values (missing: 0 < 1; present: >= 2 > 1), and
    a negative operand (as a negative version) lies below them all: then
    LESS and GREATER become an existence test on kvpaxos's revision 0, and
    EQUAL and NOT_EQUAL (or LESS and GREATER of a negative operand) hold
    for no key or for every one.

    @raise _Abort: an empty key, a LEASE target or a range_end (not
        served), an unknown target or result.
    """
    if not message.key:
        refuse(etcd_errors.EMPTY_KEY)
    if message.range_end:
        unimplemented("a compare over a range of keys (range_end) is not supported yet: compare each key")
    if message.target == pb.Compare.LEASE:
        unimplemented("LEASE compares are not supported: kvpaxos's transactions cannot compare a key's lease")
    if message.target not in _TARGETS or message.result not in _RESULTS:
        invalid(f"unknown compare target {message.target} or result {message.result}")
    target, field = _TARGETS[message.target]
    result = _RESULTS[message.result]
    which = message.WhichOneof("target_union")
    if target is CompareTarget.VALUE:
        operand = message.value if which == "value" else b""
        return Compare(message.key, target, result, operand)
    operand = getattr(message, field) if which == field else 0
    # A key's version is 0 (missing) or >= 1, the same numbers as etcd's.
    lowest_present = 1 if target is CompareTarget.VERSION else 2
    if operand == 0 or operand >= lowest_present:
        if target is not CompareTarget.VERSION and operand:
            operand -= 1
        return Compare(message.key, target, result, operand)
    # 0 < operand < lowest_present (a revision operand 1), or operand < 0.
    above_missing = operand > 0  # a missing key's 0 is below the operand
    if result is CompareResult.EQUAL:
        holds = False
    elif result is CompareResult.NOT_EQUAL:
        holds = True
    elif result is CompareResult.LESS:
        if above_missing:
            return Compare(message.key, target, CompareResult.EQUAL, 0)  # only a missing key is below
        holds = False
    else:  # GREATER
        if above_missing:
            return Compare(message.key, target, CompareResult.GREATER, 0)  # every present key is above
        holds = True
    if holds:
        return None
    return Compare(message.key, *_NEVER)


def _range_op(message: pb.RangeRequest) -> Range:
    """
    A transaction's range: at no revision but the transaction's own.  One
    sorted or filtered (L{RangePlan.whole}) is read whole, with values
    (L{txn_response} sorts, filters and cuts it as a read's range is):
    what such a range answers, etcd's C{WithFirstCreate} of a lock's owner
    say, depends on every key in it.
    """
    plan = range_plan(message)
    if message.revision > 0:
        unimplemented("a range at a given revision inside a transaction is not supported yet: use revision 0")
    if plan.whole:
        return Range(message.key, _end(message.range_end), 0, plan.query.keys_only, False)
    return plan.query


def _txn_op(message: pb.RequestOp):
    which = message.WhichOneof("request")
    if which == "request_put":
        put = message.request_put
        check_put(put)
        return Put(put.key, put.value, put.prev_kv, put.lease)
    if which == "request_delete_range":
        delete = message.request_delete_range
        if not delete.key:
            refuse(etcd_errors.EMPTY_KEY)
        return DeleteRange(delete.key, _end(delete.range_end), delete.prev_kv)
    if which == "request_range":
        return _range_op(message.request_range)
    if which == "request_txn":
        unimplemented("nested transactions (request_txn) are not supported yet")
    refuse(etcd_errors.KEY_NOT_FOUND)  # etcd's answer to an empty op


def _check_duplicates(ops: tuple) -> None:
    """etcd's rule: a branch may not put one key twice, nor put a key inside a range it deletes."""
    puts = set()
    deletes = [(op.key, op.end) for op in ops if type(op) is DeleteRange]
    for op in ops:
        if type(op) is Put:
            if op.key in puts or any(in_range(op.key, start, end) for start, end in deletes):
                refuse(etcd_errors.DUPLICATE_KEY)
            puts.add(op.key)


def txn_from_etcd(message: pb.TxnRequest) -> Request:
    """
    Return the TXN L{Request} of an etcd C{TxnRequest}, unchecked by
    L{kvpaxos.kv.commands.validate_request} (the caller checks).

    @raise _Abort: etcd's errors (too many operations, an empty key, a
        duplicate key, a negative lease, a request over the size limit) and
        the refusals of what is not served.
    """
    if max(len(message.compare), len(message.success), len(message.failure)) > MAX_TXN_OPS:
        refuse(etcd_errors.TOO_MANY_OPS)
    if message.ByteSize() > MAX_TXN_BYTES:
        refuse(etcd_errors.REQUEST_TOO_LARGE)
    for compare in message.compare:
        if not compare.key:
            refuse(etcd_errors.EMPTY_KEY)
    success = tuple(_txn_op(op) for op in message.success)
    failure = tuple(_txn_op(op) for op in message.failure)
    _check_duplicates(success)
    _check_duplicates(failure)
    compares = tuple(c for c in (compare_from_etcd(m) for m in message.compare) if c is not None)
    return Request(Op.TXN, txn=Txn(compares, success, failure))


def txn_response(result: TxnResult, header: pb.ResponseHeader,
                 request: Optional[pb.TxnRequest] = None) -> pb.TxnResponse:
    """
    The C{TxnResponse} of C{result}.  Each inner response's header carries
    the revision etcd gives it: before the transaction's first change, the
    revision it started from; from its first change on (a put, or a delete
    that deleted something), the revision it made.  Records are never cut
    (the caller refuses a response over the message limit).
    """
    final = result.revision + 1
    changed = any(type(r) is PutResponse or (type(r) is DeleteResponse and r.deleted)
                  for r in result.responses)
    begin = final - 1 if changed else final
    responses = []
    changed_yet = False
    for response in result.responses:
        kind = type(response)
        if kind is PutResponse:
            changed_yet = True
            prev = None if response.prev is None else key_value(response.prev)
            responses.append(pb.ResponseOp(response_put=pb.PutResponse(
                header=pb.ResponseHeader(revision=begin + 1), prev_kv=prev)))
        elif kind is DeleteResponse:
            changed_yet = changed_yet or bool(response.deleted)
            responses.append(pb.ResponseOp(response_delete_range=pb.DeleteRangeResponse(
                header=pb.ResponseHeader(revision=begin + changed_yet), deleted=response.deleted,
                prev_kvs=[key_value(kv) for kv in response.prevs])))
        else:
            kvs, more = [key_value(kv) for kv in response.kvs], response.more
            plan = _plan_of(request, result.succeeded, len(responses))
            if plan is not None and plan.whole:
                kvs, more = range_records(plan, response, bounded=False)
            responses.append(pb.ResponseOp(response_range=pb.RangeResponse(
                header=pb.ResponseHeader(revision=begin + changed_yet),
                kvs=kvs, more=more, count=response.count)))
    return pb.TxnResponse(header=header, succeeded=result.succeeded, responses=responses)


def _plan_of(request: Optional[pb.TxnRequest], succeeded: bool, index: int) -> Optional[RangePlan]:
    """The L{RangePlan} of the range op at C{index} of the branch that ran (None: no request given)."""
    if request is None:
        return None
    op = (request.success if succeeded else request.failure)[index]
    return range_plan(op.request_range)


# --- members -----------------------------------------------------------------------


def members(view, own_id: int, own_client_urls: tuple, peer_scheme: str) -> list:
    """
    The C{Member}s of a L{kvpaxos.node.interfaces.MemberView}, in id
    order: name C{node<id>} once the member reported its client address
    (etcd leaves a member that has not started unnamed), its peer URL, and
    for the answering member (C{own_id}) its etcd URLs (the other members'
    etcd addresses are not replicated: none listed).
    """
    listed = []
    for member in sorted(view.members, key=lambda m: m.id):
        listed.append(pb.Member(
            ID=member.id, name=f"node{member.id}" if member.client else "",
            peerURLs=[f"{peer_scheme}://{member.peer}"] if member.peer else [],
            clientURLs=list(own_client_urls) if member.id == own_id else [],
            isLearner=member.role == "learner",
        ))
    return listed
