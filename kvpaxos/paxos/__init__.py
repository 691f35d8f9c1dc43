"""
The sans-I/O Multi-Paxos core.

L{Replica} is the state machine; feed it with C{step}, C{tick}, C{propose},
C{read_index}, take a L{Ready}, perform it, and C{advance}.  The
member set (L{Config}, L{ConfigChange}) is in L{kvpaxos.paxos.config}.  Nothing in this
package imports twisted, grpc, lmdb, time, socket or threading, or uses the
module-level C{random}: the same inputs always give the same outputs.
"""

from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange, ConfigError, MemberAddress
from kvpaxos.paxos.errors import NotLeader, ProposalRejected, QuorumNotHeard
from kvpaxos.paxos.messages import (
    NOOP,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    Batch,
    Catchup,
    CatchupRequest,
    CheckQuorum,
    ElectionTimeout,
    Heartbeat,
    HeartbeatAck,
    HeartbeatTimeout,
    InstallSnapshot,
    Message,
    Nack,
    Noop,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Snapshot,
    TimeoutNow,
    Value,
    value_size,
)
from kvpaxos.paxos.replica import Options, Replica
from kvpaxos.paxos.state import Entry, HardState, ReadState, Ready

__all__ = [
    "NOOP", "ZERO_BALLOT", "Accept", "Accepted", "Ballot", "Batch", "Catchup",
    "CatchupRequest", "ChangeKind", "CheckQuorum", "Config", "ConfigChange", "ConfigError", "MemberAddress",
    "ElectionTimeout", "Entry", "HardState", "Heartbeat", "HeartbeatAck",
    "HeartbeatTimeout", "InstallSnapshot",
    "Message", "Nack", "Noop", "NotLeader", "Options", "Prepare", "PreVote",
    "PreVoteReply", "Promise",
    "ProposalRejected", "QuorumNotHeard", "ReadState", "Ready", "Replica", "Snapshot",
    "TimeoutNow", "Value", "value_size",
]
