"""
The AMP admin commands of a node's admin port, as the server imports them:
the contract itself (commands, error codes and what each means) is
L{kvpaxos.api.admin}, which this module re-exports.
"""

# One definition of the contract, in the API package so that the CLI (a
# client, which may import only the API) and the server share the same
# classes.
from kvpaxos.api.admin import (  # noqa: F401
    MEMBER,
    MEMBER_LIST,
    MemberAdd,
    MemberList,
    MemberPromote,
    MemberRemove,
    NotLeader,
    Rejected,
    SnapshotOpen,
    SnapshotRead,
    Status,
    TransferLeadership,
    Unavailable,
)

__all__ = [
    "MEMBER", "MEMBER_LIST", "MemberAdd", "MemberList", "MemberPromote", "MemberRemove",
    "NotLeader", "Rejected", "SnapshotOpen", "SnapshotRead", "Status", "TransferLeadership", "Unavailable",
]
