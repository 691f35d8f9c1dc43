"""
The core simulator's planted bugs (C{--plant}): replicas with one
mechanism broken, which the checks of L{kvpaxos.testing.coresim} must
catch (forgetful-acceptor, unconfirmed-read, eternal-lease, learner-votes,
promote-stateless).
L{UnconfirmedReadReplica} is also used by L{kvpaxos.testing.plants}.
"""

from __future__ import annotations

from kvpaxos.paxos import Accepted, ReadState, Replica
from kvpaxos.paxos.leader import Leader


class UnconfirmedReadReplica(Replica):
    """
    A planted bug: a leader that answers C{read_index} at once from its own
    chosen index, without confirming with a quorum that it still leads.
    """

    def read_index(self, context) -> None:
        if self.is_leader:
            self.read_states.append(ReadState(context, self.chosen_index))
        else:
            super().read_index(context)


class EternalLeaseReplica(Replica):
    """A planted bug: a leader that believes its read lease never runs out."""

    def lease_read_index(self):
        if self.is_leader:
            return self.chosen_index
        return super().lease_read_index()


class LearnerVotesLeader(Leader):
    """
    A planted bug: a leader that counts a learner's Accepted toward the
    quorum of voters that chooses a slot (issue 11: learners never vote).
    """

    def _on_accepted(self, m: Accepted) -> None:
        if not self._heard(m):
            return
        newly = False
        for slot in range(m.first_slot, m.first_slot + m.count):
            p = self.inflight.get(slot)
            if p is None or p.chosen:
                continue
            p.acks.add(m.src)
            votes = p.acks & (p.config.voters | p.config.learners)
            if len(votes) >= p.config.quorum:
                p.chosen = True
                newly = True
        if newly:
            self._advance_chosen()


class LearnerVotesReplica(Replica):
    """A replica whose leaders are L{LearnerVotesLeader}s."""

    def become(self, role) -> None:
        if type(role) is Leader:
            role.__class__ = LearnerVotesLeader
            role.handlers[Accepted] = role._on_accepted
        super().become(role)


class StatelessPromotionLeader(Leader):
    """
    A planted bug (issue 11's review): a leader that counts a learner caught
    up on its lag alone, so a joiner that reported chosen index 0 (it has
    no state yet) is promoted while its snapshot is still on the way.
    """

    def _log_floor(self) -> int:
        return 0


class StatelessPromotionReplica(Replica):
    """A replica whose leaders are L{StatelessPromotionLeader}s."""

    def become(self, role) -> None:
        if type(role) is Leader:
            role.__class__ = StatelessPromotionLeader
        super().become(role)


#: Bugs the simulator can plant, to show that its checker bites.
PLANTS = ("forgetful-acceptor", "unconfirmed-read", "eternal-lease", "learner-votes",
          "promote-stateless")
_PLANTED_REPLICAS = {
    "unconfirmed-read": UnconfirmedReadReplica,
    "eternal-lease": EternalLeaseReplica,
    "learner-votes": LearnerVotesReplica,
    "promote-stateless": StatelessPromotionReplica,
}
