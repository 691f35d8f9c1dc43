"""
The node simulator's reference: the chosen log, replayed in slot order
through the real state machine code (L{kvpaxos.kv.machine} over a
L{kvpaxos.storage.memory.MemoryState}), one command at a time.

What it knows, for the checker in L{kvpaxos.testing.sim}:

  - the hash of the whole state (L{MemoryState.snapshot_data}, the bytes
    every provider encodes alike) after every slot, to compare each
    node's store with at its applied index;
  - the result of every request the first time it applied, by its tag
    (L{tag_of}), to compare every acknowledged result with;
  - the values of the simulated keys at every revision, to check what a
    range read returned at the revision it reports;
  - that a session command applied a second time changed nothing (unless
    the first was refused for permission, which a session does not keep:
    a retry is checked again);
  - the result of every auth command by its submission (its origin and
    request id), to settle an auth change whose answer was lost.

Nothing here looks at a clock, a thread or randomness.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Optional

from kvpaxos.kv import machine, sessions
from kvpaxos.kv.auth import AuthError, AuthRefused
from kvpaxos.kv.commands import CorruptCommand, Op, Request
from kvpaxos.encoding.commands import decode_request
from kvpaxos.kv.sessions import DEFAULT_LIMITS
from kvpaxos.paxos import Batch
from kvpaxos.storage.memory import MemoryState


#: The lease commands (issue 14), named by their lease (and TTL).
_LEASE_OPS = (Op.LEASE_GRANT, Op.LEASE_REVOKE, Op.LEASE_EXPIRE)


def tag_of(request: Request) -> tuple:
    """
    Return what names C{request} whoever proposed it: its session and
    sequence, or (no session) its content, which the simulator keeps
    unique by writing unique values; C{("open",)} for OPEN_SESSION; a
    lease command by its op, lease and TTL.
    """
    if request.op is Op.OPEN_SESSION:
        return ("open",)
    if request.op in _LEASE_OPS:
        # (No session; ids are unique to one grant in the simulator.)
        return ("lease", int(request.op), request.lease, request.ttl)
    if request.op is Op.AUTH:
        auth = request.auth  # without what its member adds (a salt's hash, a token key)
        return ("auth", int(auth.action), auth.name, auth.role, auth.permission)
    if request.client_id:
        return ("s", request.client_id, request.sequence)
    return ("n", int(request.op), request.key, request.value, request.txn)


def _denied(result) -> bool:
    return type(result) is AuthRefused and result.error is AuthError.PERMISSION_DENIED


def state_hash(data: bytes) -> bytes:
    """
    A digest of a whole encoded state, to compare a store with the
    reference's state at a slot.  SHA-256 (cut to 16 bytes): the checks hash
    every store after every commit, up to a megabyte each in the growth
    scenarios, and SHA-256 runs on the CPU's SHA instructions at over twice
    BLAKE2b's speed here.
    """
    return hashlib.sha256(data).digest()[:16]


class Reference:
    """
    The chosen log applied in order.

    @param keys: the simulated keys whose values are kept per revision.
    """

    def __init__(self, keys: tuple, limits=DEFAULT_LIMITS) -> None:
        self.keys = keys
        self.limits = limits
        self.state = MemoryState()
        self.applied = 0
        #: slot -> hash of the state after it.
        self.hashes: dict[int, bytes] = {0: state_hash(b"")}
        #: tag -> (slot, result) of its first application.
        self.results: dict[tuple, tuple] = {}
        self._revisions = [0]
        self._values = [tuple(None for _ in keys)]
        #: Client ids OPEN_SESSION assigned.
        self.opened: list[int] = []
        self.commands = 0
        #: (origin, request id) -> (slot, result) of every auth command.
        self.auth_applied: dict[tuple, tuple] = {}
        #: The last slot's commands as applied, in order: C{(request,
        #: result, revision before, revision after)} (the lease checks,
        #: L{kvpaxos.testing.simleasecheck}, follow each one).
        self.slot_results: list = []

    def apply(self, slot: int, value) -> Optional[str]:
        """
        Apply the value chosen at C{slot} (the next one); return what is
        wrong with it, or None.
        """
        assert slot == self.applied + 1, f"reference applies slot {slot} after {self.applied}"
        problem = None
        state = self.state
        self.slot_results = applied = []
        if type(value) is Batch:
            sessions.expire(state, slot, self.limits)
            for data in value.commands:
                try:
                    request = decode_request(data)
                except CorruptCommand as error:
                    problem = problem or f"slot {slot} holds a corrupt command: {error}"
                    continue
                before = state.revision()
                result = machine.apply(state, request, slot, self.limits)
                self.commands += 1
                applied.append((request, result, before, state.revision()))
                tag = tag_of(request)
                if request.op is Op.OPEN_SESSION:
                    self.opened.append(result.client_id)
                elif request.op is Op.AUTH:
                    self.auth_applied[(request.origin, request.request_id)] = (slot, result)
                    self.results.setdefault(tag, (slot, result))
                elif tag in self.results and not _denied(self.results[tag][1]):
                    if state.revision() != before:
                        problem = problem or (
                            f"{tag} applied again in slot {slot} (first in slot"
                            f" {self.results[tag][0]}) and changed the state"
                        )
                else:
                    self.results[tag] = (slot, result)
                revision = state.revision()
                if revision != before:
                    self._revisions.append(revision)
                    self._values.append(tuple(self._value(key) for key in self.keys))
        self.applied = slot
        self.hashes[slot] = state_hash(state.snapshot_data())
        return problem

    def _value(self, key: bytes):
        kv = self.state.get(key)
        return None if kv is None else kv.value

    def values_at(self, revision: int) -> Optional[tuple]:
        """The simulated keys' values at C{revision}, or None if not reached yet."""
        if revision > self._revisions[-1]:
            return None
        i = bisect_right(self._revisions, revision) - 1
        if self._revisions[i] != revision:
            return ()  # no command made this revision: impossible
        return self._values[i]
