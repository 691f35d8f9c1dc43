"""
What the core hands its caller and reads back from storage: the durable
acceptor state (L{HardState}, L{Entry}) and the L{Ready} batch of work.

No I/O lives here; these are values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvpaxos.paxos.messages import ZERO_BALLOT, Ballot, Message, Snapshot, Value


@dataclass(frozen=True, slots=True)
class HardState:
    """
    The acceptor state that must survive a crash besides the log: the highest
    ballot promised (Paxos Made Simple §2.2, "an acceptor must remember ... the
    highest-numbered prepare request to which it has responded") and how far
    the replica knows the log is chosen.
    """

    promised: Ballot = ZERO_BALLOT
    chosen_index: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """
    One slot of the acceptor's log: the C{value} it accepted in C{ballot}, or
    a chosen value it learned (then C{ballot} is the one it was learned under).
    """

    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class ReadState:
    """
    The answer to L{Replica.read_index}: a read issued with C{context} is
    linearizable once the state machine has applied through C{index}.
    C{index} is C{None} when leadership was lost first: the read must be
    retried elsewhere.
    """

    context: object
    index: Optional[int]


@dataclass(slots=True)
class Ready:
    """
    A batch of work for the caller, to be done in this order (the contract
    that makes the core safe; compare etcd raft's C{Ready}):

      1. persist, durably and atomically: C{hard_state} (if not C{None}),
         C{entries} (slot → entry, overwriting), and C{snapshot} (if not
         C{None}; it replaces every entry at or below its index);
      2. send C{messages}; they may also leave before step 1 is done.  Send
         C{durable_messages} only after step 1 is durable: they are Promises
         and Accepteds, whose promise rests on the persisted state;
      3. if C{install_snapshot}, restore the state machine from C{snapshot};
         then apply C{committed} (slot, value) pairs in order;
      4. hand C{read_states} to the reads that wait on them (each is
         servable once its index is applied);
      5. call C{Replica.advance} with this object.

    Apart from that order: for each peer in C{snapshot_wanted} (behind a
    durable state machine's compaction point), take the state machine's
    state (C{snapshot_now()}) whenever and on whatever thread suits, and
    send the message L{Replica.snapshot_message} makes of it, if any.
    """

    hard_state: Optional[HardState] = None
    entries: list[tuple[int, Entry]] = field(default_factory=list)
    snapshot: Optional[Snapshot] = None
    install_snapshot: bool = False
    messages: list[Message] = field(default_factory=list)
    durable_messages: list[Message] = field(default_factory=list)
    committed: list[tuple[int, Value]] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    snapshot_wanted: list[int] = field(default_factory=list)
    # Replies the replica owes itself once this Ready is durable (its own
    # Promise or Accepted); stepped in by advance().
    self_messages: list[Message] = field(default_factory=list)

    def must_sync(self) -> bool:
        """Return whether step 1 has anything to persist."""
        return bool(
            self.hard_state is not None or self.entries or self.snapshot is not None
        )
