"""
Conversions between the gRPC messages of C{kvpaxos.v1} and the command and
result types of L{kvpaxos.kv.commands}, both ways, and the size cap that
pages range results under the gRPC message limit.

Pure functions: no node, no grpcio context, no I/O.  A request that does not
convert is the client's fault and raises L{InvalidArgument}; a request that
converts is checked by L{kvpaxos.kv.commands} (C{range_query},
C{validate_request}), never here.  Results are trusted: they come from the
node.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResponse,
    InvalidArgument,
    KeyValue,
    Op,
    Put,
    PutResponse,
    Range,
    RangeResult,
    Request,
    Txn,
    TxnOp,
    TxnResult,
    range_query,
    validate_request,
)
from kvpaxos.v1 import kv_pb2

#: The most bytes of encoded records one response carries (range results,
#: and every range inside a transaction together).  Below the 4 MiB message
#: limit with room for the header, the other fields and a transaction's
#: other responses; above one maximal record, so a page always makes
#: progress.
RESPONSE_KVS_BYTES_MAX = 3 * 1024 * 1024
assert MAX_VALUE_BYTES + MAX_KEY_BYTES + 64 < RESPONSE_KVS_BYTES_MAX < MAX_MESSAGE_BYTES

# --- read consistency ------------------------------------------------------------

_CONSISTENCY = {
    kv_pb2.LINEARIZABLE: "linearizable",
    kv_pb2.SERIALIZABLE: "serializable",
    kv_pb2.LEASE: "lease",
}


def consistency_name(consistency: int) -> str:
    """
    Return the node's name (C{"linearizable"}, C{"serializable"},
    C{"lease"}) of a C{ReadConsistency} value.

    @raise InvalidArgument: a value this version does not know (proto3
        enums are open, so a newer client can send one).
    """
    try:
        return _CONSISTENCY[consistency]
    except KeyError:
        raise InvalidArgument(f"unknown read consistency {consistency}") from None


# --- records -----------------------------------------------------------------------


def key_value_to_proto(kv: KeyValue) -> kv_pb2.KeyValue:
    """Return C{kv} as a C{kvpaxos.v1.KeyValue}."""
    return kv_pb2.KeyValue(
        key=kv.key, value=kv.value, version=kv.version,
        create_revision=kv.create_revision, mod_revision=kv.mod_revision,
    )


def key_value_from_proto(message: kv_pb2.KeyValue) -> KeyValue:
    """Return the L{KeyValue} of a C{kvpaxos.v1.KeyValue}."""
    return KeyValue(message.key, message.value, message.version,
                    message.create_revision, message.mod_revision)


def optional_key_value_to_proto(kv: Optional[KeyValue]) -> Optional[kv_pb2.KeyValue]:
    """Return C{kv} as a C{kvpaxos.v1.KeyValue}, or None (the field left unset) for None."""
    return None if kv is None else key_value_to_proto(kv)


# --- ranges ------------------------------------------------------------------------


def _end_from_proto(range_end: bytes) -> Optional[bytes]:
    """An empty C{range_end} means the one key (None); anything else is the end."""
    return range_end or None


def range_from_proto(message) -> Range:
    """
    Return the L{Range} of a C{RangeRequest} (its C{consistency} is not part
    of the query: see L{consistency_name}), unchecked: a transaction's
    ranges are checked with the transaction.
    """
    return Range(message.key, _end_from_proto(message.range_end), message.limit,
                 message.keys_only, message.count_only)


def range_query_from_proto(message: kv_pb2.RangeRequest) -> Range:
    """
    Return the checked L{Range} of a C{RangeRequest} read.

    @raise InvalidArgument: a bad key or range end, or a negative limit.
    """
    return range_query(message.key, _end_from_proto(message.range_end), message.limit,
                       message.keys_only, message.count_only)


def range_to_proto(query: Range) -> kv_pb2.RangeRequest:
    """Return C{query} as a C{RangeRequest} (linearizable)."""
    return kv_pb2.RangeRequest(key=query.key, range_end=query.end or b"", limit=query.limit,
                               keys_only=query.keys_only, count_only=query.count_only)


def _field_bytes(message) -> int:
    """The bytes C{message} takes as a length-delimited field numbered below 16."""
    size = message.ByteSize()
    return 1 + _varint_bytes(size) + size


def _varint_bytes(number: int) -> int:
    return max(1, (number.bit_length() + 6) // 7)


def range_response(result: RangeResult, header: kv_pb2.ResponseHeader,
                   budget_bytes: int = RESPONSE_KVS_BYTES_MAX) -> tuple[kv_pb2.RangeResponse, int]:
    """
    Return the C{RangeResponse} of C{result} and the bytes its records
    take.  The records are cut before the first one that would take them
    over C{budget_bytes}; then C{more} is set, so the client asks for the
    next page (from just after the last key returned).  C{count} stays the
    range's total.  A budget of 0 or less returns no records (and C{more}
    if there were any).
    """
    kvs = []
    used = 0
    for kv in result.kvs:
        message = key_value_to_proto(kv)
        size = _field_bytes(message)
        if used + size > budget_bytes:
            break
        kvs.append(message)
        used += size
    more = result.more or len(kvs) < len(result.kvs)
    return kv_pb2.RangeResponse(header=header, kvs=kvs, more=more, count=result.count), used


# --- transactions ------------------------------------------------------------------

_TARGETS = {
    kv_pb2.Compare.VALUE: CompareTarget.VALUE,
    kv_pb2.Compare.VERSION: CompareTarget.VERSION,
    kv_pb2.Compare.CREATE_REVISION: CompareTarget.CREATE_REVISION,
    kv_pb2.Compare.MOD_REVISION: CompareTarget.MOD_REVISION,
    kv_pb2.Compare.EXISTS: CompareTarget.EXISTS,
}
_TARGETS_TO_PROTO = {target: number for number, target in _TARGETS.items()}
_RESULTS = {
    kv_pb2.Compare.EQUAL: CompareResult.EQUAL,
    kv_pb2.Compare.NOT_EQUAL: CompareResult.NOT_EQUAL,
    kv_pb2.Compare.LESS: CompareResult.LESS,
    kv_pb2.Compare.GREATER: CompareResult.GREATER,
}
_RESULTS_TO_PROTO = {result: number for number, result in _RESULTS.items()}
#: Each target's operand field in the C{operand} oneof, and the operand an
#: unset oneof stands for (proto3's default of that field).
_OPERANDS = {
    CompareTarget.VALUE: ("value", b""),
    CompareTarget.VERSION: ("version", 0),
    CompareTarget.CREATE_REVISION: ("create_revision", 0),
    CompareTarget.MOD_REVISION: ("mod_revision", 0),
    CompareTarget.EXISTS: ("exists", False),
}


def compare_from_proto(message: kv_pb2.Compare) -> Compare:
    """
    Return the L{Compare} of a C{kvpaxos.v1.Compare}.  The operand is the
    oneof field named after the target (C{value} for VALUE, C{version} for
    VERSION, ...); none set means that field's default (empty, 0, false).

    @raise InvalidArgument: an unknown target or result, or an operand
        field that is not the target's.
    """
    target = _TARGETS.get(message.target)
    result = _RESULTS.get(message.result)
    if target is None:
        raise InvalidArgument(f"unknown compare target {message.target}")
    if result is None:
        raise InvalidArgument(f"unknown compare result {message.result}")
    field, default = _OPERANDS[target]
    which = message.WhichOneof("operand")
    if which is None:
        operand = default
    elif which == field:
        operand = getattr(message, field)
    else:
        raise InvalidArgument(f"a {target.name} compare takes the {field} operand, not {which}")
    return Compare(message.key, target, result, operand)


def compare_to_proto(compare: Compare) -> kv_pb2.Compare:
    """Return C{compare} as a C{kvpaxos.v1.Compare}, its operand in the target's field."""
    field, _ = _OPERANDS[compare.target]
    return kv_pb2.Compare(key=compare.key, target=_TARGETS_TO_PROTO[compare.target],
                          result=_RESULTS_TO_PROTO[compare.result], **{field: compare.operand})


def txn_op_from_proto(message: kv_pb2.RequestOp) -> TxnOp:
    """
    Return the L{Put}, L{DeleteRange} or L{Range} of a C{RequestOp},
    unchecked.  Session fields of a put and the consistency of a range are
    ignored: the transaction has the session, and is in the log; a put's
    lease is kept (checked with the transaction).

    @raise InvalidArgument: no op set.
    """
    which = message.WhichOneof("request")
    if which == "request_put":
        put = message.request_put
        return Put(put.key, put.value, put.prev_kv, put.lease)
    if which == "request_delete_range":
        delete = message.request_delete_range
        return DeleteRange(delete.key, _end_from_proto(delete.range_end), delete.prev_kv)
    if which == "request_range":
        return range_from_proto(message.request_range)
    raise InvalidArgument("a transaction op sets none of request_range, request_put, request_delete_range")


def txn_op_to_proto(op: TxnOp) -> kv_pb2.RequestOp:
    """Return C{op} as a C{RequestOp}."""
    kind = type(op)
    if kind is Put:
        return kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=op.key, value=op.value, prev_kv=op.prev_kv,
                                                              lease=op.lease))
    if kind is DeleteRange:
        return kv_pb2.RequestOp(request_delete_range=kv_pb2.DeleteRangeRequest(
            key=op.key, range_end=op.end or b"", prev_kv=op.prev_kv))
    return kv_pb2.RequestOp(request_range=range_to_proto(op))


def _txn_ops_from_proto(messages) -> tuple:
    """L{txn_op_from_proto} of every op of a branch (puts, the common op, converted inline)."""
    ops = []
    append = ops.append
    for message in messages:
        if message.WhichOneof("request") == "request_put":
            put = message.request_put
            append(Put(put.key, put.value, put.prev_kv, put.lease))
        else:
            append(txn_op_from_proto(message))
    return tuple(ops)


def txn_request_from_proto(message: kv_pb2.TxnRequest) -> Request:
    """
    Return the checked TXN L{Request} of a C{TxnRequest}.

    @raise InvalidArgument: anything L{compare_from_proto},
        L{txn_op_from_proto} or C{validate_request} refuses.
    """
    txn = Txn(tuple(compare_from_proto(c) for c in message.compare),
              _txn_ops_from_proto(message.success), _txn_ops_from_proto(message.failure))
    request = Request(Op.TXN, txn=txn, client_id=message.client_id, sequence=message.sequence)
    validate_request(request)
    return request


def txn_request_to_proto(request: Request) -> kv_pb2.TxnRequest:
    """Return TXN C{request} as a C{TxnRequest} (with its session fields)."""
    txn = request.txn
    return kv_pb2.TxnRequest(
        compare=[compare_to_proto(c) for c in txn.compares],
        success=[txn_op_to_proto(op) for op in txn.success],
        failure=[txn_op_to_proto(op) for op in txn.failure],
        client_id=request.client_id, sequence=request.sequence,
    )


def txn_response(result: TxnResult, header: kv_pb2.ResponseHeader) -> kv_pb2.TxnResponse:
    """
    Return the C{TxnResponse} of C{result}; every inner response carries
    C{header} too.

    A put's C{existed} is known only when it asked for C{prev_kv}.  The
    records of the transaction's ranges share one L{RESPONSE_KVS_BYTES_MAX}
    budget, less what the puts' and deletes' records take, in op order; a
    range cut short says C{more}.  The puts' and deletes' records are never
    cut (what they replaced is gone), so the response can still exceed the
    message limit: the caller checks.
    """
    ops: list = [None] * len(result.responses)
    fixed_bytes = 0
    # Most puts answer the same message (no prev_kv asked): build it once
    # (the response copies it in).
    plain_put = plain_put_bytes = None
    for index, response in enumerate(result.responses):
        kind = type(response)
        if kind is PutResponse and response.prev is None:
            if plain_put is None:
                plain_put = kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse(header=header))
                plain_put_bytes = _field_bytes(plain_put)
            ops[index] = plain_put
            fixed_bytes += plain_put_bytes
            continue
        if kind is PutResponse:
            ops[index] = kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse(
                header=header, existed=True, prev_kv=key_value_to_proto(response.prev)))
        elif kind is DeleteResponse:
            ops[index] = kv_pb2.ResponseOp(response_delete_range=kv_pb2.DeleteRangeResponse(
                header=header, deleted=response.deleted,
                prev_kvs=[key_value_to_proto(kv) for kv in response.prevs]))
        else:
            continue
        fixed_bytes += _field_bytes(ops[index])
    budget_bytes = RESPONSE_KVS_BYTES_MAX - fixed_bytes
    for index, response in enumerate(result.responses):
        if type(response) is RangeResult:
            message, used = range_response(response, header, budget_bytes)
            budget_bytes -= used
            ops[index] = kv_pb2.ResponseOp(response_range=message)
    return kv_pb2.TxnResponse(header=header, succeeded=result.succeeded, responses=ops)


def member_list_response(view, header: kv_pb2.ResponseHeader) -> kv_pb2.MemberListResponse:
    """
    The C{MemberListResponse} of a L{kvpaxos.node.interfaces.MemberView}
    (duck-typed: C{cluster_id}, C{leader}, C{members} of C{id}, C{role},
    C{peer}, C{client}), members in ascending id order.
    """
    return kv_pb2.MemberListResponse(
        header=header,
        cluster_id=view.cluster_id,
        leader_id=view.leader or 0,
        members=[
            kv_pb2.Member(member_id=m.id, role=m.role, peer_address=m.peer, client_address=m.client)
            for m in sorted(view.members, key=lambda m: m.id)
        ],
    )
