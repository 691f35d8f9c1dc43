"""
Compaction of the history of writes (issue 14): the COMPACT command.

C{Compact(r)} drops every event of a revision below C{r} from the
replicated history (L{kvpaxos.kv.history}); the store's compacted
revision becomes C{r}, the first revision a watcher may still start from.
It is a log command, so every member drops the same events at the same
slot and keeps the same history.  It changes no key and does not move the
store's revision.

Refused, changing nothing (etcd's rules, in kvpaxos revisions): a revision
above the store's (C{FUTURE}), or one at or below the compacted revision
once anything was compacted (C{COMPACTED}; a store never compacted accepts
0, which drops nothing).  Like etcd's, it needs no key permission: any
user may compact (auth checks the request's user as for every command,
L{kvpaxos.kv.auth.request_permitted}).

Who proposes it: a client (C{KV.Compact}), or the leader, when the
retained history passes the configured count or age
(L{kvpaxos.node.compactor}).  Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvpaxos.kv.commands import Request

__all__ = ["CompactDone", "CompactError", "CompactRefused", "apply_compact", "compact_refusal"]


class CompactError(enum.Enum):
    """Why a compaction was refused."""

    #: The revision is at or below the compacted one.
    COMPACTED = "compacted"
    #: The revision is above the store's.
    FUTURE = "future"


@dataclass(frozen=True, slots=True)
class CompactDone:
    """A compaction applied: the history now starts at C{compacted}; the store is at C{revision}."""

    compacted: int
    revision: int


@dataclass(frozen=True, slots=True)
class CompactRefused:
    """
    A compaction refused, nothing changed: C{error}, with the store's
    C{compacted} and C{revision} when it was applied.
    """

    error: CompactError
    compacted: int
    revision: int


def compact_refusal(target: int, compacted: int, revision: int):
    """Return the L{CompactError} of compacting at C{target} a history compacted at C{compacted} of a store at C{revision}, or None."""
    if target > revision:
        return CompactError.FUTURE
    if target < compacted or (target == compacted and compacted > 0):
        return CompactError.COMPACTED
    return None


def apply_compact(view, request: Request):
    """Apply COMPACT C{request} to C{view}; return L{CompactDone} or L{CompactRefused}."""
    target = request.compact_revision
    compacted, revision = view.compacted_revision(), view.revision()
    error = compact_refusal(target, compacted, revision)
    if error is not None:
        return CompactRefused(error, compacted, revision)
    view.compact_history(target)
    return CompactDone(target, revision)
