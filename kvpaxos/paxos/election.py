"""
Phase 1, the election: a replica that heard no leader first asks for
pre-votes (L{PreCandidate}; raft thesis §9.6), then runs phase 1 of Paxos
for every slot it does not know chosen (L{Candidate}; Paxos Made Simple §3:
one Prepare covers "all instances" at once), and wins with, for each slot,
the value accepted in the highest ballot among its promises (P2c).

A campaign that does not end within its election timeout ends with an
L{ElectionTimeout} stepped in by the replica's tick (or by a test): it
starts over with a pre-vote, after a fresh random timeout so that duelling
candidates drift apart.

No I/O here.
"""

from __future__ import annotations

from kvpaxos.paxos.config import ConfigChange
from kvpaxos.paxos.leader import Leader
from kvpaxos.paxos.messages import (
    NOOP,
    Ballot,
    ElectionTimeout,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ZERO_BALLOT,
)
from kvpaxos.paxos.roles import Role


class Campaigning(Role):
    """
    What a pre-candidate and a candidate share: an election timeout counted
    in C{elapsed}, whose end is an L{ElectionTimeout}.
    """

    def __init__(self, replica) -> None:
        super().__init__(replica)
        self.elapsed = 0

    def tick(self) -> None:
        self.elapsed += 1
        self._count_to_election_timeout(self.elapsed)

    def _not_a_voter(self) -> None:
        self.replica.step_down(leader=None)  # removed meanwhile: it stops campaigning


class PreCandidate(Campaigning):
    """
    Asks the voters whether a campaign could win (L{PreVote}) before raising
    any ballot; campaigns for real once a quorum says yes.  A node cut off
    from the cluster stays here, its promise untouched, so when it comes back
    it cannot depose a healthy leader (raft thesis §9.6).
    """

    name = "pre-candidate"

    def __init__(self, replica) -> None:
        super().__init__(replica)
        self.probe = Ballot(max(replica.max_round, replica.promised.round) + 1, replica.id)
        self.first_slot = replica.chosen_index + 1
        self.grants = {replica.id}
        self.handlers = {
            PreVoteReply: self._on_reply,
            ElectionTimeout: self._on_election_timeout,
        }

    def enter(self) -> None:
        r = self.replica
        r.leader = None
        self._new_election_timeout()
        for node in sorted(r.config.voters - {r.id}):
            r.send(PreVote(r.id, node, self.probe, self.first_slot))
        self._check()

    def _on_reply(self, m: PreVoteReply) -> None:
        r = self.replica
        if m.ballot != self.probe:
            return
        if m.chosen_index >= self.first_slot:
            r.request_catchup(m.src)
        if m.granted:
            self.grants.add(m.src)
            self._check()

    def _check(self) -> None:
        r = self.replica
        if r.config.is_quorum(self.grants):
            r.campaign()

    def outranked(self, ballot: Ballot) -> None:
        self.replica.step_down(leader=None)

    def leader_heard(self, ballot: Ballot) -> None:
        self.replica.step_down(leader=ballot.node)


class Candidate(Campaigning):
    """
    Runs phase 1 for every slot from the first one it does not know chosen.

    It wins once, for every member set that may govern those slots, a quorum
    of that set has promised.  The member sets are the one in force now and
    each one that the reported values would install in turn: a slot chosen
    under a later set was accepted by a quorum of that set, and single-member
    changes make consecutive sets' quorums intersect.
    """

    name = "candidate"

    def __init__(self, replica, ballot: Ballot, transfer: bool, asked_by: Ballot = ZERO_BALLOT) -> None:
        super().__init__(replica)
        self.ballot = ballot
        self.transfer = transfer
        self.asked_by = asked_by
        self.first_slot = replica.chosen_index + 1
        self.promises: dict[int, Promise] = {}
        self.asked: set[int] = {replica.id}
        self.handlers = {
            Promise: self._on_promise,
            ElectionTimeout: self._on_election_timeout,
        }

    def enter(self) -> None:
        r = self.replica
        self._new_election_timeout()
        # Our own promise counts once the raised ballot is durable.
        r.self_messages.append(r.promise_for(self.ballot, self.first_slot))
        self._ask(r.config.voters)

    def _ask(self, nodes) -> None:
        r = self.replica
        for node in sorted(set(nodes) - self.asked):
            self.asked.add(node)
            # A Prepare leaves only once the raised ballot it carries is
            # durable (Ready.durable_messages).  Sent earlier, a crash before
            # the write would let the restarted node, its round restored from
            # its old promise, campaign again in this same ballot from a lower
            # first slot, and a Promise answering this campaign could
            # complete that one's quorum (found in review, issue 9).
            r.durable_messages.append(
                Prepare(r.id, node, self.ballot, self.first_slot, self.transfer, self.asked_by)
            )

    def _on_promise(self, m: Promise) -> None:
        # A Promise counts only for the campaign it answers: same ballot and
        # same first slot.  One for another first slot reports nothing below
        # its own, so counting it could miss a value accepted (even chosen)
        # in a slot this campaign covers.
        if m.ballot != self.ballot or m.first_slot != self.first_slot:
            return
        self.promises[m.src] = m
        self._try_to_win()

    def _try_to_win(self) -> None:
        r = self.replica
        # For each slot, the value accepted in the highest ballot among the
        # promises (Paxos Made Simple §2.2, P2c).
        merged: dict[int, tuple[Ballot, object]] = {}
        for promise in self.promises.values():
            for slot, ballot, value in promise.accepted:
                held = merged.get(slot)
                if held is None or ballot > held[0]:
                    merged[slot] = (ballot, value)
        start = r.chosen_index + 1
        last = max(max(merged, default=0), start - 1)
        config = r.config
        configs = [config]
        plan = []
        for slot in range(start, last + 1):
            # A slot nobody reported gets a no-op (Paxos Made Simple §3).
            value = merged[slot][1] if slot in merged else NOOP
            plan.append((slot, value, config))
            if type(value) is ConfigChange:
                config = config.apply(value)
                configs.append(config)
        wanted = set()
        for each in configs:
            wanted |= each.voters
        self._ask(wanted)
        if all(each.is_quorum(self.promises) for each in configs):
            r.become(Leader(r, self.ballot, plan, config))
