"""
A fake of what a grpc stub raises, shared by the client and CLI tests: a
C{grpc.RpcError} with a status code, a message and, as a kvpaxos server
attaches them, ErrorInfo details in its trailing metadata (built with the
server's own L{kvpaxos.api.errors.rich_status}).
"""

from __future__ import annotations

from typing import Mapping, Optional

import grpc

from kvpaxos.api import errors


class FakeRpcError(grpc.RpcError):
    """An RPC failure: C{code}, C{details} and, when C{reason} is given, an ErrorInfo."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: Optional[str] = None,
                 metadata: Optional[Mapping[str, object]] = None) -> None:
        super().__init__(details)
        self._code, self._details = code, details
        self._trailing = () if reason is None else errors.rich_status(
            code, details, reason, metadata or {}).trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailing


def unavailable(details: str = "no quorum before deadline", leader: Optional[int] = None,
                reason: Optional[str] = errors.UNAVAILABLE) -> FakeRpcError:
    """
    An UNAVAILABLE as a node raises it, naming C{leader} in its metadata;
    with C{reason=None}, as grpcio raises it for a connection failure (no
    details).
    """
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, details, reason,
                        None if reason is None else {errors.LEADER_ID: leader})
