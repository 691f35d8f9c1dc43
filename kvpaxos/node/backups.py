"""
L{BackupSource}: a node's side of C{kvpaxos snapshot save} (issue 13,
part 4), a mixin of L{kvpaxos.node.service.ReplicaService}.  The admin port
only carries it: the node opens the consistent snapshot (one read
transaction of its store, in a pool thread), says what it holds (the
header: the slot and counters of that same transaction, the member set
as the node knows it), and reads it out a chunk at a time.
"""

from __future__ import annotations

import datetime

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from kvpaxos.api.backup import SnapshotHeader


class BackupSource:
    """Opening, reading and closing snapshot streams for backups."""

    def _backup_pool(self, call, *args) -> defer.Deferred:
        # The simulator's threads when it runs the node, else a pool thread.
        io = getattr(self, "_snapshot_io", None)
        if io is not None:
            return io.in_pool(call, *args)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), call, *args)

    def open_backup(self) -> defer.Deferred:
        """
        Open a consistent snapshot of the replicated state: a Deferred
        firing with C{(stream, header)}; C{stream} for L{read_backup} and
        L{close_backup}, C{header} a L{SnapshotHeader} whose index and
        counters are those of the stream's own read transaction.
        """
        def opened(stream):
            return stream, self.backup_header(stream)

        return self._backup_pool(self.store.open_snapshot_stream).addCallback(opened)

    def backup_header(self, stream) -> SnapshotHeader:
        """The header of C{stream}: its slot and counters, this member and its member set."""
        view = self.members()
        return SnapshotHeader(
            member_id=self.node_id, cluster_id=view.cluster_id, index=stream.index,
            revision=stream.revision, next_client_id=stream.next_client_id,
            members=[{"id": m.id, "role": m.role, "peer": m.peer, "client": m.client} for m in view.members],
            saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

    def read_backup(self, stream, max_bytes: int) -> defer.Deferred:
        """The next chunk's records of C{stream} (None at the end), read in a pool thread."""
        return self._backup_pool(stream.next_chunk, max_bytes)

    def close_backup(self, stream) -> defer.Deferred:
        """Close C{stream} (its read transaction), in a pool thread."""
        return self._backup_pool(stream.close)
