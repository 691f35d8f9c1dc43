"""
L{BackupSource}: a node's side of C{kvpaxos snapshot save} (issue 13,
part 4), a mixin of L{kvpaxos.node.service.ReplicaService}.  The admin port
only carries it: the node opens the consistent snapshot (one read
transaction of its store, in a pool thread), says what it holds (the
header: the slot and counters of that same transaction, the member set
as the node knows it), and reads it out a chunk at a time.

L{BackupReader}: one such stream for a client of the etcd port
(C{Maintenance.Snapshot}), who may go at any moment: it closes the read
transaction exactly once, whenever the client goes.  Nothing here knows
etcd's envelope (L{kvpaxos.api.backup.EtcdEnvelope}).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kvpaxos.api.backup import SnapshotHeader
from kvpaxos.api.errors import ApiError, Unavailable
from kvpaxos.kv.auth import Credential

_log = Logger()


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

    def open_backup_for(self, credential: Optional[Credential]) -> defer.Deferred:
        """
        L{open_backup} for a client (the etcd port's C{Maintenance.Snapshot},
        not the operator's admin port): while auth is enabled, only a user
        with the root role may, as etcd's C{IsAdminPermitted} (a backup
        holds the whole state, the auth table's password hashes too).

        @raise Unavailable: the node has no member set yet; Unauthenticated,
            PermissionDenied: not a root user while auth is enabled (as the
            Deferred's failure).
        """
        unserved = self._unserved()
        if unserved is not None:
            return unserved
        try:
            self.auth.check_root(self.auth.user_of(credential))
        except ApiError:
            return defer.fail()
        return self.open_backup()

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


@dataclass(frozen=True)
class Interrupted:
    """A backup read stopped (the store's map grew, or the stream failed): C{message} says why; save again."""

    message: str


class BackupReader:
    """
    One backup stream read out by a client that may go at any moment:
    L{open}, L{read} until it answers None, and L{close} whenever the
    client goes (again: nothing).  The read transaction is closed exactly
    once: at the end of the state, on a failed read, or by L{close},
    which waits for an open or read under way to end (the store's stream
    takes one call at a time).  Reactor thread only; made anywhere.
    """

    def __init__(self, node, credential: Optional[Credential]) -> None:
        """
        @param node: a L{BackupSource} (C{open_backup_for}, C{read_backup},
            C{close_backup}).
        @param credential: the client's, checked by the node when it opens.
        """
        self._node = node
        self._credential = credential
        self._stream = None
        self._busy = False
        self._closed = False

    def open(self) -> defer.Deferred:
        """
        Open the stream: a Deferred of its L{SnapshotHeader}; failing as
        L{BackupSource.open_backup_for} does, or L{Unavailable} if the store
        cannot open one or L{close} came first.
        """
        assert self._stream is None and not self._busy, "a BackupReader opens once"
        if self._closed:
            return defer.fail(Unavailable("the snapshot stream was closed before it opened"))
        self._busy = True

        def opened(result):
            self._busy = False
            self._stream, header = result
            if self._closed:
                self._release()
                raise Unavailable("the snapshot stream was closed while it opened")
            return header

        def failed(failure):
            self._busy = False
            if failure.check(ApiError):
                return failure
            _log.failure("opening a snapshot stream for a client failed", failure)
            raise Unavailable(f"cannot open a snapshot: {failure.getErrorMessage()}")

        return self._node.open_backup_for(self._credential).addCallbacks(opened, failed)

    def read(self, max_bytes: int) -> defer.Deferred:
        """
        A Deferred of the next chunk's records (at most C{max_bytes}), None
        at the end of the state (the stream is then closed), or
        L{Interrupted} if the read stopped (the stream is then closed).
        """
        assert not self._busy, "one BackupReader call at a time"
        if self._stream is None or self._closed:
            return defer.succeed(Interrupted("the snapshot stream is closed"))
        self._busy = True

        def done(records):
            self._busy = False
            if records is None:
                self._stream = None  # the store closed it at the end
            if self._closed:
                self._release()
            return records

        def failed(failure):
            self._busy = False
            self._closed = True
            self._release()
            return Interrupted(f"the snapshot read stopped ({failure.getErrorMessage()}): save again")

        return self._node.read_backup(self._stream, max_bytes).addCallbacks(done, failed)

    def close(self) -> None:
        """The client is gone: close the stream now, or when the call under way ends."""
        self._closed = True
        if not self._busy:
            self._release()

    def _release(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._node.close_backup(stream).addErrback(
                lambda failure: _log.failure("closing a snapshot stream failed", failure))
