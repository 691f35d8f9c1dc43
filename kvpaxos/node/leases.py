"""
L{Lessor}: the leader's deadlines of leases (issue 14), on its own
monotonic clock.

Leases live in the replicated state (L{kvpaxos.kv.leases}): a table of
C{id -> ttl}, the same on every member.  When one runs out is not
replicated: only the leader keeps a deadline per lease, in memory, and
only it decides that one has passed; it then proposes a C{LEASE_EXPIRE}
through the log (L{kvpaxos.node.lease_calls}), so every member deletes the
lease's keys at the same point of the log and a follower's clock never
matters.  A keep-alive moves a deadline without any log write.

The rules (etcd's lessor: C{Promote}, C{Renew}, C{Demote}):

  - L{promote}: a node that becomes leader starts every lease in its
    store at C{now + ttl + extend_s}, C{extend_s} being the election
    timeout (etcd issues 9395 and 15247): the previous leader may have
    acknowledged a keep-alive just before it was deposed, and an election
    must never expire leases in a mass.
  - L{granted} (a LEASE_GRANT applied while leading): C{now + ttl}.
  - L{refresh} (a keep-alive the leader confirmed it may answer):
    C{now + ttl}; refused for a lease past its deadline or whose expiry is
    in flight (etcd's C{Renew} too: a lease that ran out is not brought
    back, even before its expiry is applied).
  - L{revoked} (a LEASE_REVOKE or LEASE_EXPIRE applied, or refused as not
    found): the deadline is dropped.
  - L{demote} (leadership lost): everything is forgotten; a later
    leadership starts afresh from the store.
  - L{due}: leases past their deadline (strictly) and not being expired,
    earliest first, at most C{in_flight_max} being expired at once; each is
    marked in flight until L{expire_ended} (applied or failed: then it may
    be due again).

A deadline is never earlier than the acknowledgement it follows plus the
TTL: that is what lets a client holding a lease trust it for its TTL after
each answered keep-alive.  Pure: no I/O, no reactor; the clock is injected
(C{clock.seconds()}, monotonic).  Reactor thread only.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Optional

__all__ = ["IN_FLIGHT_MAX", "LeaseTime", "Lessor"]

#: The most LEASE_EXPIREs one leader has in flight at once.
IN_FLIGHT_MAX = 64


class LeaseTime(NamedTuple):
    """A lease's C{granted_ttl} (seconds, as granted) and C{remaining_s} (whole seconds left, rounded up)."""

    granted_ttl: int
    remaining_s: int


class Lessor:
    """
    One node's deadlines of leases while it leads.

    @param clock: the node's monotonic clock (C{seconds()}).
    @param extend_s: how much later than its TTL a lease runs out after a
        change of leader (the election timeout).
    @param in_flight_max: the most leases being expired at once.
    """

    def __init__(self, clock, extend_s: float, in_flight_max: int = IN_FLIGHT_MAX) -> None:
        self._clock = clock
        self.extend_s = extend_s
        self.in_flight_max = in_flight_max
        #: Whether this node leads, as last told (L{promote}, L{demote}).
        self.leading = False
        #: Which leadership the lessor serves: raised by every L{promote}
        #: and L{demote}, so an expiry proposed in an earlier one ends
        #: nothing of a later one (L{expire_ended}).
        self.term = 0
        self._deadline: dict[int, float] = {}
        self._expiring: set[int] = set()

    # --- leadership ------------------------------------------------------------

    def promote(self, items: Iterable[tuple[int, int]]) -> None:
        """This node became leader: every lease C{(id, ttl)} of its store runs out at now + ttl + extend."""
        self.demote()
        self.leading = True
        self.adopt(items)

    def adopt(self, items: Iterable[tuple[int, int]]) -> None:
        """
        While leading, give each lease C{(id, ttl)} that has no deadline yet
        (a snapshot installed under it) the deadline of a promotion.
        """
        if not self.leading:
            return
        start = self._clock.seconds() + self.extend_s
        deadline = self._deadline
        for lease, ttl in items:
            if lease not in deadline:
                deadline[lease] = start + ttl

    def demote(self) -> None:
        """This node no longer leads: forget every deadline and every expiry in flight."""
        self.term += 1
        self.leading = False
        self._deadline.clear()
        self._expiring.clear()

    # --- what the log and the clients do -----------------------------------------

    def granted(self, lease: int, ttl: int) -> None:
        """
        A LEASE_GRANT of C{lease} for C{ttl} seconds applied here: it runs
        out at now + ttl (or later, if a promotion that read the store
        after the grant gave it more).
        """
        if self.leading:
            at = self._clock.seconds() + ttl
            self._deadline[lease] = max(at, self._deadline.get(lease, at))

    def revoked(self, lease: int) -> None:
        """C{lease} is gone from the store (revoked, expired, or found missing)."""
        self._deadline.pop(lease, None)
        self._expiring.discard(lease)

    def refresh(self, lease: int, ttl: int, since: Optional[float] = None) -> bool:
        """
        A keep-alive of C{lease}, whose TTL is C{ttl}: it runs out at
        C{since} (when this leader began to confirm that it leads; default
        now) + ttl, never sooner than it already did.  Return False,
        changing nothing, if this node does not lead, or the lease is past
        its deadline or being expired (the keep-alive is answered "not
        found").
        """
        if not self.leading or lease in self._expiring:
            return False
        now = self._clock.seconds()
        if self._deadline.get(lease, now) < now:
            return False
        at = (now if since is None else since) + ttl
        self._deadline[lease] = max(at, self._deadline.get(lease, at))
        return True

    def remaining(self, lease: int, ttl: int) -> Optional[int]:
        """
        The whole seconds until C{lease} (of TTL C{ttl}) runs out, rounded
        up (0 once past, or while its expiry is in flight); None if this
        node does not lead.  A lease with no deadline here counts its TTL.
        """
        if not self.leading:
            return None
        if lease in self._expiring:
            return 0
        deadline = self._deadline.get(lease)
        if deadline is None:
            return ttl
        return max(0, math.ceil(deadline - self._clock.seconds()))

    def expiring(self, lease: int) -> bool:
        """Whether an expiry of C{lease} is in flight."""
        return lease in self._expiring

    # --- expiry ---------------------------------------------------------------------

    def due(self) -> list[int]:
        """
        Return the leases to expire now, earliest deadline first (then by
        id), and mark them in flight: past their deadline, not in flight
        already, at most C{in_flight_max} in flight in all.
        """
        if not self.leading:
            return []
        room = self.in_flight_max - len(self._expiring)
        if room <= 0:
            return []
        now = self._clock.seconds()
        past = sorted((at, lease) for lease, at in self._deadline.items()
                      if at < now and lease not in self._expiring)
        chosen = [lease for _, lease in past[:room]]
        self._expiring.update(chosen)
        return chosen

    def expire_ended(self, lease: int, term: int) -> None:
        """
        The expiry of C{lease} proposed in leadership C{term} ended without
        its lease being revoked (it failed or timed out): it may be due again.
        """
        if term == self.term:
            self._expiring.discard(lease)

    def deadline(self, lease: int) -> Optional[float]:
        """When C{lease} runs out on the node's clock, or None (tests, status)."""
        return self._deadline.get(lease)

    def __len__(self) -> int:
        return len(self._deadline)
