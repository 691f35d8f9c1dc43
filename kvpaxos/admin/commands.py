"""
The AMP admin commands operators send to a node's admin port (bound to
127.0.0.1 unless configured otherwise): the node's status, the member list,
membership changes (add a learner, promote it, remove a member) and leader
transfer.

This module is the admin API's contract, shared by the server
(L{kvpaxos.admin.server}) and every client of it (the CLI's C{member},
C{leader} and C{endpoint} commands).  A change sent to a follower is carried
to the leader by the node; the answer comes once the change is chosen (or
refused).  Errors cross as AMP error codes:

  - C{REJECTED} (L{Rejected}): the request is wrong and changed nothing;
    the description is one sentence saying why (an unknown or duplicate
    id, a duplicate or malformed address, the last voter, a lagging
    learner, a change already in flight, a quorum that would be lost);
  - C{UNAVAILABLE} (L{Unavailable}): no leader could be reached, or the
    change was not chosen in time; it may be retried;
  - C{NOT_LEADER} (L{NotLeader}): kept for older callers of
    L{TransferLeadership}; the node now carries the transfer to the leader.
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
    Status,
    TransferLeadership,
    Unavailable,
)

__all__ = [
    "MEMBER", "MEMBER_LIST", "MemberAdd", "MemberList", "MemberPromote", "MemberRemove",
    "NotLeader", "Rejected", "Status", "TransferLeadership", "Unavailable",
]
