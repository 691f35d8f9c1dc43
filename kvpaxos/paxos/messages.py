"""
The vocabulary of the Paxos core: ballots, slot values and the messages that
replicas exchange.

Everything here is an immutable value (a frozen dataclass or a named tuple) so
that messages can be shared, compared and replayed.  Nothing here performs I/O
or knows how a message travels: the node's peer transport encodes these, the
simulator passes them by reference.

Names follow "Paxos Made Simple" (Lamport, 2001): a *ballot* is a proposal
number, phase 1 is ``Prepare``/``Promise``, phase 2 is ``Accept``/``Accepted``
and a value is *chosen* once a quorum of acceptors accepted it in one ballot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

# The member set and its changes live in kvpaxos.paxos.config; a ConfigChange
# is also a slot value, and a snapshot carries its member set.
from kvpaxos.paxos.config import Config, ConfigChange


class Ballot(NamedTuple):
    """
    A proposal number, totally ordered: first by ``round``, then by ``node``.

    Two distinct nodes never use the same ballot, because the node id is part
    of it (Paxos Made Simple §2.2: "different proposers choose their numbers
    from disjoint sets").
    """

    round: int
    node: int


#: The ballot below every real one: what a fresh acceptor has promised.
ZERO_BALLOT = Ballot(0, 0)


# --- slot values -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Noop:
    """
    The value a new leader puts into a slot that no acceptor in its quorum
    reported, so that later slots can be applied (Paxos Made Simple §3).
    """


#: The one no-op value.
NOOP = Noop()


@dataclass(frozen=True, slots=True)
class Batch:
    """
    Client commands, opaque to the core, chosen together in one slot and
    applied in order.
    """

    commands: tuple[bytes, ...]


Value = Union[Noop, Batch, ConfigChange]

#: Bytes counted for every command in a batch on top of its own length: the
#: room a length prefix takes when the batch is encoded.
COMMAND_OVERHEAD_BYTES = 4
#: Bytes counted for a value that is not a batch, and for a slot's framing.
VALUE_OVERHEAD_BYTES = 16


def value_size(value: Value) -> int:
    """
    Return the number of bytes C{value} counts for against the batch and
    message bounds: its commands' lengths plus framing.
    """
    if type(value) is Batch:
        return VALUE_OVERHEAD_BYTES + sum(map(len, value.commands)) + (
            COMMAND_OVERHEAD_BYTES * len(value.commands)
        )
    return VALUE_OVERHEAD_BYTES


# --- messages --------------------------------------------------------------
#
# Every message names its sender (src) and receiver (dst).  Slot ranges are
# contiguous: [first_slot, first_slot + len(values)).


@dataclass(frozen=True, slots=True)
class Prepare:
    """
    Phase 1a for every slot from C{first_slot} on (Paxos Made Simple §3: one
    Prepare covers "all instances" at once).  C{transfer} marks a campaign the
    old leader asked for (L{TimeoutNow}); C{asked_by} is that leader's
    ballot.  An acceptor waives its stickiness for a transfer only while it
    follows that very ballot: a late transfer, asked for by a leader since
    deposed, must not overtake a newer leader's lease.
    """

    src: int
    dst: int
    ballot: Ballot
    first_slot: int
    transfer: bool = False
    asked_by: Ballot = ZERO_BALLOT


@dataclass(frozen=True, slots=True)
class Promise:
    """
    Phase 1b: the acceptor will accept no ballot below C{ballot}.  It reports,
    for every slot from C{first_slot} on, the ballot and value it accepted
    there.  An acceptor promises only a candidate that knows every slot the
    acceptor knows chosen, so none of these slots is known chosen to it.
    """

    src: int
    dst: int
    ballot: Ballot
    first_slot: int
    accepted: tuple[tuple[int, Ballot, Value], ...]


@dataclass(frozen=True, slots=True)
class Nack:
    """
    The receiver refused C{ballot}: either it promised the higher
    C{promised} (the sender's leadership or campaign is over), or, for a
    Prepare, it knows slots chosen through C{chosen_index} that the candidate
    lacks (the candidate must catch up first).
    """

    src: int
    dst: int
    ballot: Ballot
    promised: Ballot
    chosen_index: int


@dataclass(frozen=True, slots=True)
class Accept:
    """
    Phase 2a for the slots [first_slot, first_slot + len(values)).  It also
    carries the leader's C{chosen_index} so that followers learn.
    """

    src: int
    dst: int
    ballot: Ballot
    first_slot: int
    values: tuple[Value, ...]
    chosen_index: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """
    Phase 2b: the acceptor durably accepted the slots [first_slot,
    first_slot + count) in C{ballot}.  C{chosen_index} is how far it has
    learned, for the leader's view of who is caught up.
    """

    src: int
    dst: int
    ballot: Ballot
    first_slot: int
    count: int
    chosen_index: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """
    The leader of C{ballot} is alive and has chosen through C{chosen_index}.
    C{read_round} numbers the leader's read-confirmation rounds.
    """

    src: int
    dst: int
    ballot: Ballot
    chosen_index: int
    read_round: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """
    The sender has promised no ballot above C{ballot} and has learned through
    C{chosen_index}; it answers read round C{read_round}.
    """

    src: int
    dst: int
    ballot: Ballot
    read_round: int
    chosen_index: int


@dataclass(frozen=True, slots=True)
class CatchupRequest:
    """The sender lacks the chosen values from C{first_slot} on."""

    src: int
    dst: int
    first_slot: int


@dataclass(frozen=True, slots=True)
class Catchup:
    """
    Chosen values for [first_slot, first_slot + len(entries)), each with the
    ballot its sender holds it under, and the sender's C{chosen_index}.
    """

    src: int
    dst: int
    first_slot: int
    entries: tuple[tuple[Ballot, Value], ...]
    chosen_index: int


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The receiver is behind the sender's compaction point: take this."""

    src: int
    dst: int
    snapshot: "Snapshot"


@dataclass(frozen=True, slots=True)
class PreVote:
    """
    Would the receiver promise C{ballot} to a candidate whose first unchosen
    slot is C{first_slot}?  Asked before a real campaign, changing nothing, so
    that a node cut off from the cluster never raises its ballot and, back,
    deposes a healthy leader (compare raft's PreVote, thesis §9.6).
    """

    src: int
    dst: int
    ballot: Ballot
    first_slot: int


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    """
    The answer to a L{PreVote}; C{chosen_index} lets a candidate that is
    behind catch up first.
    """

    src: int
    dst: int
    ballot: Ballot
    granted: bool
    chosen_index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """The leader of C{ballot} hands leadership to the receiver: campaign now."""

    src: int
    dst: int
    ballot: Ballot


Message = Union[
    Prepare,
    Promise,
    Nack,
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    CatchupRequest,
    Catchup,
    InstallSnapshot,
    TimeoutNow,
    PreVote,
    PreVoteReply,
]


# --- local inputs ------------------------------------------------------------
#
# Timeouts are stepped into a replica like any message (etcd raft's MsgHup,
# MsgBeat and MsgCheckQuorum): L{kvpaxos.paxos.replica.Replica.tick} makes
# them when a count of ticks runs out, and a test may step one directly.
# They are addressed from a replica to itself and never leave it (they are
# not in L{Message}, and the codec knows none of them).


@dataclass(frozen=True, slots=True)
class ElectionTimeout:
    """
    No leader was heard for the election timeout (a follower), or the
    election did not end in time (a pre-candidate or candidate): a voter asks
    for pre-votes; a node that is not a voter goes back to following.  A
    leader ignores it.
    """

    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class HeartbeatTimeout:
    """A leader's heartbeat interval ran out: it sends a heartbeat to every peer."""

    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class CheckQuorum:
    """
    An election timeout passed for a leader: it steps down unless it heard
    from a quorum (of both member sets) since the last check.
    """

    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    The state machine's state after applying every slot through C{index},
    with the member set in force after that slot.  C{data} is opaque to the
    core.  Index 0 with empty data is the bootstrap snapshot.

    C{data} None marks a compaction point of a durable state machine (one
    that keeps its state with its applied index, as a node's store does):
    the log through C{index} was dropped without copying the state, and a
    snapshot to send a peer is taken from the state machine when needed.
    Only such a replica holds one; none is ever sent.
    """

    index: int
    config: Config
    data: Optional[bytes] = b""
