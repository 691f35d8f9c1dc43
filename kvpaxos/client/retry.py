"""
The retry policy (pure objects that are told the time and never sleep,
send or read a clock) and the session pool: L{Directory} (what the client
knows of the cluster), L{Backoff}, L{Attempts} (the attempts of one
request: L{Try}, L{Pause} or L{Refresh}), L{RetryPolicy}, L{Session}, L{SessionPool}.
The clients (L{kvpaxos.client.blocking}, L{kvpaxos.client.aio}) drive them
with their own I/O; the rules are in the package docstring
(L{kvpaxos.client}).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from kvpaxos.api.endpoints import BadEndpoint, join_host_port, split_host_port
from kvpaxos.client.errors import (
    AuthRefused, Failure, OutcomeUnknown, PermissionDenied, SessionExpired, StaleSequence, Unauthenticated,
    Unavailable, describe_failure, error_for,
)
from kvpaxos.client.requests import Operation
from kvpaxos.v1 import kv_pb2

#: Refusals that change nothing, unless an earlier attempt was applied.
AUTH_REFUSALS = (Unauthenticated, PermissionDenied, AuthRefused)

__all__ = ["Attempts", "Backoff", "Directory", "Pause", "Refresh", "RetryPolicy", "Session", "SessionPool", "Try"]


class Directory:
    """
    What the client knows of the cluster: its endpoints, which member
    answers at which endpoint, and the leader.  Shared by every call of a
    client (hence the lock); it never does I/O.

    The endpoints are the seeds (given by the user, kept whatever the
    cluster says) followed by the client addresses the last member list
    named (L{listed}): a client given one address finds the others, and
    follows members that join or leave.  The member list is due
    (L{begin_refresh}) before the first request, every C{refresh_s}
    seconds after, and after a round in which every endpoint failed
    (L{round_failed}); C{refresh_s=None} never lists (the seeds only).
    """

    def __init__(self, endpoints: Sequence[str], refresh_s: Optional[float] = None) -> None:
        if not endpoints:
            raise BadEndpoint("no endpoints given")
        if refresh_s is not None and not refresh_s > 0:
            raise ValueError(f"refresh_s must be more than 0 or None, not {refresh_s!r}")
        self.seeds = tuple(endpoints)
        self.endpoints = self.seeds
        self.leader: Optional[int] = None
        #: The cluster the first member list named; a list naming another is ignored.
        self.cluster_id: Optional[int] = None
        self._members: dict[int, str] = {}
        self._current = 0
        self._refresh_s = refresh_s
        self._listed_at: Optional[float] = None
        self._stale = True
        self._lock = threading.Lock()

    def leader_endpoint(self) -> Optional[str]:
        """The leader's endpoint, when both are known."""
        with self._lock:
            return self._members.get(self.leader) if self.leader is not None else None

    def member_endpoint(self, member_id: int) -> Optional[str]:
        with self._lock:
            return self._members.get(member_id)

    def pick(self, leader: bool, exclude: Iterable[str] = ()) -> Optional[str]:
        """
        Return the endpoint to try next, or None when every endpoint is in
        C{exclude}.  With C{leader}: the leader's endpoint if known; if the
        leader is known but not its endpoint, an endpoint whose member is
        not known yet (it may be the leader's).  Otherwise the endpoint that
        last answered, then the ones after it in order.
        """
        exclude = set(exclude)
        with self._lock:
            n = len(self.endpoints)
            order = [self.endpoints[(self._current + i) % n] for i in range(n)]
            candidates = [endpoint for endpoint in order if endpoint not in exclude]
            if not candidates:
                return None
            if leader and self.leader is not None:
                known = self._members.get(self.leader)
                if known is not None and known not in exclude:
                    return known
                if known is None:
                    mapped = set(self._members.values())
                    for endpoint in candidates:
                        if endpoint not in mapped:
                            return endpoint
            return candidates[0]

    def answered(self, endpoint: str, header: kv_pb2.ResponseHeader) -> None:
        """C{endpoint} answered with C{header}: learn who it is and whom it follows."""
        with self._lock:
            if header.member_id:
                for member, where in list(self._members.items()):
                    if where == endpoint or member == header.member_id:
                        del self._members[member]
                self._members[header.member_id] = endpoint
            self.leader = header.leader_id or None
            if endpoint in self.endpoints:
                self._current = self.endpoints.index(endpoint)

    def failed(self, endpoint: str, leader: Optional[int]) -> None:
        """
        C{endpoint} could not serve a request; C{leader} is the leader its
        message named, if any.
        """
        with self._lock:
            if leader is not None:
                self.leader = leader
            elif self.leader is not None and self._members.get(self.leader) == endpoint:
                self.leader = None
            if self.endpoints[self._current] == endpoint:
                self._current = (self._current + 1) % len(self.endpoints)

    # -- the member list

    def begin_refresh(self, now: float) -> bool:
        """
        Return True when the member list is due, and claim it (so that one
        call of many lists it): the caller lists it and reports L{listed}
        (or nothing, if that failed: it is due again after C{refresh_s}, or
        after the next round that fails everywhere).
        """
        with self._lock:
            if self._refresh_s is None:
                return False
            due = self._stale or self._listed_at is None or now - self._listed_at >= self._refresh_s
            if due:
                self._stale, self._listed_at = False, now
            return due

    def round_failed(self) -> None:
        """Every endpoint failed since the last pause: list the members again after it."""
        with self._lock:
            self._stale = True

    def listed(self, endpoint: str, response: kv_pb2.MemberListResponse) -> None:
        """
        C{endpoint} answered C{response} (a C{MemberListResponse}): the
        endpoints become the seeds followed by each listed member's client
        address, in member id order; a member without a usable client
        address (none, or a wildcard host), or known to answer at a seed,
        is skipped.  A member no longer listed drops out (unless it is a
        seed).  A list from another cluster than the first one is ignored.
        """
        self.answered(endpoint, response.header)
        with self._lock:
            if self.cluster_id is None:
                self.cluster_id = response.cluster_id
            elif response.cluster_id != self.cluster_id:
                return
            at_seed = {member for member, where in self._members.items() if where in self.seeds}
            listed: dict[int, str] = {}
            for member in sorted(response.members, key=lambda m: m.member_id):
                where = _client_endpoint(member.client_address)
                if where is not None and member.member_id and member.member_id not in at_seed:
                    listed[member.member_id] = where
            current = self.endpoints[self._current]
            found = [where for where in listed.values() if where not in self.seeds]
            self.endpoints = self.seeds + tuple(dict.fromkeys(found))
            self._current = self.endpoints.index(current) if current in self.endpoints else 0
            self._members = {member: where for member, where in self._members.items() if where in self.seeds}
            self._members.update(listed)


def _client_endpoint(address: str) -> Optional[str]:
    """C{address} as an endpoint to dial, or None when it is empty, malformed or a wildcard."""
    try:
        host, port = split_host_port(address)
    except BadEndpoint:
        return None
    if host in ("", "0.0.0.0", "::") or port == 0:
        return None
    return join_host_port(host, port)


@dataclass(frozen=True)
class Backoff:
    """
    Pauses between rounds of attempts: the n-th pause is drawn uniformly
    from [c/2, c] with c = min(C{max_s}, C{first_s} * 2**(n-1)) ("equal
    jitter": it grows, yet clients that failed together spread out).
    """

    first_s: float = 0.05
    max_s: float = 1.0

    def delay_s(self, pause: int, rng: random.Random) -> float:
        """The length of pause number C{pause} (1 for the first)."""
        ceiling = min(self.max_s, self.first_s * 2 ** min(pause - 1, 62))
        return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(frozen=True)
class Try:
    """Send the request to C{endpoint} with this RPC deadline."""

    endpoint: str
    timeout_s: float


@dataclass(frozen=True)
class Pause:
    """Wait this long, then ask for the next step."""

    delay_s: float


#: The longest a member list waits for its answer (and at most half the
#: time left to the call): a refresh must not eat the request's deadline.
REFRESH_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Refresh:
    """
    Ask C{endpoint} for the member list (C{Cluster.MemberList}) with this
    RPC deadline, report the answer with L{Attempts.listed}, and ask for
    the next step; a failure is not the request's and is not reported.
    """

    endpoint: str
    timeout_s: float


class Attempts:
    """
    The attempts of one request (pure: it is told the time).  Drive it as

        while True:
            step = attempts.next_step(now)      # Try, Pause or Refresh; raises when out of time
            ... on a Try, send; then attempts.failed(...) (raises or returns)
            or attempts.answered(...) and stop; on a Refresh, ask for the
            member list and, if it answered, attempts.listed(...).

    Every attempt of one request carries the same request (and so the same
    session fields): the caller stamps it once, before the first attempt.
    """

    def __init__(
        self, directory: Directory, backoff: Backoff, rng: random.Random, deadline: float,
        *, leader: bool, retry_deadline: bool, write: bool = False,
    ) -> None:
        self._directory = directory
        self._backoff = backoff
        self._rng = rng
        self.deadline = deadline
        self._leader = leader
        self._retry_deadline = retry_deadline
        self._write = write
        #: Endpoints that failed since the last pause.
        self._round: set[str] = set()
        self._pauses = 0
        self._failures: dict[str, str] = {}
        #: How many times the request was sent.
        self.sent = 0

    def next_step(self, now: float) -> Union[Try, Pause, Refresh]:
        """
        Return the next L{Try}, L{Pause} or L{Refresh} (when the directory's
        member list is due: see L{Directory}).

        @raise Unavailable: the deadline has passed, or would pass during
            the next pause.
        """
        remaining = self.deadline - now
        if remaining <= 0:
            raise self._gave_up()
        if self._directory.begin_refresh(now):
            endpoint = self._directory.pick(False, self._round)
            if endpoint is not None:
                return Refresh(endpoint, min(REFRESH_TIMEOUT_S, remaining / 2))
            self._directory.round_failed()
        endpoint = self._directory.pick(self._leader, self._round)
        if endpoint is None:
            self._directory.round_failed()
            self._pauses += 1
            delay_s = self._backoff.delay_s(self._pauses, self._rng)
            if delay_s >= remaining:
                raise self._gave_up()
            self._round.clear()
            return Pause(delay_s)
        self.sent += 1
        return Try(endpoint, remaining)

    def failed(self, endpoint: str, failure: Failure) -> None:
        """
        The attempt on C{endpoint} failed with C{failure}: return if the
        request may be sent again, else raise the error the caller gets.
        The leader the server named (its ErrorInfo metadata) is noted.
        """
        error = error_for(endpoint, failure, retry_deadline=self._retry_deadline,
                          maybe_applied=self.sent > 1)
        if isinstance(error, AUTH_REFUSALS) and self._write and self.sent > 1:
            # Refused now, but an earlier attempt may have been applied
            # (before a revoke, a password change, or the same auth change).
            raise OutcomeUnknown(f"{error} (an earlier attempt of this write may have been applied)") from error
        if error is not None:
            raise error
        self._directory.failed(endpoint, failure.leader)
        self._failures[endpoint] = describe_failure(endpoint, failure)
        self._round.add(endpoint)

    def renewed(self) -> None:
        """
        The last attempt was refused UNAUTHENTICATED and is sent again with
        a new token: it was refused before anything could apply, so it
        does not count as an attempt that may have been applied.
        """
        self.sent -= 1

    def answered(self, endpoint: str, header: kv_pb2.ResponseHeader) -> None:
        """The attempt on C{endpoint} succeeded."""
        self._directory.answered(endpoint, header)

    def listed(self, endpoint: str, response: kv_pb2.MemberListResponse) -> None:
        """The L{Refresh} on C{endpoint} answered C{response}."""
        self._directory.listed(endpoint, response)

    def _gave_up(self) -> Unavailable:
        failures = [self._failures[e] for e in self._directory.endpoints if e in self._failures]
        if not failures:
            message = "no endpoint answered before the deadline"
        elif len(failures) == 1:
            message = failures[0]
        else:
            message = "no endpoint answered: " + "; ".join(failures)
        return Unavailable(message, self._directory.leader, failures)


class RetryPolicy:
    """The policy one client applies to every call: where to send, when to retry."""

    def __init__(self, directory: Directory, backoff: Backoff, rng: random.Random, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be more than 0, not {timeout_s!r}")
        self.directory = directory
        self.backoff = backoff
        self.rng = rng
        self.timeout_s = timeout_s

    def deadline(self, now: float) -> float:
        return now + self.timeout_s

    def attempts(self, operation: Operation, deadline: float, in_session: bool) -> Attempts:
        return Attempts(
            self.directory, self.backoff, self.rng, deadline, leader=operation.leader,
            retry_deadline=not operation.write or in_session, write=operation.write,
        )



@dataclass
class Session:
    """
    One exactly-once session: its id and the last sequence used.  Only the
    holder (who took it from the pool) touches C{last_sequence}.
    """

    client_id: int
    last_sequence: int = 0

    def next_sequence(self) -> int:
        self.last_sequence += 1
        return self.last_sequence


class SessionPool:
    """
    Idle sessions of one client.  A write L{take}s one (None: open a new
    one), so no two writes share a session at once, and L{settle}s it when
    its outcome is known.  Last in, first out: a client used by one thread
    keeps using one session.
    """

    def __init__(self) -> None:
        self._idle: list[Session] = []
        self._lock = threading.Lock()

    def take(self) -> Optional[Session]:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def settle(self, session: Session, error: Optional[BaseException], resent: bool) -> bool:
        """
        The write sent in C{session} ended with C{error} (None: answered).
        Keep the session or drop it; return True when the write should be
        sent again in a fresh session: its only attempt found the session
        expired, so nothing was applied (and it was not sent again yet).
        """
        if isinstance(error, (SessionExpired, StaleSequence)):
            return isinstance(error, SessionExpired) and not error.maybe_applied and not resent
        with self._lock:
            self._idle.append(session)
        return False

    def idle(self) -> list[Session]:
        with self._lock:
            return list(self._idle)


