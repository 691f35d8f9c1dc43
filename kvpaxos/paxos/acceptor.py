"""
The acceptor: Paxos Made Simple §2.2, for every slot at once (§3).

Every replica is an acceptor, whatever its role.  The rules:

  - the ballot check: a Prepare, Accept or Heartbeat in a ballot below the
    one promised is refused with a L{Nack} that names the promise
    (L{Acceptor._refused}; the one place it is written);
  - promise a ballot only if it is at least every ballot promised so far,
    and persist the promise before the Promise leaves (C{durable_messages});
  - accept in a ballot only if no higher ballot was promised, and persist
    the accepted entries before the Accepted leaves.

Beyond the paper, three guards keep a healthy leader's read lease sound (see
docs/design.md): leader stickiness, the pre-vote answered by the same rules
as a Prepare, and the start guard of a replica that has just started.

L{Acceptor} is a mixin of L{kvpaxos.paxos.replica.Replica}; the state it
reads and writes (C{promised}, C{log}, C{chosen_index}, C{leader},
C{election_elapsed}, ...) is declared in C{Replica.__init__}.  No I/O here.
"""

from __future__ import annotations

from kvpaxos.paxos.messages import (
    Accept,
    Accepted,
    Ballot,
    Heartbeat,
    HeartbeatAck,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
)
from kvpaxos.paxos.state import Entry


class Acceptor:
    """The acceptor rules of a L{kvpaxos.paxos.replica.Replica}."""

    # --- the ballot check --------------------------------------------------

    def _refused(self, m) -> bool:
        """
        Refuse C{m} (a Prepare, Accept or Heartbeat) if its ballot is below
        the promised one (Paxos Made Simple §2.2: an acceptor never answers
        a ballot below its promise but with the promise it made).  Return
        whether it was refused.
        """
        if m.ballot < self.promised:
            self._nack(m)
            return True
        return False

    def _nack(self, m) -> None:
        self.send(Nack(self.id, m.src, m.ballot, self.promised, self.chosen_index))

    # --- guards of a live leader's lease ------------------------------------

    def _hears_leader_other_than(self, node: int) -> bool:
        # Leader stickiness (compare raft's CheckQuorum lease): while this
        # replica hears from a live leader it ignores other campaigns, so a
        # partitioned node that comes back with a high round cannot depose a
        # healthy leader.
        return (
            self.leader is not None
            and self.leader != node
            and self.election_elapsed < self.options.election_ticks
        )

    def _waived(self, prepare: Prepare) -> bool:
        # A transfer campaign asked for by the leader this replica follows:
        # that leader gave up its lease when it sent the TimeoutNow.  Asked
        # for by any other ballot (a leader deposed since), it is an
        # ordinary campaign (found in review, issue 9).
        return prepare.transfer and prepare.asked_by == self.leader_ballot

    def _sticky(self, prepare: Prepare) -> bool:
        return not self._waived(prepare) and self._hears_leader_other_than(prepare.src)

    def _hears_candidate_other_than(self, node: int) -> bool:
        # As raft resets its election timer when it grants a vote: a replica
        # that promised a candidate within election_ticks does not help
        # another start a campaign, which would depose the first 10-50 ms
        # after it won (duelling elections the simulator found).
        return (
            self._promised_to is not None
            and self._promised_to != node
            and self.ticks - self._promised_tick < self.options.election_ticks
        )

    def _starting(self) -> bool:
        # A replica refuses pre-votes and non-transfer Prepares for its first
        # election_ticks: it may have acked a leader's heartbeat just before
        # it restarted, and that leader's read lease counts on it.
        return self.ticks < self.options.election_ticks

    # --- phase 1 -------------------------------------------------------------

    def _on_pre_vote(self, m: PreVote) -> None:
        # Grant only what _on_prepare would promise: no live leader heard,
        # not starting, and the candidate lacks nothing this replica knows
        # chosen.  No state changes; the reply needs nothing persisted.
        granted = (
            not self._hears_leader_other_than(m.src)
            and not self._hears_candidate_other_than(m.src)
            and not self._starting()
            and self.chosen_index < m.first_slot
        )
        self.send(PreVoteReply(self.id, m.src, m.ballot, granted, self.chosen_index))

    def _on_prepare(self, m: Prepare) -> None:
        if self._refused(m):
            return
        if self._sticky(m):
            return
        if self._starting():
            # The start guard, as for pre-votes (issue 9, hole 5), transfers
            # included: whose beat this replica acked before it restarted is
            # not known, so no transfer can be known to come from that leader.
            return
        if self.chosen_index >= m.first_slot:
            # The candidate lacks slots this replica knows chosen: refuse
            # without promising and let it catch up first.  This bounds a
            # Promise to the slots not yet chosen.
            self._nack(m)
            return
        if m.ballot > self.promised:
            self.promised = m.ballot
            self.max_round = max(self.max_round, m.ballot.round)
            self.role.outranked(m.ballot)
        if m.src != self.id:
            self._promised_to = m.src
            self._promised_tick = self.ticks
            self.election_elapsed = 0
        # Paxos Made Simple §2.2: the promise holds only once it is durable.
        self.durable_messages.append(self._promise(m.src, m.ballot, m.first_slot))

    def _promise(self, dst: int, ballot: Ballot, first_slot: int) -> Promise:
        """Return the Promise of C{ballot}: what was accepted from C{first_slot} on."""
        accepted = tuple(
            (s, e.ballot, e.value) for s, e in sorted(self.log.items()) if s >= first_slot
        )
        return Promise(self.id, dst, ballot, first_slot, accepted)

    def promise_for(self, ballot: Ballot, first_slot: int) -> Promise:
        """Return this replica's own Promise for its campaign in C{ballot}."""
        return self._promise(self.id, ballot, first_slot)

    # --- phase 2 -------------------------------------------------------------

    def _on_accept(self, m: Accept) -> None:
        if self._refused(m):
            return
        ballot = m.ballot
        if ballot > self.promised:
            self.promised = ballot
            self.max_round = max(self.max_round, ballot.round)
        chosen = self.chosen_index
        log = self.log
        floor = self.snapshot.index
        slot = m.first_slot
        for value in m.values:
            if slot > chosen:
                break
            if slot > floor and log[slot].value != value:
                # A stale Accept from a deposed leader for a slot this
                # replica already learned chosen otherwise: that ballot can
                # no longer gather a quorum (Paxos Made Simple §2.2, P2b);
                # neither store nor acknowledge it.
                return
            slot += 1
        self._follow(ballot)
        entries = self._entries
        slot = m.first_slot
        for value in m.values:
            if slot > chosen:
                entry = Entry(ballot, value)
                log[slot] = entry
                entries[slot] = entry
            slot += 1
        self.durable_messages.append(
            Accepted(self.id, m.src, ballot, m.first_slot, len(m.values), self.chosen_index)
        )
        self._learn(ballot, m.chosen_index, m.src)

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if self._refused(m):
            return
        self._follow(m.ballot)
        self._learn(m.ballot, m.chosen_index, m.src)
        self.send(HeartbeatAck(self.id, m.src, m.ballot, m.read_round, self.chosen_index))

    def _on_nack(self, m: Nack) -> None:
        self.max_round = max(self.max_round, m.promised.round)
        if m.chosen_index > self.chosen_index and not self.is_leader:
            self.request_catchup(m.src)
        if self.role.ballot is not None and m.ballot == self.role.ballot:
            if m.promised > m.ballot:
                self.step_down(leader=None)

    def _follow(self, ballot: Ballot) -> None:
        """Note that the leader of C{ballot} is alive."""
        if ballot >= self.leader_ballot:
            self.leader_ballot = ballot
            self.leader = ballot.node
        if ballot.node == self.leader:
            self.election_elapsed = 0
        self.role.leader_heard(ballot)
