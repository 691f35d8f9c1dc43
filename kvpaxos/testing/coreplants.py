"""
The core simulator's planted bugs (C{--plant}): replicas with one
mechanism broken, which the checks of L{kvpaxos.testing.coresim} must
catch (forgetful-acceptor, unconfirmed-read, eternal-lease).
L{UnconfirmedReadReplica} is also used by L{kvpaxos.testing.plants}.
"""

from __future__ import annotations

from kvpaxos.paxos import ReadState, Replica


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


#: Bugs the simulator can plant, to show that its checker bites.
PLANTS = ("forgetful-acceptor", "unconfirmed-read", "eternal-lease")
_PLANTED_REPLICAS = {
    "unconfirmed-read": UnconfirmedReadReplica,
    "eternal-lease": EternalLeaseReplica,
}
