"""
Tests for the exactly-once session table (L{kvpaxos.kv.sessions}): opening,
retries, stale and unknown sessions, eviction by size and expiry by slots,
the byte format of session entries, session fields of requests; and the
table kept by both stores across snapshot install and LMDB reopen.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import (
    CorruptCommand,
    CorruptRecord,
    DeleteResponse,
    InvalidArgument,
    KeyValue,
    Op,
    Put,
    PutResponse,
    Range,
    RangeResult,
    Request,
    Result,
    SessionExpired,
    SessionOpened,
    StaleSequence,
    Txn,
    TxnResult,
)
from kvpaxos.encoding.commands import COMMAND_VERSION, decode_request, encode_request
from kvpaxos.kv.machine import apply, apply_batch
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.reader import Reader
from kvpaxos.encoding.state import decode_session, encode_session, read_result, write_result
from kvpaxos.kv.sessions import Session, SessionLimits
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import NOOP, Batch, Snapshot
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryState, MemoryStore
from tests.test_kv import FUZZ

OPEN = Request(Op.OPEN_SESSION)
CONFIG = Config(frozenset({1}))


def append(value, client_id, sequence, key=b"k"):
    """Return an append request in session C{client_id}."""
    return Request(Op.APPEND, key, value, client_id=client_id, sequence=sequence)


class SessionTestCase(SynchronousTestCase):
    """A fresh state with small limits and helpers to apply batches to it."""

    limits = SessionLimits(max_sessions=3, ttl_slots=10)

    def setUp(self):
        self.state = MemoryState()

    def batch(self, slot, *requests):
        """Apply C{requests} as the batch chosen at C{slot}; return their results."""
        commands = [encode_request(r) for r in requests]
        return [result for _, result in apply_batch(self.state, commands, slot, self.limits)]

    def open(self, slot):
        """Open a session at C{slot} and return its client id."""
        (opened,) = self.batch(slot, OPEN)
        return opened.client_id


class SessionApplyTests(SessionTestCase):
    """What a request in a session gets, and what it changes."""

    def test_open_assigns_ids(self):
        """OPEN_SESSION assigns client ids 1, 2, 3, ... and changes no revision."""
        self.assertEqual(self.batch(1, OPEN, OPEN), [SessionOpened(1, 0), SessionOpened(2, 0)])
        self.assertEqual(self.state.revision(), 0)
        self.assertEqual(self.state.session(2), Session(0, 1))

    def test_retry_applies_once(self):
        """A retried request gets the original result and is applied only once."""
        client = self.open(1)
        first = self.batch(2, append(b"a", client, 1))
        again = self.batch(3, append(b"a", client, 1), append(b"a", client, 1))
        self.assertEqual(first, [Result(False, b"a", 1)])
        self.assertEqual(again, first * 2)
        self.assertEqual(self.state.get(b"k"), KeyValue(b"k", b"a", 1, 1, 1))

    def test_session_head_of_a_short_entry(self):
        """A stored session entry too short for its head is corrupt state, said so."""
        from kvpaxos.encoding.state import decode_session_head

        self.assertEqual(decode_session_head(encode_session(Session(7, 99, Result(True, b"v", 3)))), (7, 99))
        self.assertRaises(CorruptState, decode_session_head, b"\x00" * 15)

    def test_retry_changes_nothing(self):
        """A retry leaves the state, session entry included, byte for byte as it was."""
        client = self.open(1)
        self.batch(2, append(b"a", client, 1))
        before = self.state.snapshot_data()
        self.batch(3, append(b"a", client, 1))
        self.assertEqual(self.state.snapshot_data(), before)

    def test_next_sequence_applies(self):
        """A higher sequence applies and becomes the session's last, gaps allowed."""
        client = self.open(1)
        self.batch(2, append(b"a", client, 1), append(b"b", client, 2), append(b"c", client, 5))
        self.assertEqual(self.state.get(b"k").value, b"abc")
        self.assertEqual(self.state.session(client), Session(5, 2, Result(True, b"abc", 3)))

    def test_stale_sequence(self):
        """A sequence below the session's last is StaleSequence and changes nothing."""
        client = self.open(1)
        self.batch(2, append(b"a", client, 1), append(b"b", client, 2))
        before = self.state.snapshot_data()
        self.assertEqual(self.batch(3, append(b"x", client, 1)), [StaleSequence(client, 1, 2)])
        self.assertEqual(self.state.snapshot_data(), before)

    def test_unknown_session(self):
        """A request of a session never opened is SessionExpired, whatever its sequence, and changes nothing."""
        before = self.state.snapshot_data()
        self.assertEqual(self.batch(1, append(b"a", 9, 1), append(b"a", 9, 4)),
                         [SessionExpired(9, 1), SessionExpired(9, 4)])
        self.assertEqual(self.state.snapshot_data(), before)

    def test_transaction_result_saved(self):
        """A transaction in a session is applied once and its retry gets the same TxnResult."""
        client = self.open(1)
        request = Request(Op.TXN, txn=Txn((), (Put(b"a", b"1"), Range(b"a"))), client_id=client,
                          sequence=1)
        (first,) = self.batch(2, request)
        (again,) = self.batch(3, request)
        self.assertEqual(again, first)
        self.assertEqual(self.state.get(b"a").version, 1)

    def test_no_session_always_applies(self):
        """Requests without a session apply every time and record nothing."""
        self.batch(1, Request(Op.APPEND, b"k", b"a"), Request(Op.APPEND, b"k", b"a"))
        self.assertEqual(self.state.get(b"k").value, b"aa")
        self.assertEqual(self.state.session_count(), 0)


class SessionBoundsTests(SessionTestCase):
    """Eviction by size and expiry by slots, deterministic in log time."""

    def test_evict_least_recently_used(self):
        """Opening a session beyond max_sessions evicts the one used longest ago."""
        one, two, three = self.open(1), self.open(2), self.open(3)
        self.batch(4, append(b"a", one, 1))
        four = self.open(5)
        self.assertIsNone(self.state.session(two))
        self.assertEqual(sorted(self.state.sessions), [one, three, four])
        self.assertEqual(self.batch(6, append(b"a", two, 1)), [SessionExpired(two, 1)])

    def test_eviction_ties_by_client_id(self):
        """Sessions last used in the same slot are evicted lowest client id first."""
        self.batch(1, OPEN, OPEN, OPEN)
        self.batch(2, OPEN, OPEN)
        self.assertEqual(sorted(self.state.sessions), [3, 4, 5])

    def test_expire_after_ttl_slots(self):
        """A session unused for more than ttl_slots slots expires before the next batch applies."""
        client = self.open(1)
        self.batch(11, Request(Op.PUT, b"x", b""))
        self.assertIsNotNone(self.state.session(client))
        self.assertEqual(self.batch(12, append(b"a", client, 1)), [SessionExpired(client, 1)])
        self.assertEqual(self.state.session_count(), 0)

    def test_use_postpones_expiry(self):
        """Each applied request of a session restarts its time to live; a retry does not."""
        client = self.open(1)
        self.batch(5, append(b"a", client, 1))
        self.batch(14, append(b"a", client, 1))
        self.batch(15, Request(Op.PUT, b"x", b""))
        self.assertIsNotNone(self.state.session(client))
        self.batch(16, Request(Op.PUT, b"x", b""))
        self.assertIsNone(self.state.session(client))

    def test_bounds_are_deterministic(self):
        """Two replicas applying the same batches hold byte-identical session tables."""
        replicas = []
        for _ in range(2):
            self.state = MemoryState()
            for slot in range(1, 40):
                self.batch(slot, OPEN, append(b"%d" % slot, slot // 2 + 1, slot))
            replicas.append(self.state.snapshot_data())
        self.assertEqual(replicas[0], replicas[1])
        self.assertLessEqual(self.state.session_count(), 3)

    def test_default_limits(self):
        """By default the table holds 10,000 sessions for 1,000,000 slots."""
        self.assertEqual(SessionLimits(), SessionLimits(10_000, 1_000_000))
        state = MemoryState()
        apply(state, OPEN, 1)
        apply_batch(state, [], 1_000_001)
        self.assertEqual(state.session_count(), 1)
        apply_batch(state, [], 1_000_002)
        self.assertEqual(state.session_count(), 0)


KV = KeyValue(b"k", b"v" * 300, 2**64 - 1, 1, 2)
RESULTS = [
    None,
    Result(),
    Result(True, b"", 5, KV),
    Result(False, b"abc", 2**64 - 1),
    TxnResult(False),
    TxnResult(True, (PutResponse(), PutResponse(KV), DeleteResponse(3, (KV, KV)), DeleteResponse(),
                     RangeResult((KV,), 9, True, 4), RangeResult()), 8),
]


class SessionEncodingTests(SynchronousTestCase):
    """Session entries round-trip; anything else is CorruptRecord."""

    def test_round_trip(self):
        """Entries holding every kind of saved result decode to what was encoded."""
        for result in RESULTS:
            session = Session(2**64 - 1, 7, result)
            self.assertEqual(decode_session(encode_session(session)), session)

    def test_every_truncation(self):
        """Every proper prefix of an entry is CorruptRecord."""
        data = encode_session(Session(3, 4, RESULTS[-1]))
        for end in range(len(data)):
            self.assertRaises(CorruptRecord, decode_session, data[:end])

    def test_trailing_bytes(self):
        """An entry followed by extra bytes is CorruptRecord."""
        self.assertRaises(CorruptRecord, decode_session, encode_session(Session(1, 1)) + b"\x00")

    def test_unknown_tag(self):
        """An unknown result tag is CorruptRecord."""
        data = bytearray(encode_session(Session(1, 1)))
        data[-1] = 9
        self.assertRaises(CorruptRecord, decode_session, bytes(data))

    def test_only_saved_results(self):
        """Encoding a result sessions never save is a TypeError."""
        self.assertRaises(TypeError, write_result, SessionExpired(1, 1), [])

    def test_reader_refuses_overrun(self):
        """A length running past the end is CorruptRecord, not a short read."""
        reader = Reader(b"\x02\x01" + b"\x00" * 8 + b"\x00\x09", CorruptState, "x")
        self.assertRaises(CorruptRecord, read_result, reader)

    @FUZZ
    @given(st.data())
    def test_damaged_entries(self, data):
        """An entry with one byte changed or cut short decodes or raises CorruptRecord only."""
        encoded = bytearray(encode_session(Session(3, 4, RESULTS[-1]))[:200])
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
        end = data.draw(st.integers(0, len(encoded)))
        try:
            decode_session(bytes(encoded[:end]))
        except CorruptRecord:
            pass


class SessionRequestTests(SynchronousTestCase):
    """Session fields of requests: validation and the log format."""

    def test_round_trip(self):
        """Requests with sessions, prev_kv and OPEN_SESSION round-trip, in the one command version."""
        for request in (
            Request(Op.PUT, b"k", b"v", 1, 2, client_id=2**64 - 1, sequence=2**64 - 1),
            Request(Op.DELETE, b"k", prev_kv=True),
            Request(Op.APPEND, b"k", b"v", client_id=1, sequence=1, prev_kv=True),
            Request(Op.OPEN_SESSION, origin=3, request_id=4),
        ):
            data = encode_request(request)
            self.assertEqual(data[0], COMMAND_VERSION)
            self.assertEqual(decode_request(data), request)

    def test_plain_commands_carry_no_session(self):
        """A put, delete or append without a session is 16 bytes shorter than one with."""
        for op in (Op.PUT, Op.DELETE, Op.APPEND):
            plain = encode_request(Request(op, b"k"))
            with_session = encode_request(Request(op, b"k", client_id=1, sequence=1))
            self.assertEqual(len(with_session) - len(plain), 16)
            self.assertEqual(plain[0], COMMAND_VERSION)

    def test_session_fields_go_together(self):
        """A client id without a sequence, or a sequence without a client id, is InvalidArgument."""
        self.assertRaises(InvalidArgument, encode_request, Request(Op.PUT, b"k", client_id=1))
        self.assertRaises(InvalidArgument, encode_request, Request(Op.PUT, b"k", sequence=1))
        self.assertRaises(InvalidArgument, encode_request, Request(Op.PUT, b"k", client_id=-1, sequence=1))

    def test_open_session_takes_nothing(self):
        """OPEN_SESSION with a key, a value or a session is InvalidArgument."""
        for request in (Request(Op.OPEN_SESSION, b"k"), Request(Op.OPEN_SESSION, value=b"v"),
                        Request(Op.OPEN_SESSION, client_id=1, sequence=1)):
            self.assertRaises(InvalidArgument, encode_request, request)

    def test_unknown_flags(self):
        """A command with unknown header flags, or a session flag without a session, is CorruptCommand."""
        for flags in (4, 128, 2):
            data = bytearray(encode_request(Request(Op.OPEN_SESSION)))
            data[-1] = flags
            if flags == 2:
                data += bytes(16)
            self.assertRaises(CorruptCommand, decode_request, bytes(data))


class StoreSessionTests(SynchronousTestCase):
    """Both stores keep the session table across commits, snapshot installs and (LMDB) reopening."""

    limits = SessionLimits(max_sessions=2, ttl_slots=5)

    def lmdb(self, directory=None):
        """Return an LMDB store with small session limits."""
        store = LMDBStore(directory or self.mktemp(), CONFIG, map_bytes=256 << 10, limits=self.limits)
        self.addCleanup(store.close)
        return store

    def stores(self):
        """Return a memory store and an LMDB store, both with small limits."""
        return [MemoryStore(CONFIG, self.limits), self.lmdb()]

    def commit(self, store, slot, *requests):
        """Commit C{requests} as the batch at C{slot} (no-ops before it); return their results."""
        batch = Batch(tuple(encode_request(r) for r in requests))
        gap = [(s, NOOP) for s in range(store.applied_index() + 1, slot)]
        return [result for _, result in store.commit(Commit(None, [], None, False, gap + [(slot, batch)]))]

    def test_providers_agree(self):
        """Opening, retrying, evicting and expiring give identical results and snapshot bytes on both stores."""
        outcomes = []
        for store in self.stores():
            found = []
            for n, slot in enumerate([1, 2, 3, 4, 10, 11, 20]):
                found += self.commit(store, slot, OPEN, append(b"%d" % slot, n + 1, 1),
                                     append(b"%d" % slot, n + 1, 1), append(b"x", 1, 2))
            outcomes.append((found, store.snapshot_data(), store.revision()))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertIn(SessionExpired(1, 2), outcomes[0][0])

    def test_survive_reopen(self):
        """An LMDB store reopened keeps its sessions: a retry still gets the saved result."""
        store = self.lmdb()
        self.commit(store, 1, OPEN)
        (first,) = self.commit(store, 2, append(b"a", 1, 1))
        store.close()
        store = self.lmdb(store.directory)
        self.assertEqual(self.commit(store, 3, append(b"a", 1, 1)), [first])
        self.assertEqual(self.commit(store, 4, OPEN), [SessionOpened(2, 1)])
        self.assertEqual(store.get(b"k"), b"a")

    def test_survive_snapshot_install(self):
        """Sessions travel in snapshots: after installing one, a retry gets the saved result on either store."""
        for source in self.stores():
            self.commit(source, 1, OPEN)
            (first,) = self.commit(source, 2, append(b"a", 1, 1))
            data = source.snapshot_data()
            for target in self.stores():
                target.commit(Commit(None, [], Snapshot(2, CONFIG, data), True, []))
                self.assertEqual(target.snapshot_data(), data)
                self.assertEqual(self.commit(target, 3, append(b"a", 1, 1)), [first])
                self.assertEqual(self.commit(target, 4, OPEN), [SessionOpened(2, 1)])

    def test_failed_commit_keeps_sessions(self):
        """A commit that fails midway leaves the session table as it was on both stores."""
        for store in self.stores():
            self.commit(store, 1, OPEN, OPEN)
            before = store.snapshot_data()
            self.assertRaises(AssertionError, store.commit, Commit(None, [], None, False, [
                (2, Batch((encode_request(OPEN), encode_request(append(b"a", 1, 1))))),
                (9, Batch(())),
            ]))
            self.assertEqual(store.snapshot_data(), before)
            self.assertEqual(store.applied_index(), 1)
