"""
How the etcd port (L{kvpaxos.api.etcd}) fails: etcd's own errors, with the
exact codes and messages of etcd's C{api/v3rpc/rpctypes/error.go} (etcd's
clients map an error to its type by the message alone), the refusals of
what kvpaxos does not serve (UNIMPLEMENTED, with a sentence), and the
node's failures reworded as etcd's.

  - L{refuse} raises an etcd error or a refusal (a L{_Abort}) from a
    handler or a conversion;
  - L{etcd_status} rewords a status the node calls ended with
    (L{kvpaxos.api.servicers._NodeCalls.call}, whose ErrorInfo reason
    says what it is: data, never the English text) into etcd's code and
    message, keeping the ErrorInfo;
  - L{etcd_rpc} wraps a handler: its L{_Abort} ends the RPC in etcd's
    words, and every answer is counted under the method's full name
    (C{etcdserverpb.KV/Range}), apart from kvpaxos.v1's methods.

Nothing here decides anything: which failure happened is the node's (or
the conversion's) call.
"""

from __future__ import annotations

import asyncio
import functools
from typing import NoReturn, Optional

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from kvpaxos.api import errors
from kvpaxos.api.servicers import _Abort
from kvpaxos.kv.auth import NO_CREDENTIAL

OK = grpc.StatusCode.OK
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED

# etcd's errors (rpctypes), as (code, message).
EMPTY_KEY = (_INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = (_INVALID, "etcdserver: key not found")
VALUE_PROVIDED = (_INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = (_INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = (_INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = (_INVALID, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = (_INVALID, "etcdserver: invalid sort option")
FUTURE_REVISION = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
NO_SPACE = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
MEMBER_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
REQUEST_TOO_LARGE = (_INVALID, "etcdserver: request is too large")
TOO_MANY_REQUESTS = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
INVALID_AUTH_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
USER_EMPTY = (_INVALID, "etcdserver: user name is empty")
NO_LEADER = (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
STOPPED = (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")

#: The node's failures (their ErrorInfo reason) in etcd's words.  A reason
#: not listed keeps kvpaxos's code and message (INVALID_ARGUMENT for a key
#: over 511 bytes, INTERNAL, ...).
BY_REASON = {
    errors.UNAVAILABLE: TIMEOUT,
    errors.NOT_LEADER: NO_LEADER,
    errors.SHUTTING_DOWN: STOPPED,
    errors.NO_SPACE: NO_SPACE,
    errors.UNAUTHENTICATED: INVALID_AUTH_TOKEN,
    errors.PERMISSION_DENIED: PERMISSION_DENIED,
    errors.TOO_MANY_REQUESTS: TOO_MANY_REQUESTS,
    errors.LEASE_NOT_FOUND: LEASE_NOT_FOUND,
    errors.LEASE_EXISTS: LEASE_EXIST,
}


def status_of(code: grpc.StatusCode, message: str) -> grpc.Status:
    """The C{grpc.Status} of C{code} and C{message}, with no details (as etcd's own errors)."""
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


def refuse(error: tuple, detail: Optional[str] = None) -> NoReturn:
    """
    Raise L{_Abort} with C{error} (one of this module's C{(code, message)}
    pairs); C{detail}, if given, replaces the message (a refusal of ours).
    """
    code, message = error
    raise _Abort(status_of(code, message if detail is None else detail))


def unimplemented(message: str) -> NoReturn:
    """Raise L{_Abort} UNIMPLEMENTED: C{message} says what is not served, and what to do instead."""
    raise _Abort(status_of(_UNIMPLEMENTED, message))


def invalid(message: str) -> NoReturn:
    """Raise L{_Abort} INVALID_ARGUMENT with C{message} (the client's fault; nothing changed)."""
    raise _Abort(status_of(_INVALID, message))


def _details(status: grpc.Status) -> Optional[status_pb2.Status]:
    for key, value in status.trailing_metadata or ():
        if key == errors.DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # not ours: left as it is
                return None
    return None


def _reason(details: status_pb2.Status) -> Optional[str]:
    from google.rpc import error_details_pb2

    for detail in details.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == errors.DOMAIN:
            return info.reason
    return None


def etcd_status(status: grpc.Status, credentialed: bool = True) -> grpc.Status:
    """
    Return C{status} in etcd's words when its ErrorInfo reason has an etcd
    error (L{BY_REASON}): etcd's code and message, in the status and in
    its C{google.rpc.Status} details (which grpc-go clients read the
    message from), the ErrorInfo kept.  Anything else is returned as it is.
    UNAUTHENTICATED of a request that brought no credential
    (C{credentialed} false) is etcd's "user name is empty".
    """
    details = _details(status)
    if details is None:
        return status
    reason = _reason(details)
    etcd = USER_EMPTY if reason == errors.UNAUTHENTICATED and not credentialed else BY_REASON.get(reason)
    if etcd is None:
        return status
    code, message = etcd
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details.details))


def etcd_rpc(service: str):
    """
    Wrap an async unary (or stream) handler of etcd's C{service}: its
    L{_Abort} ends the RPC with L{etcd_status} of its status; each answer
    is counted as C{etcdserverpb.<service>/<method>} with its code.
    """

    def wrap(method):
        name = f"etcdserverpb.{service}/{method.__name__}"

        @functools.wraps(method)
        async def handler(self, request, context):
            try:
                response = await method(self, request, context)
            except _Abort as abort:
                status = etcd_status(abort.status, self._calls.credential(context) is not NO_CREDENTIAL)
                self._calls.count(name, status.code)
                await context.abort_with_status(status)
                return None
            except asyncio.CancelledError:
                self._calls.count(name, grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._calls.count(name, grpc.StatusCode.UNKNOWN)
                raise
            self._calls.count(name, OK)
            return response

        return handler

    return wrap


def exhausted(message: str) -> NoReturn:
    """Raise L{_Abort} RESOURCE_EXHAUSTED with C{message}: a request beyond one of kvpaxos's bounds."""
    raise _Abort(status_of(grpc.StatusCode.RESOURCE_EXHAUSTED, message))
