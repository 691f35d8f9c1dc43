"""
L{ReadGate}: how the LMDB store keeps its read transactions apart from map
growth and from aborting a write transaction, without making a short read
(the reactor's) wait behind a long one (a snapshot copy in a pool thread).

Only the gate's bookkeeping lives here (one condition variable); no LMDB
call.  Its user is L{kvpaxos.storage.lmdb.LMDBStore}.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class ReadGate:
    """
    Keeps read transactions apart from map growth and from aborting a write
    transaction, without making a short read wait behind a long one.

    Why a gate: C{set_mapsize} replaces the map, and py-lmdb 3.0 then kills
    every read transaction open in this process (its next use raises
    C{lmdb.Error}); and a write transaction's abort waits until no LMDB
    call is in flight on any thread, which readers that never pause were
    seen to starve forever.  So the writer does both with the gate shut:
    no read transaction open.

    Two kinds of read hold the gate:

      - a short read (L{reading}): a few keys or ranges in one read
        transaction, as the reactor thread reads;
      - a long read (L{reading_long}): the whole state copied for a
        snapshot, O(state), in a pool thread.  It works in bounded steps
        (L{kvpaxos.storage.lmdb.SNAPSHOT_STEP_BYTES}) and, between two steps, leaves as soon as
        L{asked} says the writer waits: it closes its transaction, and
        starts over once the writer is done.

    The writer (L{exclusive}) first I{asks}: no long read starts, the open
    ones leave at their next step, and short reads still come and go.  Only
    once no long read is open does it I{shut} the gate to short reads, wait
    for those in flight and do its abort or growth; then it opens the gate.

    Invariant (the reactor thread never waits behind a long operation): a
    short read waits only while the gate is shut, and the gate is shut only
    while no long read is open, for one write transaction's abort and one
    remap of the map.  The writer waits for at most one step of each long
    read and one short read of each reader; a long read waits for the
    writer.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._short = 0
        self._long = 0
        #: The writer waits for the long reads to leave; none may start.
        self._asked = False
        #: The writer waits for (or holds) the gate; no read may start.
        self._shut = False

    @contextmanager
    def reading(self):
        """Hold the gate for one short read (waiting only while it is shut)."""
        with self._condition:
            while self._shut:
                self._condition.wait()
            self._short += 1
        try:
            yield
        finally:
            with self._condition:
                self._short -= 1
                if not self._short and self._shut:
                    self._condition.notify_all()

    @contextmanager
    def reading_long(self):
        """
        Hold the gate for one long read, which calls L{asked} between its
        bounded steps and, when that says C{True}, closes its transaction
        and leaves.  Waits while the writer asks (for one step of the other
        long reads, and the writer's own work).
        """
        with self._condition:
            while self._asked:
                self._condition.wait()
            self._long += 1
        try:
            yield
        finally:
            with self._condition:
                self._long -= 1
                if not self._long and self._asked:
                    self._condition.notify_all()

    def asked(self) -> bool:
        """Whether the writer waits for the long reads to leave."""
        return self._asked

    @contextmanager
    def exclusive(self):
        """
        Hold the gate shut (no read open) for an abort or a map resize; the
        writer's, one caller at a time.  The exclusive side goes first once
        it asks.
        """
        try:
            with self._condition:
                assert not self._asked, "the gate has one writer"
                self._asked = True
                # Wakes anyone watching the gate (a test) as well.
                self._condition.notify_all()
                while self._long:
                    self._condition.wait()
                self._shut = True
                while self._short:
                    self._condition.wait()
            yield
        finally:
            with self._condition:
                self._asked = self._shut = False
                self._condition.notify_all()
