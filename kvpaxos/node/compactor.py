"""
The leader's automatic compaction of the history of writes (issue 14).

The history (L{kvpaxos.kv.history}) grows by one event per key written; it
is kept for watchers resuming from a past revision and is bounded by the
configured L{HistoryLimits}: the last C{revisions} revisions and/or the
last C{age_s} seconds.  Only the leader decides, on its own monotonic
clock, and what it decides goes through the log as a COMPACT command
(L{kvpaxos.kv.compaction}), so every member drops the same events and a
follower's clock never matters.

How: on every tick the leader checks the count rule, which keeps the
last C{revisions} revisions (compacting once the history holds a tenth
more than that, so it does not propose a compaction for every write);
every C{check_s} seconds it samples C{(now, revision)} for the age rule,
which compacts through the newest sample at least C{age_s} old (every event up to that revision is
at least that old).  A leader that has just taken over has no samples, so
it compacts by age only once C{age_s} has passed on its own clock: a change
of leader never compacts early.  One COMPACT drops at most
C{step_revisions} revisions, so a long backlog goes in bounded steps, and
only one is in flight at a time.  Reactor thread only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

from twisted.logger import Logger

from kvpaxos.config import DEFAULT_HISTORY_REVISIONS
from kvpaxos.kv.commands import Op, Request
from kvpaxos.kv.compaction import CompactDone

__all__ = ["HistoryCompaction", "HistoryLimits", "compaction_target"]



@dataclass(frozen=True)
class HistoryLimits:
    """
    How much history the leader keeps: the last C{revisions} revisions (0:
    no count limit) and the last C{age_s} seconds (0: no age limit); with
    both, whichever keeps less.  C{check_s}: how often it looks;
    C{step_revisions}: the most revisions one compaction drops.
    """

    revisions: int = DEFAULT_HISTORY_REVISIONS
    age_s: float = 0.0
    check_s: float = 1.0
    step_revisions: int = 10_000

    def __post_init__(self) -> None:
        if self.revisions < 0 or self.age_s < 0 or self.check_s <= 0 or self.step_revisions < 1:
            raise ValueError(f"bad history limits {self!r}")


def compaction_target(revision: int, compacted: int, samples: deque, now: float,
                      limits: HistoryLimits) -> Optional[int]:
    """
    Return the revision to compact at, or None to leave the history as it
    is; drop from C{samples} (C{(time, revision)}, oldest first) those no
    longer needed.

    @param revision: the store's revision; C{compacted}: its compacted one.
    """
    target = 0
    if limits.revisions and revision - compacted >= limits.revisions + max(1, limits.revisions // 10):
        target = revision - limits.revisions + 1
    if limits.age_s:
        old = None
        while samples and samples[0][0] <= now - limits.age_s:
            old = samples.popleft()
        if old is not None:
            samples.appendleft(old)  # kept: the newest old enough, until a newer one is
            if old[1] + 1 > compacted:
                target = max(target, old[1] + 1)
    target = min(target, revision, compacted + limits.step_revisions)
    return target if target > compacted else None


class HistoryCompaction:
    """
    The leader's compaction of the history (a mixin of the replica service,
    which holds C{replica}, C{store}, C{clock}, C{writes}, C{options},
    C{tick_s}); the service calls L{_compact_tick} on every tick.  The
    wiring sets C{history_limits} (L{HistoryLimits}).
    """

    history_limits = HistoryLimits()
    _history_samples: Optional[deque] = None
    _history_next_at = 0.0
    _history_compacting = False
    _history_log = Logger()

    def _compact_tick(self) -> None:
        replica = self.replica
        if replica is None or not replica.is_leader or self.writes is None:
            self._history_samples = None  # a later leadership starts afresh
            return
        if self._history_compacting:
            return
        now = self.clock.seconds()
        limits = self.history_limits
        if self._history_samples is None:
            self._history_samples = deque()
        samples = self._history_samples
        revision, compacted = self.store.revision(), self.store.compacted_revision()
        if now >= self._history_next_at:  # the age rule's sample, every check_s
            self._history_next_at = now + limits.check_s
            if limits.age_s and (not samples or samples[-1][1] != revision):
                samples.append((now, revision))  # trimmed by the age rule
        elif not limits.revisions or revision - compacted < limits.revisions:
            return  # the count rule is checked every tick (cheap): the history never runs far past it
        target = compaction_target(revision, compacted, samples, now, limits)
        if target is None:
            return
        self._history_compacting = True
        timeout_s = self.options.election_ticks * self.tick_s * 4
        d = self.writes.submit(Request(Op.COMPACT, compact_revision=target), timeout_s, leader_only=True)
        d.addCallbacks(self._compacted, self._compaction_failed)

    def _compacted(self, result) -> None:
        self._history_compacting = False
        if type(result) is CompactDone:
            self._history_log.debug("history compacted at revision {revision}", revision=result.compacted)
        else:  # refused: another compaction (a client's) went first; the next check looks again
            self._history_log.info("automatic compaction refused: {result}", result=result)

    def _compaction_failed(self, failure) -> None:
        self._history_compacting = False
        self._history_log.info("automatic compaction not applied: {error}", error=failure.getErrorMessage())
