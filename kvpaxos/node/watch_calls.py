"""
L{WatchCalls}: watchers at a member, mixed into
L{kvpaxos.node.service.ReplicaService} (which holds C{store}, C{reactor},
C{auth}), over L{kvpaxos.node.watchers.Watchers}:

  - L{WatchCalls.watch}: a watcher of a key or range, checked for read
    permission, fed from the store's history as the member applies;
  - L{WatchCalls.cancel_watch}, L{WatchCalls.watch_ready} (its sink has
    room again), L{WatchCalls.watch_caught_up} (for progress responses).

The service calls L{_watchers_applied} after each batch it committed, and
L{_stop_watchers} when it stops.  Reactor thread only.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.api.errors import Unavailable
from kvpaxos.kv.auth import Credential
from kvpaxos.kv.history import HistoryCompacted
from kvpaxos.node.watchers import ReadCompacted, Sink, WatchSpec, Watcher, Watchers


class WatchCalls:
    """The node's watch calls (a mixin of the replica service)."""

    _watchers_of: Optional[Watchers] = None

    @property
    def watchers(self) -> Watchers:
        """This member's watchers (made at the first watch)."""
        if self._watchers_of is None:
            store = self.store
            self._watchers_of = Watchers(
                self._read_history, store.compacted_revision, store.revision,
                lambda step: self.reactor.callLater(0, step))
        return self._watchers_of

    def _read_history(self, start: int, max_events: int) -> list:
        """One short read of the store's history (a compaction since the watchers looked: L{ReadCompacted})."""
        try:
            return self.store.history(start, max_events)
        except HistoryCompacted:
            raise ReadCompacted() from None

    def watch(self, spec: WatchSpec, sink: Sink, credential: Optional[Credential] = None) -> Watcher:
        """
        Start a watcher of C{spec} that sends to C{sink} (see
        L{kvpaxos.node.watchers}); return it.

        @raise kvpaxos.api.errors.Unauthenticated, PermissionDenied: auth is
            enabled and the credential names no user, or one that may not
            read the keys.
        @raise kvpaxos.api.errors.Unavailable: the member is not serving.
        """
        if self.replica is None or not self.replica.config.voters:
            raise Unavailable(f"node {self.node_id} has no member set yet")
        self.auth.check_read(self.auth.user_of(credential), spec.key, spec.end)
        return self.watchers.add(spec, sink)

    def cancel_watch(self, watcher: Watcher) -> None:
        """End C{watcher} (the client cancelled it, or its stream ended)."""
        if self._watchers_of is not None:
            self._watchers_of.cancel(watcher)

    def watch_ready(self, watcher: Watcher) -> None:
        """C{watcher}'s sink has room again."""
        if self._watchers_of is not None:
            self._watchers_of.ready(watcher)

    def watch_caught_up(self, watcher: Watcher) -> Optional[int]:
        """The revision C{watcher} has been sent everything up to, if it is caught up; else None."""
        if self._watchers_of is None or not self._watchers_of.caught_up(watcher):
            return None
        return self.store.revision()

    def _watchers_applied(self) -> None:
        if self._watchers_of is not None:
            self._watchers_of.applied()

    def _stop_watchers(self) -> None:
        if self._watchers_of is not None:
            self._watchers_of.stop()
