"""
The errors of L{kvpaxos.encoding}, one per whose fault the bad bytes or
value are:

  - L{MalformedMessage}: a peer sent bytes that are not a message (the
    peer misbehaves, or runs another wire version);
  - L{CorruptState}: stored or transferred state (a record of the data
    directory, a snapshot) does not parse (a damaged disk, or a directory
    or snapshot written by another format version); also a
    L{kvpaxos.kv.commands.CorruptRecord}, the class the rest of the code
    catches;
  - L{StoreFormatError}: a data directory of another format version,
    refused as a whole when the store opens, naming the directory and what
    to do;
  - L{MalformedCommand}: a command in the log does not parse (only a
    misbehaving peer or a bug puts one there); also a
    L{kvpaxos.kv.commands.CorruptCommand};
  - L{EncodeError}: the caller asked to encode a value that has no
    encoding (a field out of range): the caller's fault.  A value of the
    wrong type is a C{TypeError}, as everywhere in Python.

Every decoding error is a L{DecodeError}.  Nothing else lives here.
"""

from __future__ import annotations

from kvpaxos.kv.commands import CorruptCommand, CorruptRecord


class DecodeError(ValueError):
    """Bytes that are not a valid encoding; see the subclasses for whose fault."""


class MalformedMessage(DecodeError):
    """
    Bytes from a peer are not one valid wire message: truncated, trailing
    bytes, an unknown version or tag, a length beyond the data, or a field
    out of range.  The peer's fault.
    """


class CorruptState(DecodeError, CorruptRecord):
    """
    Stored or transferred state is not of this format: a damaged disk, a
    misbehaving peer's snapshot, or data written by another version.  The
    node must not guess what it meant.
    """


class StoreFormatError(CorruptState):
    """
    A data directory holds a store of another format version (or something
    that is not a store); the operator's to resolve.  The message names the
    directory and what to do.
    """


class MalformedCommand(DecodeError, CorruptCommand):
    """Bytes in the log that are not a valid command (a misbehaving peer or a bug)."""


class EncodeError(ValueError):
    """A value has no encoding (a field out of range): the caller's fault."""
