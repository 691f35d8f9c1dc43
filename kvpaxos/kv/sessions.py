"""
The exactly-once session table: which requests of a client were applied,
and what they returned.  Replicated state, like the data: it changes only
when a chosen command applies, lives in the store (LMDB sub-databases, the
in-memory store's dicts) and in snapshots, so every replica holds the same
table at the same slot.

A client opens a session (an C{OPEN_SESSION} command; the table assigns
the next client id) and then numbers its requests 1, 2, 3, ... with one
request in flight at a time.  Applying a request of session C{c} with
sequence C{s}, where the session's last applied sequence is C{last}:

  - C{s == last}: a retry; return the result saved for C{last}, change
    nothing;
  - C{s < last}: L{StaleSequence}, change nothing;
  - C{s > last}: apply it, save (C{s}, its result, the slot) as the
    session's entry;
  - no session C{c} (never opened, evicted, expired): L{SessionExpired},
    change nothing.  The client cannot know whether its unanswered
    requests applied, and is told so, rather than have a retry applied a
    second time.  (Creating a session on sight of an unknown id would let a
    retry whose session was evicted meanwhile apply twice; assigning ids at
    OPEN_SESSION is Raft's RegisterClient, dissertation section 6.3.)

Bounds, both in log time (slots), never wall-clock time, so every replica
evicts the same sessions at the same slot (L{SessionLimits}):
  - before each chosen batch applies, sessions unused for more than
    C{ttl_slots} slots (last used before C{slot - ttl_slots}) expire;
  - opening a session when C{max_sessions} are open evicts the least
    recently used first, ordered by (last-used slot, client id).

A provider's transaction view (L{kvpaxos.storage.interfaces.IStateView})
offers: C{session(client_id)}, C{session_sequence(client_id)} (the
sequence alone: what every request asks, without decoding the saved
result), C{put_session(client_id, session)}, C{delete_session(client_id)},
C{session_count()}, C{sessions_by_use()} (an iterator of
C{(last_used, client_id)} in that order) and C{next_client_id()} /
C{set_next_client_id(n)}.

The byte format of a session entry and of the results it saves is
L{kvpaxos.encoding.state}.  No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvpaxos.kv.commands import Request, SessionExpired, SessionOpened, StaleSequence

#: The first client id a fresh table assigns (0 means "no session").
FIRST_CLIENT_ID = 1


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """
    How large the session table may grow.  Replicated behaviour: every
    node of a cluster must use the same limits, or their tables diverge.
    """

    max_sessions: int = 10_000
    ttl_slots: int = 1_000_000


DEFAULT_LIMITS = SessionLimits()


@dataclass(frozen=True, slots=True)
class Session:
    """
    One session's entry: the last applied C{sequence} (0 right after it
    was opened), its C{result} (None before any), and the slot that last
    used the session.
    """

    sequence: int
    last_used: int
    result: object = None


def expire(view, slot: int, limits: SessionLimits) -> None:
    """Drop every session last used more than C{limits.ttl_slots} slots before C{slot}."""
    cutoff = slot - limits.ttl_slots
    doomed = []
    for last_used, client_id in view.sessions_by_use():
        if last_used >= cutoff:
            break
        doomed.append(client_id)
    for client_id in doomed:
        view.delete_session(client_id)


def open_session(view, slot: int, limits: SessionLimits) -> SessionOpened:
    """Assign the next client id, evicting least recently used sessions to make room."""
    excess = view.session_count() + 1 - limits.max_sessions
    if excess > 0:
        doomed = []
        for _, client_id in view.sessions_by_use():
            if len(doomed) == excess:
                break
            doomed.append(client_id)
        for client_id in doomed:
            view.delete_session(client_id)
    client_id = view.next_client_id()
    view.set_next_client_id(client_id + 1)
    view.put_session(client_id, Session(0, slot))
    return SessionOpened(client_id, view.revision())


def check(view, request: Request):
    """
    Return what C{request} gets without applying it (a saved result,
    L{StaleSequence} or L{SessionExpired}), or C{None} if it is to apply.
    A request without a session always applies.
    """
    client_id = request.client_id
    if not client_id:
        return None
    read_sequence = getattr(view, "session_sequence", None)
    if read_sequence is not None:
        sequence = read_sequence(client_id)
    else:  # a provider from before IStateView.session_sequence
        session = view.session(client_id)
        sequence = None if session is None else session.sequence
    if sequence is None:
        return SessionExpired(client_id, request.sequence)
    if request.sequence == sequence:
        return view.session(client_id).result  # a retry: only now is the saved result read
    if request.sequence < sequence:
        return StaleSequence(client_id, request.sequence, sequence)
    return None


def record(view, request: Request, slot: int, result) -> None:
    """Save C{result} as the session's answer to C{request} (if it has a session)."""
    if request.client_id:
        view.put_session(request.client_id, Session(request.sequence, slot, result))
