"""
What a replica does beyond the acceptor and learner rules depends on its
role, an object swapped on a role change (as etcd raft's C{becomeLeader}
swaps C{r.step} and C{r.tick}): L{Follower} here, L{PreCandidate} and
L{Candidate} in L{kvpaxos.paxos.election}, L{Leader} in
L{kvpaxos.paxos.leader}.  L{Role} is what every role does unless it says
otherwise: refuse leader work.

A role handles ticks, client requests, its timeouts (stepped in as
L{ElectionTimeout} and the like, see L{kvpaxos.paxos.messages}) and the
replies addressed to it (Promises to a candidate, Accepteds and heartbeat
acks to a leader).  Nothing branches on a role's C{name}, which is for
display; C{leads} says whether a role leads.

Like the rest of the core this module does no I/O and reads no clock.
"""

from __future__ import annotations

from kvpaxos.paxos.config import ConfigChange
from kvpaxos.paxos.messages import Ballot, ElectionTimeout, TimeoutNow


class Role:
    """What every role does unless it says otherwise: refuse leader work."""

    #: For display (status, logs, tests); never branched on.
    name = "role"
    #: Whether this role leads: takes proposals and serves reads.
    leads = False
    #: The ballot this role campaigns or leads in; None for a follower.
    ballot: Ballot | None = None

    def __init__(self, replica) -> None:
        self.replica = replica
        self.handlers: dict = {}

    def enter(self) -> None:
        """The replica has just taken this role."""

    def leave(self) -> None:
        """The replica is about to drop this role."""

    def tick(self) -> None:
        """One tick passed."""

    def flush(self) -> None:
        """Turn queued requests into messages before a Ready is cut."""

    def has_work(self) -> bool:
        """
        Whether L{flush} would queue any work for the next Ready.  A query:
        it changes nothing.
        """
        return False

    def config_changed(self) -> None:
        """A member-set change was chosen (or a snapshot installed)."""

    def outranked(self, ballot: Ballot) -> None:
        """This replica promised C{ballot} to another candidate."""
        if self.ballot is not None and self.ballot < ballot:
            self.replica.step_down(leader=None)

    def leader_heard(self, ballot: Ballot) -> None:
        """The leader of C{ballot} (at least the promised one) is alive."""
        if self.ballot is not None and self.ballot < ballot:
            self.replica.step_down(leader=ballot.node)

    def chosen_advanced(self, first: int, last: int) -> None:
        """The slots [first, last] became known chosen, by any path."""

    def propose(self, command: bytes) -> None:
        raise self.replica.not_leader()

    def propose_config_change(self, change: ConfigChange, force: bool = False) -> None:
        raise self.replica.not_leader()

    def recently_heard(self) -> frozenset:
        return frozenset()  # only a leader keeps track

    def member_progress(self) -> dict[int, int]:
        return {}

    def read_index(self, context) -> None:
        raise self.replica.not_leader()

    def lease_read_index(self):
        raise self.replica.not_leader()

    def transfer_leadership(self, target: int) -> None:
        raise self.replica.not_leader()

    def _count_to_election_timeout(self, elapsed: int) -> None:
        """C{elapsed} ticks passed: at the election timeout, step an L{ElectionTimeout}."""
        r = self.replica
        if elapsed >= r.election_timeout:
            r.step(ElectionTimeout(r.id, r.id))

    def _on_election_timeout(self, m: ElectionTimeout) -> None:
        # No leader heard, or no election won, for the election timeout: a
        # voter asks for pre-votes (etcd raft's MsgHup), so a node cut off
        # from the cluster never raises its ballot; anyone else stops
        # waiting for an election.
        r = self.replica
        if r.id in r.config.voters:
            r.pre_campaign()
        else:
            self._not_a_voter()

    def _not_a_voter(self) -> None:
        """The election timeout ran out on a node that is not a voter."""

    def _new_election_timeout(self) -> None:
        ticks = self.replica.options.election_ticks
        self.replica.election_timeout = self.replica.rng.randrange(ticks, 2 * ticks)


class Follower(Role):
    """
    Follows whoever leads; campaigns when no leader was heard for a random
    timeout (if it is a voter).
    """

    name = "follower"

    def __init__(self, replica) -> None:
        super().__init__(replica)
        self.handlers = {
            TimeoutNow: self._on_timeout_now,
            ElectionTimeout: self._on_election_timeout,
        }

    def enter(self) -> None:
        self._new_election_timeout()

    def tick(self) -> None:
        r = self.replica
        r.election_elapsed += 1
        self._count_to_election_timeout(r.election_elapsed)

    def _not_a_voter(self) -> None:
        self.replica.election_elapsed = 0  # it waits again

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        # Obeyed only from the leader this replica follows and heard lately:
        # a TimeoutNow that arrives late, after that leader was deposed,
        # would otherwise start a campaign while a newer leader holds a lease
        # (found in review, issue 9).
        r = self.replica
        if (
            m.ballot == r.leader_ballot
            and m.src == r.leader
            and r.election_elapsed < r.options.election_ticks
            and r.id in r.config.voters
        ):
            r.campaign(transfer=True, asked_by=m.ballot)
