"""
The history of writes in bytes (issue 14): history keys, events
(L{kvpaxos.encoding.history}: the stored-bytes encoders agree with
L{encode_event}, every reader refuses hostile bytes with L{CorruptState}),
the history part of a snapshot (format 5; formats 3 and 4 read with the
compacted revision at revision + 1), and L{whole_revisions}.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.errors import CorruptState, EncodeError
from kvpaxos.encoding.history import (
    decode_event,
    decode_history_item,
    decode_history_key,
    encode_delete_event_of,
    encode_event,
    encode_history_key,
    encode_put_event_of,
)
from kvpaxos.encoding.state import SNAPSHOT_FORMAT, SnapshotState, decode_snapshot, encode_record, encode_snapshot
from kvpaxos.kv.commands import MAX_KEY_BYTES, KeyValue
from kvpaxos.kv.history import Event, EventKind, compacted_without_history, delete_event, put_event, whole_revisions

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)

OLD = KeyValue(b"key", b"old", 1, 2, 2)
NEW = KeyValue(b"key", b"new value", 2, 2, 5)
EVENTS = (put_event(KeyValue(b"key", b"v", 1, 5, 5), None), put_event(NEW, OLD), delete_event(OLD, 5))


def snapshot(revision: int, compacted: int, events) -> bytes:
    """A snapshot of one record at C{revision} with C{events}: C{(revision, index, Event)}s."""
    return encode_snapshot(
        revision, 1, [(b"r", encode_record(KeyValue(b"r", b"", 1, 1, 1)))], [], [], compacted,
        [(encode_history_key(r, i), encode_event(e)) for r, i, e in events],
    )


class HistoryKeyTests(SynchronousTestCase):
    def test_keys_sort_as_positions(self):
        """History keys are 12 bytes whose byte order is (revision, index) order."""
        positions = [(1, 0), (1, 1), (1, 256), (2, 0), (256, 0), (2**40, 2**32 - 1)]
        keys = [encode_history_key(r, i) for r, i in positions]
        self.assertEqual(sorted(keys), keys)
        self.assertEqual({len(key) for key in keys}, {12})
        self.assertEqual([decode_history_key(key) for key in keys], positions)

    def test_bad_keys_refused(self):
        """A key not 12 bytes long, or of revision 0, is refused."""
        for key in (b"", b"\0" * 11, b"\0" * 13, encode_history_key(0, 3)):
            self.assertRaises(CorruptState, decode_history_key, key)


class EventTests(SynchronousTestCase):
    def test_round_trip(self):
        """Each kind of event decodes as it was encoded, at its revision."""
        for event in EVENTS:
            self.assertEqual(decode_event(5, encode_event(event)), event)
        self.assertEqual(decode_history_item(encode_history_key(5, 2), encode_event(EVENTS[2])),
                         (5, 2, EVENTS[2]))

    def test_layout(self):
        """kind, key, the new record (a put only), has_prev and the previous record: the stored bytes as they are."""
        new, old = encode_record(NEW), encode_record(OLD)
        self.assertEqual(encode_event(EVENTS[1]), b"\x00\x00\x03key" + new + b"\x01" + old)
        self.assertEqual(encode_event(EVENTS[2]), b"\x01\x00\x03key\x01" + old)
        self.assertEqual(encode_put_event_of(b"key", new, old), encode_event(EVENTS[1]))
        self.assertEqual(encode_put_event_of(b"key", encode_record(EVENTS[0].kv), None), encode_event(EVENTS[0]))
        self.assertEqual(encode_delete_event_of(b"key", old), encode_event(EVENTS[2]))

    def test_unencodable_events(self):
        """A delete without its previous record, or a previous record of another key, has no encoding."""
        self.assertRaises(EncodeError, encode_event, Event(EventKind.DELETE, KeyValue(b"k", b"", 0, 0, 3), None))
        self.assertRaises(EncodeError, encode_event, put_event(NEW, KeyValue(b"other", b"", 1, 1, 1)))

    def test_every_truncation_and_trailing_byte_refused(self):
        """Every proper prefix of an event, and an event with a byte after it, is refused."""
        for event in EVENTS:
            data = encode_event(event)
            for end in range(len(data)):
                self.assertRaises(CorruptState, decode_event, 5, data[:end])
            self.assertRaises(CorruptState, decode_event, 5, data + b"\0")

    def test_impossible_events_refused(self):
        """Unknown kinds and flags, bad keys, a put not of its revision, impossible or missing previous records."""
        record = encode_record
        bad = [
            b"\x02" + encode_event(EVENTS[0])[1:],  # unknown kind
            encode_event(EVENTS[0])[:-1] + b"\x02",  # flag byte 2
            b"\x00\x00\x00" + record(KeyValue(b"", b"", 1, 5, 5)) + b"\x00",  # empty key
            encode_put_event_of(b"k" * (MAX_KEY_BYTES + 1), record(KeyValue(b"k", b"", 1, 5, 5)), None),
            encode_put_event_of(b"k", record(KeyValue(b"k", b"", 1, 4, 4)), None),  # not of revision 5
            encode_put_event_of(b"k", record(KeyValue(b"k", b"", 0, 5, 5)), None),  # version 0
            encode_put_event_of(b"k", record(KeyValue(b"k", b"", 1, 0, 5)), None),  # created at 0
            encode_put_event_of(b"k", record(KeyValue(b"k", b"", 2, 5, 5)), record(KeyValue(b"k", b"", 1, 1, 6))),
            encode_delete_event_of(b"k", record(KeyValue(b"k", b"", 1, 3, 2))),  # created after modified
            b"\x01\x00\x01k\x00",  # a delete without its previous record
        ]
        for data in bad:
            self.assertRaises(CorruptState, decode_event, 5, data)
        self.assertRaises(CorruptState, decode_event, 5, "not bytes")

    @FUZZ
    @given(st.data())
    def test_damaged_events(self, data):
        """An event with one byte changed decodes or raises CorruptState only."""
        encoded = bytearray(encode_event(data.draw(st.sampled_from(EVENTS))))
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
        try:
            decode_event(data.draw(st.integers(0, 7)), bytes(encoded))
        except CorruptState:
            pass


class SnapshotHistoryTests(SynchronousTestCase):
    def test_current_format(self):
        """Snapshots are written in format 5."""
        self.assertEqual(SNAPSHOT_FORMAT, 5)
        self.assertEqual(snapshot(5, 0, [])[0], 5)

    def test_round_trip(self):
        """A snapshot's compacted revision and events decode as they were encoded."""
        events = [(2, 0, put_event(KeyValue(b"a", b"1", 1, 2, 2), None)), (5, 0, EVENTS[1]), (5, 1, EVENTS[2])]
        found = decode_snapshot(snapshot(6, 2, events))
        self.assertEqual((found.revision, found.compacted, found.events), (6, 2, tuple(events)))

    def test_empty_state(self):
        """The empty state is still no bytes; a compacted revision alone is not empty."""
        self.assertEqual(encode_snapshot(0, 1, [], [], []), b"")
        self.assertEqual(decode_snapshot(b""), SnapshotState(compacted=0, events=()))
        data = encode_snapshot(0, 1, [], [], [], compacted=1)
        self.assertEqual(decode_snapshot(data).compacted, 1)

    def test_older_formats_have_no_history(self):
        """Formats 4 and 3 read with no events and the compacted revision at revision + 1."""
        data = snapshot(7, 0, [])
        format_4 = bytes([4]) + data[1:-32]  # no compacted, nevents, nleases, nattached
        format_3 = bytes([3]) + data[1:-40]  # and no nauth
        for old in (format_4, format_3):
            found = decode_snapshot(old)
            self.assertEqual((found.revision, found.compacted, found.events), (7, 8, ()))
            self.assertEqual([kv.key for kv in found.records], [b"r"])
        self.assertEqual(compacted_without_history(7), 8)
        self.assertRaises(CorruptState, decode_snapshot, format_4 + bytes(8))

    def test_unsound_history_refused(self):
        """Events out of order or repeated, outside compacted..revision, a compacted revision past revision + 1."""
        a, b = put_event(KeyValue(b"a", b"", 1, 3, 3), None), put_event(KeyValue(b"b", b"", 1, 4, 4), None)
        for revision, compacted, events in (
            (5, 0, [(4, 0, b), (3, 0, a)]),
            (5, 0, [(3, 1, a), (3, 0, a)]),
            (5, 0, [(3, 0, a), (3, 0, a)]),
            (5, 4, [(3, 0, a)]),
            (3, 0, [(4, 0, b)]),
            (5, 7, []),
            (5, 0, [(0, 0, put_event(KeyValue(b"a", b"", 1, 0, 0), None))]),
            (5, 0, [(4, 0, a)]),  # an event not of its key's revision
        ):
            self.assertRaises(CorruptState, decode_snapshot, snapshot(revision, compacted, events))
        self.assertEqual(decode_snapshot(snapshot(5, 6, [])).compacted, 6)

    def test_every_truncation_refused(self):
        """Every proper non-empty prefix of a snapshot with history, and one with a byte after it, is refused."""
        data = snapshot(5, 2, [(3, 0, put_event(KeyValue(b"a", b"1", 1, 3, 3), None)), (5, 0, EVENTS[2])])
        for end in range(1, len(data)):
            self.assertRaises(CorruptState, decode_snapshot, data[:end])
        self.assertRaises(CorruptState, decode_snapshot, data + b"\0")

    def test_huge_event_count_refused_cheaply(self):
        """An event count the bytes cannot hold is refused before reading events."""
        data = snapshot(5, 0, [])[:-24] + struct.pack(">QQQ", 2**40, 0, 0)
        self.assertRaises(CorruptState, decode_snapshot, data)


class WholeRevisionsTests(SynchronousTestCase):
    def test_stops_at_a_revision_boundary(self):
        """At least max_events items, whole revisions only, at least one revision."""
        pairs = [(1, "a"), (1, "b"), (2, "c"), (3, "d"), (3, "e"), (3, "f")]
        self.assertEqual(whole_revisions(iter(pairs), 1), pairs[:2])
        self.assertEqual(whole_revisions(iter(pairs), 2), pairs[:2])
        self.assertEqual(whole_revisions(iter(pairs), 3), pairs[:3])
        self.assertEqual(whole_revisions(iter(pairs), 4), pairs)
        self.assertEqual(whole_revisions(iter(pairs), 0), pairs[:2])
        self.assertEqual(whole_revisions(iter([]), 5), [])
