"""
Errors the core raises to its caller.  They name whose fault they are: the
caller asked a replica for something only a leader does (L{NotLeader}), or
asked for something the protocol forbids right now (L{ProposalRejected}).
A broken invariant is never one of these: it is an C{AssertionError} that
must stop the node.
"""


class NotLeader(Exception):
    """
    The replica is not the leader.  C{leader} is the leader it last heard
    from, or C{None} if it knows of none.
    """

    def __init__(self, leader):
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


class ProposalRejected(Exception):
    """
    The leader cannot take this proposal now (a leader transfer or a
    configuration change is in progress, or the request is invalid).
    """


class QuorumNotHeard(ProposalRejected):
    """
    A removal the leader cannot prove safe: the voters it heard from within
    the last election timeout, less the one removed, are not a quorum of
    the new member set.  A leader just elected has heard from nobody yet,
    so its caller may retry a little later; C{force} skips the check.
    """
