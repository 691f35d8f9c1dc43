"""
L{Watchers}: the watchers of one member, fed from its history (issue 14).

Every watcher is a cursor: the next revision it needs.  After each applied
batch (L{Watchers.applied}) the member's watchers read the history from
their cursors up to the applied revision and are sent what matches their
key range; watchers at the same cursor (every caught-up one) share one
read.  A watcher whose sink is full stops where it is (its cursor stays)
and reads on from the history when the sink says it has room again
(L{Watchers.ready}); one that starts in the past reads its way up the same
way.  Reads go in steps of at most C{step_events} events (whole revisions),
one step per reactor turn, so a long catch-up never holds the reactor.
Everything runs in the reactor thread, so the hand-over from reading the
past to following the present is exact: no revision is skipped or sent
twice.  All the events of one revision go in one L{Batch}.

A cursor below the compacted revision ends its watcher with
L{Compacted}; a start in the future waits for it.  What a member's watchers
are sent is what it applied: a member behind the others sends later,
never otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from kvpaxos.kv.commands import TO_THE_END
from kvpaxos.kv.history import Event, EventKind

__all__ = ["Batch", "Compacted", "WatchSpec", "Watcher", "Watchers"]

#: The most events one read of the history takes (it ends at a revision's end).
STEP_EVENTS = 1000


@dataclass(frozen=True)
class WatchSpec:
    """
    What one watcher asks for: the keys C{key}..C{end} (C{end} None: the
    one key; L{TO_THE_END}: every key from C{key} on), from revision
    C{start} (0: the next one applied), with each event's previous record
    if C{prev_kv}, leaving out puts (C{no_put}) or deletes (C{no_delete}).
    """

    key: bytes
    end: Optional[bytes] = None
    start: int = 0
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False

    def matches(self, event: Event) -> bool:
        key = event.key
        if self.end is None:
            inside = key == self.key
        elif self.end == TO_THE_END:
            inside = key >= self.key
        else:
            inside = self.key <= key < self.end
        if not inside:
            return False
        return not (self.no_put if event.kind is EventKind.PUT else self.no_delete)


@dataclass(frozen=True)
class Batch:
    """
    Events for one watcher: whole revisions, in order (never empty), and
    C{revision}, the last revision they cover (the watcher has seen
    everything up to it).
    """

    events: tuple
    revision: int


@dataclass(frozen=True)
class Compacted:
    """The watcher's next revision was compacted away: it ends; resume from C{compact_revision}."""

    compact_revision: int


class ReadCompacted(Exception):
    """The history was compacted past the read's start between the check and the read: try again."""


class Sink(Protocol):
    """Where a watcher's batches go (the gRPC edge's stream, in tests a list)."""

    def send(self, batch: Batch) -> bool:
        """Take C{batch} if there is room (return True), else take nothing (False)."""

    def end(self, reason: Compacted) -> None:
        """The watcher ended (the member's choice)."""


class Watcher:
    """One watcher: its spec, its sink and its cursor."""

    def __init__(self, watch_id: int, spec: WatchSpec, sink: Sink, cursor: int) -> None:
        self.id = watch_id
        self.spec = spec
        self.sink = sink
        #: The next revision this watcher needs.
        self.cursor = cursor
        #: Its sink was full: it waits for L{Watchers.ready}.
        self.paused = False
        self.ended = False

    def _select(self, events: Sequence[tuple], upto: int) -> tuple:
        spec, cursor = self.spec, self.cursor
        chosen = []
        for revision, event in events:
            if cursor <= revision <= upto and spec.matches(event):
                chosen.append(event if spec.prev_kv or event.prev is None else
                              Event(event.kind, event.kv, None))
        return tuple(chosen)


class Watchers:
    """
    The watchers of one member.

    @param read: C{read(start, max_events)} returns the history's
        C{(revision, event)} pairs from revision C{start} on, in order,
        whole revisions, at most about C{max_events} (more only to finish a
        revision), up to the applied revision; or raises L{ReadCompacted}.
    @param compacted: C{compacted()} is the store's compacted revision.
    @param applied_revision: C{applied_revision()} is the store's revision.
    @param later: C{later(f)} calls C{f} on a later reactor turn.
    """

    def __init__(self, read: Callable[[int, int], list], compacted: Callable[[], int],
                 applied_revision: Callable[[], int], later: Callable[[Callable[[], None]], None],
                 step_events: int = STEP_EVENTS) -> None:
        self._read = read
        self._compacted = compacted
        self._revision = applied_revision
        self._later = later
        self._step_events = step_events
        self._watchers: dict[int, Watcher] = {}
        self._ids = itertools.count(1)
        self._step_due = False

    def __len__(self) -> int:
        return len(self._watchers)

    def add(self, spec: WatchSpec, sink: Sink) -> Watcher:
        """
        Start a watcher for C{spec} sending to C{sink}; it is fed from the
        next reactor turn on (a start in the past reads the history first).
        """
        start = spec.start or self._revision() + 1
        watcher = Watcher(next(self._ids), spec, sink, start)
        self._watchers[watcher.id] = watcher
        self._due()
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        """Stop C{watcher} (the client's choice): nothing more is sent to it."""
        watcher.ended = True
        self._watchers.pop(watcher.id, None)

    def ready(self, watcher: Watcher) -> None:
        """C{watcher}'s sink has room again: it reads on from its cursor."""
        if watcher.paused and not watcher.ended:
            watcher.paused = False
            self._due()

    def applied(self) -> None:
        """A batch was applied: feed every watcher that is not paused."""
        if self._watchers:
            self._due()

    def caught_up(self, watcher: Watcher) -> bool:
        """Whether C{watcher} has been sent everything applied (for progress notifications)."""
        return not watcher.paused and watcher.cursor > self._revision()

    def stop(self) -> None:
        """The member stops: every watcher ends without a word (the stream ends)."""
        for watcher in self._watchers.values():
            watcher.ended = True
        self._watchers.clear()

    # --- feeding ---------------------------------------------------------------

    def _due(self) -> None:
        if not self._step_due:
            self._step_due = True
            self._later(self._step)

    def _step(self) -> None:
        """Feed each cursor group once, one bounded read each; come back if any is still behind."""
        self._step_due = False
        revision, compacted = self._revision(), self._compacted()
        groups: dict[int, list[Watcher]] = {}
        for watcher in list(self._watchers.values()):
            if watcher.paused:
                continue
            if watcher.cursor < compacted:
                self._watchers.pop(watcher.id, None)
                watcher.ended = True
                watcher.sink.end(Compacted(compacted))
                continue
            if watcher.cursor <= revision:
                groups.setdefault(watcher.cursor, []).append(watcher)
        behind = False
        for cursor, watchers in sorted(groups.items()):
            try:
                events = self._read(cursor, self._step_events)
            except ReadCompacted:
                behind = True  # the next step finds the compaction and ends them
                continue
            upto = events[-1][0] if events and events[-1][0] < revision and len(events) >= self._step_events \
                else revision
            for watcher in watchers:
                self._feed(watcher, events, upto)
            behind = behind or upto < revision
        if behind:
            self._due()

    def _feed(self, watcher: Watcher, events: Sequence[tuple], upto: int) -> None:
        if watcher.ended:
            return
        chosen = watcher._select(events, upto)
        if not chosen or watcher.sink.send(Batch(chosen, upto)):
            watcher.cursor = upto + 1  # nothing of its keys changed: nothing to send
        else:
            watcher.paused = True
