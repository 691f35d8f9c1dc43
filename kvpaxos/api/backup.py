"""
The snapshot file of C{kvpaxos snapshot save} (issue 13, part 4): a
node's whole replicated state as of one read transaction, with what a
restore needs to know, checksummed.  Both sides import it: the CLI that
writes and checks files, and C{kvpaxos.restore}, which makes a new
cluster's data directory from one.

The layout, every integer big-endian::

    magic      b"KVPAXOS-SNAPSHOT\\n", then a u32 format version (3)
    header     u32 length, then that many bytes of UTF-8 JSON: the member
               that saved it, the cluster id, the applied slot the state is
               at (C{index}), the store's C{revision} and C{next_client_id},
               the member set as that member knew it, when it was saved
    chunks     each: u32 length (1..CHUNK_BYTES_MAX), then that many bytes
               of records, as a snapshot transfer's chunk carries them
               (L{kvpaxos.encoding.transfer.encode_records}): the
               records, then the sessions, then the auth table, then the
               history's compacted revision, then its events, then the
               lease table, then the keys attached to leases
    end        u32 0
    trailer    32 bytes: SHA-256 of every byte before it

A file that ends early, has bytes after the trailer, or whose checksum
does not match is refused as a whole (L{SnapshotFileError}, saying which);
the records themselves are checked again as they are restored.

The one thing that may follow the trailer is etcd's envelope, which the
etcd port's C{Maintenance.Snapshot} adds (L{EtcdEnvelope}) because
etcdctl's C{snapshot save} keeps only a file of N * 512 + 32 bytes (etcd's
C{hasChecksum}: a bbolt file's pages, then its SHA-256)::

    padding    0..511 zero bytes, to a multiple of ETCD_SECTOR_BYTES
    checksum   32 bytes: SHA-256 of every byte before it

So a file etcdctl saved is a kvpaxos file, read and restored as any; the
envelope is checked as exactly as the rest (its padding zero and of the
one length that fits, its checksum matching, nothing after it).

Format 2 is format 1 with the auth table's chunks (table 3) after the
sessions: the layout is the same, so format 1 is still read (its files
have no auth table), while a kvpaxos that reads format 1 only refuses a
format-2 file at once, saying so, rather than losing or refusing its auth
table halfway through a restore.  Format 3 is format 2 with the history
of writes after the auth table (tables 4, the compacted revision, and 5,
the events) and then the leases (tables 6, the lease table, and 7, the
attached keys); formats 1 and 2 are still read, and restore with no
events, no leases and the compacted revision C{revision + 1} (the
staging's rule for a state without history: a watch from any older
revision is told "compacted", never given a gap).  The leases restore as
they were saved (their TTLs as granted): the new cluster's leader gives
each its TTL and an election timeout from when it takes over, as after
any election.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

MAGIC = b"KVPAXOS-SNAPSHOT\n"
#: The format version written.
FORMAT = 3
#: The format versions read (1: before the auth table; 2: before the history).
READ_FORMATS = (1, 2, FORMAT)
#: The largest chunk a file may hold (a chunk is one AMP value on the way).
CHUNK_BYTES_MAX = 60_000
#: The largest header (JSON) a file may hold.
HEADER_BYTES_MAX = 1 << 20
#: etcdctl's sector: the size of a file it saves, less its checksum, is a multiple of it.
ETCD_SECTOR_BYTES = 512
_U32 = struct.Struct(">I")
_DIGEST_BYTES = 32


class SnapshotFileError(ValueError):
    """The file is not a whole, intact kvpaxos snapshot file."""


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot file says about the state in it."""

    member_id: int
    cluster_id: int
    index: int
    revision: int
    next_client_id: int
    #: [{"id", "role", "peer", "client"}] as the saving member knew them.
    members: list = field(default_factory=list)
    saved_at: str = ""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "SnapshotHeader":
        try:
            fields = json.loads(data.decode("utf-8"))
            header = cls(
                int(fields["member_id"]), int(fields["cluster_id"]), int(fields["index"]),
                int(fields["revision"]), int(fields["next_client_id"]), list(fields.get("members", [])),
                str(fields.get("saved_at", "")),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise SnapshotFileError(f"the header is not a snapshot header: {error}") from None
        if min(header.index, header.revision, header.next_client_id, header.member_id) < 0:
            raise SnapshotFileError("the header has a negative index, revision, client id or member id")
        return header


class SnapshotWriter:
    """Writes one snapshot file to C{out} (a binary file), hashing as it goes."""

    def __init__(self, out: BinaryIO, header: SnapshotHeader) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.bytes = 0
        data = header.to_json()
        self._write(MAGIC + _U32.pack(FORMAT) + _U32.pack(len(data)) + data)

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._out.write(data)
        self.bytes += len(data)

    def chunk(self, records: bytes) -> None:
        if not 0 < len(records) <= CHUNK_BYTES_MAX:
            raise ValueError(f"a chunk of {len(records)} bytes (1..{CHUNK_BYTES_MAX})")
        self._write(_U32.pack(len(records)) + records)

    def finish(self) -> str:
        """Write the end and the trailer; return the SHA-256 (hex)."""
        self._write(_U32.pack(0))
        digest = self._hash.digest()
        self._out.write(digest)
        self.bytes += len(digest)
        return digest.hex()


class EtcdEnvelope:
    """
    A snapshot file's bytes in etcd's envelope, for the etcd port's
    C{Maintenance.Snapshot}: the C{out} a L{SnapshotWriter} writes to,
    collecting what it wrote until L{take}n, then L{finish}ed with etcd's
    padding and checksum (see the module docstring).  In memory: a stream
    takes each chunk's bytes as it is written.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        #: Every byte written so far: the file's, then the padding (not the checksum).
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._pending.append(bytes(data))
        self.bytes += len(data)

    def take(self) -> bytes:
        """The bytes written since the last take (b"": none)."""
        data, self._pending = b"".join(self._pending), []
        return data

    def finish(self) -> bytes:
        """
        Write the padding (once the L{SnapshotWriter} has finished) and
        return the checksum: the last 32 bytes of what is sent, which are
        not written here, so that the caller sends them apart as etcd
        does; L{take} the rest first.
        """
        self.write(bytes(-self.bytes % ETCD_SECTOR_BYTES))
        return self._hash.digest()


def _etcd_envelope(reader: "_Reader", trailer: bytes, source: BinaryIO) -> None:
    """
    Check what follows the trailer: nothing, or etcd's envelope exactly.

    @raise SnapshotFileError: anything else.
    """
    rest = source.read(ETCD_SECTOR_BYTES + _DIGEST_BYTES)
    if not rest:
        return
    end = reader.offset + len(trailer)  # the kvpaxos file's size
    padding, digest = rest[:-_DIGEST_BYTES], rest[-_DIGEST_BYTES:]
    whole = reader.hash.copy()
    whole.update(trailer + padding)
    if (len(rest) != -end % ETCD_SECTOR_BYTES + _DIGEST_BYTES or padding.count(0) != len(padding)
            or source.read(1)):
        raise SnapshotFileError("bytes follow the checksum: the file is damaged or two files were joined")
    if digest != whole.digest():
        raise SnapshotFileError("the etcd checksum (the last 32 bytes) does not match: the file is damaged")


class _Reader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.hash = hashlib.sha256()
        self.offset = 0

    def read(self, size: int, what: str) -> bytes:
        data = self._source.read(size)
        if len(data) != size:
            raise SnapshotFileError(
                f"the file is truncated: it ends at byte {self.offset + len(data)}, inside {what}")
        self.hash.update(data)
        self.offset += size
        return data

    def u32(self, what: str) -> int:
        return _U32.unpack(self.read(_U32.size, what))[0]


def read_snapshot(source: BinaryIO) -> tuple[SnapshotHeader, Iterator[bytes]]:
    """
    Read a snapshot file: return its header and an iterator of its chunks'
    records.  The iterator checks the end, the trailer and that nothing
    follows it once the last chunk was taken: use every chunk only after
    it is exhausted (L{verify} reads a file through), or stage them and
    discard what was staged if it raises.

    @raise SnapshotFileError: not a snapshot file, another format, a bad
        header, a bad chunk length, truncated, a checksum that does not
        match, or bytes after the trailer other than etcd's envelope.
    """
    reader = _Reader(source)
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise SnapshotFileError("not a kvpaxos snapshot file (its first bytes are not KVPAXOS-SNAPSHOT)")
    reader.hash.update(magic)
    reader.offset = len(magic)
    version = reader.u32("the format version")
    if version not in READ_FORMATS:
        raise SnapshotFileError(f"snapshot format {version}; this kvpaxos reads formats"
                                f" {', '.join(map(str, READ_FORMATS))}")
    length = reader.u32("the header length")
    if length > HEADER_BYTES_MAX:
        raise SnapshotFileError(f"a header of {length} bytes (at most {HEADER_BYTES_MAX})")
    header = SnapshotHeader.from_json(reader.read(length, "the header"))

    def chunks() -> Iterator[bytes]:
        while True:
            size = reader.u32("a chunk length")
            if size == 0:
                break
            if size > CHUNK_BYTES_MAX:
                raise SnapshotFileError(f"a chunk of {size} bytes at byte {reader.offset - 4} (at most"
                                        f" {CHUNK_BYTES_MAX}): the file is damaged")
            yield reader.read(size, "a chunk")
        expected = reader.hash.digest()
        trailer = source.read(_DIGEST_BYTES)
        if len(trailer) != _DIGEST_BYTES:
            raise SnapshotFileError(f"the file is truncated: its checksum (the last {_DIGEST_BYTES} bytes) is"
                                    " missing")
        if trailer != expected:
            raise SnapshotFileError("the checksum does not match: the file is damaged")
        _etcd_envelope(reader, trailer, source)

    return header, chunks()


def verify(path: str) -> tuple[SnapshotHeader, int, int]:
    """
    Read the file at C{path} through: return its header, its chunk count
    and its size in bytes.

    @raise SnapshotFileError: see L{read_snapshot}; OSError: unreadable.
    """
    with open(path, "rb") as source:
        header, chunks = read_snapshot(source)
        count = sum(1 for _ in chunks)
        size = source.tell()
    return header, count, size
