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
from typing import Iterable, Optional

from kvpaxos.kv.commands import KeyValue

__all__ = [
    "Event",
    "EventKind",
    "HistoryCompacted",
    "compacted_without_history",
    "delete_event",
    "put_event",
    "whole_revisions",
]


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


class HistoryCompacted(Exception):
    """
    A read of the history asked for events below the store's compacted
    revision (the caller's start is too old; not a fault of the store):
    they were dropped.  Raised by the read itself, in the same view as
    its events, so a reader never gets a silent gap.

    @ivar compacted_revision: the store's compacted revision, the first a
        read may start from (etcd's C{compact_revision}).
    """

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"the history is compacted up to revision {compacted_revision}")
        self.compacted_revision = compacted_revision


def compacted_without_history(revision: int) -> int:
    """
    The compacted revision of a state at C{revision} that comes with no
    history (a data directory, snapshot, transfer or backup file from
    before the history): C{revision + 1}, so that a watch from any of its
    revisions is told "compacted", never given a gap.
    """
    return revision + 1


def put_event(kv: KeyValue, prev: Optional[KeyValue]) -> Event:
    """The event of a put (or append) that left C{kv}, replacing C{prev}."""
    return Event(EventKind.PUT, kv, prev)


def delete_event(prev: KeyValue, revision: int) -> Event:
    """The event of deleting C{prev}'s key at C{revision}."""
    return Event(EventKind.DELETE, KeyValue(prev.key, b"", 0, 0, revision), prev)


def whole_revisions(pairs: Iterable[tuple], max_events: int) -> list:
    """
    Return the first C{(revision, item)} pairs of C{pairs} (in revision
    order), whole revisions only: it stops at the first revision boundary
    at or after C{max_events} pairs (at least one revision, if any), never
    inside a revision, so a reader is given all of a revision's events or
    none.  What a store's C{history(start, max_events)} returns.
    """
    out: list = []
    add = out.append
    last = None
    wanted = max(1, max_events)
    for revision, item in pairs:
        if revision != last:
            if len(out) >= wanted:
                break
            last = revision
        add((revision, item))
    return out
