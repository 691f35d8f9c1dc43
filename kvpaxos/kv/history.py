"""
The history of writes (issue 14): what a watcher is sent.

Every applied write leaves one L{Event} per key it changed, in the same
transaction: a put (or append) its new record, a delete the key and the
revision that deleted it; both carry the key's previous record (C{prev}),
so a watcher's C{prev_kv} needs no second read and survives the
compaction of the revision that wrote it.  The events of one revision are
numbered from 0 in the order the writes applied (a Txn's ops in order, a
range delete's keys in key order), so C{(revision, index)} orders the whole
history.

The history is replicated state: every member keeps the events from the
store's compacted revision (0 until the first compaction) on.  A compaction is a log command, so every member keeps the same events.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from kvpaxos.kv.commands import KeyValue

__all__ = ["Event", "EventKind", "delete_event", "put_event"]


class EventKind(enum.IntEnum):
    """What an event did to its key (etcd's C{mvccpb.Event.EventType} values)."""

    PUT = 0
    DELETE = 1


@dataclass(frozen=True)
class Event:
    """
    One key's change at one revision.

    @ivar kind: L{EventKind}.
    @ivar kv: a put's new record; a delete's key with the deleting revision
        as C{mod_revision}, an empty value and version and create revision 0
        (etcd's form).
    @ivar prev: the key's record before the change (None: it did not exist).
    """

    kind: EventKind
    kv: KeyValue
    prev: Optional[KeyValue] = None

    @property
    def revision(self) -> int:
        """The revision of the write."""
        return self.kv.mod_revision

    @property
    def key(self) -> bytes:
        return self.kv.key


def put_event(kv: KeyValue, prev: Optional[KeyValue]) -> Event:
    """The event of a put (or append) that left C{kv}, replacing C{prev}."""
    return Event(EventKind.PUT, kv, prev)


def delete_event(prev: KeyValue, revision: int) -> Event:
    """The event of deleting C{prev}'s key at C{revision}."""
    return Event(EventKind.DELETE, KeyValue(prev.key, b"", 0, 0, revision), prev)
