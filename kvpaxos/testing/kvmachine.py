"""
A small replicated state machine for the simulator: a key-value map whose
every applied slot extends a running digest, so that two replicas that
applied through the same slot can be compared in O(1).

Commands are C{b"<client>:<seq>:<op>:<key>:<value>"} with op C{put} or
C{append}.
"""

from __future__ import annotations

import hashlib
import json

from zope.interface import implementer

from kvpaxos.paxos.config import ConfigChange
from kvpaxos.paxos.messages import Batch, Noop
from kvpaxos.storage.interfaces import IStateMachine


def encode_command(client: int, seq: int, op: str, key: str, value: str) -> bytes:
    """Return the bytes of one simulated client command."""
    return f"{client}:{seq}:{op}:{key}:{value}".encode()


def describe(value) -> bytes:
    """Return a canonical byte string for a slot value, for digests."""
    if type(value) is Batch:
        return b"B" + b"\x00".join(value.commands)
    if type(value) is ConfigChange:
        return f"C{value.kind.value}:{value.node}".encode()
    assert type(value) is Noop, f"unknown slot value {value!r}"
    return b"N"


@implementer(IStateMachine)
class DigestKV:
    """The simulator's state machine: a dict plus a digest chain per slot."""

    #: Set for a durable machine: it outlives crashes, and the core compacts
    #: without copying it (see C{IStateMachine}).
    durable = False

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.index = 0
        self.digest = b""

    def apply(self, slot: int, value) -> None:
        """Apply the value chosen in C{slot} (slots arrive in order)."""
        assert slot == self.index + 1, f"applied slot {slot} after {self.index}"
        if type(value) is Batch:
            data = self.data
            for command in value.commands:
                _, _, op, key, val = command.decode().split(":", 4)
                if op == "put":
                    data[key] = val
                else:
                    data[key] = data.get(key, "") + val
        self.index = slot
        self.digest = hashlib.blake2b(self.digest + describe(value), digest_size=16).digest()

    def snapshot(self) -> bytes:
        return json.dumps(
            [self.index, self.digest.hex(), sorted(self.data.items())]
        ).encode()

    def snapshot_now(self) -> tuple[int, bytes]:
        """The state and the slot it has applied through (durable machines)."""
        return self.index, self.snapshot()

    def restore(self, data: bytes, index: int) -> None:
        """Replace the state with a snapshot's C{data} taken at C{index}."""
        if not data:
            self.data, self.index, self.digest = {}, index, b""
            return
        saved_index, digest, items = json.loads(data)
        assert saved_index == index, f"snapshot data at {saved_index}, not {index}"
        self.index = index
        self.digest = bytes.fromhex(digest)
        self.data = dict(items)
