"""
Tests for the snapshot transfer stream's encoding
(L{kvpaxos.encoding.transfer}): every message round-trips, each fits one
AMP value, and a peer's malformed bytes raise L{MalformedMessage} only.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.errors import EncodeError, MalformedMessage
from kvpaxos.encoding.transfer import (
    CHUNK_BYTES_MAX,
    MESSAGE_BYTES_MAX,
    TABLE_RECORDS,
    TABLE_SESSIONS,
    Digest,
    SnapshotAbort,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
    decode,
    decode_records,
    encode,
    encode_records,
)
from kvpaxos.paxos.config import Config

CONFIG = Config(frozenset({1, 2, 3}), frozenset({4}))

MESSAGES = [
    SnapshotOffer(1, 2, 9, 1234, CONFIG, 77, 5),
    SnapshotChunk(1, 2, 9, 0, b""),
    SnapshotChunk(1, 2, 9, 3, b"x" * CHUNK_BYTES_MAX),
    SnapshotAck(2, 1, 9, 3),
    SnapshotDone(1, 2, 9, 4, b"d" * 16),
    SnapshotAbort(2, 1, 9, "not wanted"),
]


class TransferEncodingTests(SynchronousTestCase):
    def test_round_trip(self):
        """Every transfer message decodes to an equal message."""
        for message in MESSAGES:
            self.assertEqual(decode(encode(message)), message)

    def test_fits_one_amp_value(self):
        """The largest chunk's encoding is within one AMP value."""
        self.assertLessEqual(len(encode(MESSAGES[2])), MESSAGE_BYTES_MAX)
        self.assertLess(MESSAGE_BYTES_MAX, 65_535)

    def test_truncated(self):
        """Every proper prefix of an encoding is refused."""
        for message in MESSAGES:
            data = encode(message)
            for end in range(len(data) - 1 if len(data) < 100 else 30):
                self.assertRaises(MalformedMessage, decode, data[:end])

    def test_trailing_bytes(self):
        """Bytes after a message are refused."""
        for message in MESSAGES:
            self.assertRaises(MalformedMessage, decode, encode(message) + b"\0")

    def test_unknown_tag_and_format(self):
        """An unknown tag or format byte is refused with a clear error."""
        data = bytearray(encode(MESSAGES[3]))
        data[1] = 99
        error = self.assertRaises(MalformedMessage, decode, bytes(data))
        self.assertIn("unknown tag 99", str(error))
        data[1], data[0] = 3, 2
        self.assertIn("format 2", str(self.assertRaises(MalformedMessage, decode, bytes(data))))

    def test_oversized(self):
        """A chunk over the cap is refused on decode, and cannot be encoded."""
        data = encode(MESSAGES[2])
        self.assertRaises(MalformedMessage, decode, data + b"\0" * 100)
        self.assertRaises(EncodeError, encode, SnapshotChunk(1, 2, 9, 0, b"x" * (CHUNK_BYTES_MAX + 1)))
        self.assertRaises(EncodeError, encode, SnapshotDone(1, 2, 9, 0, b"short"))

    def test_not_bytes(self):
        """Something that is not bytes is a MalformedMessage, and a non-message a TypeError."""
        self.assertRaises(MalformedMessage, decode, 5)
        self.assertRaises(TypeError, encode, object())

    def test_records_round_trip(self):
        """A chunk's records round-trip, pieces flagged."""
        items = [(b"a", b"1", False), (b"b", b"2" * 10, True)]
        self.assertEqual(decode_records(encode_records(TABLE_RECORDS, items)), (TABLE_RECORDS, items))
        self.assertEqual(decode_records(encode_records(TABLE_SESSIONS, [])), (TABLE_SESSIONS, []))

    def test_records_malformed(self):
        """A bad table, a count past the data, a bad flag or trailing bytes are refused."""
        good = encode_records(TABLE_RECORDS, [(b"a", b"1", False)])
        for bad in (b"\x08" + good[1:], b"\x00" + good[1:], good[:1] + b"\xff\xff\xff\xff" + good[5:],
                    good[:8] + b"\x05" + good[9:], good + b"\0", b""):
            self.assertRaises(MalformedMessage, decode_records, bad)

    def test_digest_order_matters(self):
        """The digest depends on the chunks and their order."""
        one, two = Digest(), Digest()
        one.add(b"a"), one.add(b"b")
        two.add(b"b"), two.add(b"a")
        self.assertNotEqual(one.digest(), two.digest())
        self.assertEqual(one.count, 2)
