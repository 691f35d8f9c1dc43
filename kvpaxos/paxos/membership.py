"""
The leader's rules for changes of the member set an operator asks for
(issue 11; docs/design.md, "Membership rules (issue 11)"), beside the
one-change-at-a-time rule that keeps consecutive member sets' quorums
intersecting (L{kvpaxos.paxos.config}):

  - PROMOTE only a learner that is caught up: the chosen index it last
    reported to this leader is within C{Options.promote_lag_slots} of the
    leader's; a learner not heard from in this ballot is not caught up;
  - REMOVE only if the voters heard from within the last election timeout
    (the leader included), less the node removed, are a quorum of the member
    set after the removal, unless forced; never the leader itself (it hands
    leadership over first, which the node does);
  - with C{Options.auto_promote}, promote a learner that stayed caught up
    for C{Options.auto_promote_beats} consecutive heartbeat acks.

What the leader heard lately and how far each member has learned are
queries for the node's status (L{MemberRules.recently_heard},
L{MemberRules.member_progress}).

L{MemberRules} is a mixin of L{kvpaxos.paxos.leader.Leader}, over the
state declared there (C{heard}, C{match}, C{leader_config},
C{config_slot}, C{pending_config}, C{transfer_target}).  No I/O here.
"""

from __future__ import annotations

from kvpaxos.paxos.config import ChangeKind, ConfigChange
from kvpaxos.paxos.errors import ProposalRejected, QuorumNotHeard
from kvpaxos.paxos.messages import HeartbeatAck


class MemberRules:
    """The membership rules of a L{kvpaxos.paxos.leader.Leader}."""

    def _init_members(self) -> None:
        #: The nodes heard from in the previous check-quorum window: with
        #: C{heard} (the current one), every node heard from within the
        #: last election timeout, whatever the phase of the window.
        self.heard_before: set[int] = set()
        #: learner -> consecutive heartbeat acks that showed it caught up.
        self.caught_up_beats: dict[int, int] = {}
        #: learner -> the last beat whose ack was counted (a duplicate or a
        #: late ack of an older beat counts for nothing).
        self.counted_beat: dict[int, int] = {}

    # --- queries -----------------------------------------------------------

    def recently_heard(self) -> frozenset:
        r = self.replica
        return frozenset(self.heard_before | self.heard | {r.id})

    def member_progress(self) -> dict[int, int]:
        r = self.replica
        progress = {r.id: r.chosen_index}
        for node in sorted(self.leader_config.members - {r.id}):
            if node in self.match:
                progress[node] = self.match[node]
        return dict(sorted(progress.items()))

    # --- proposing a change ------------------------------------------------

    def propose_config_change(self, change: ConfigChange, force: bool = False) -> None:
        if self.transfer_target is not None:
            raise ProposalRejected("a leader transfer is in progress")
        if self.config_slot is not None or self.pending_config is not None:
            raise ProposalRejected("a configuration change is in progress")
        self.leader_config.check(change)
        if change.kind is ChangeKind.REMOVE:
            self._check_remove(change, force)
        elif change.kind is ChangeKind.PROMOTE:
            self._check_promote(change.node)
        self.pending_config = change

    def _check_remove(self, change: ConfigChange, force: bool) -> None:
        r = self.replica
        node = change.node
        if node == r.id:
            # Removing the leader under itself would leave the cluster
            # leaderless until an election timeout; the node hands
            # leadership over first (force does not change that).
            raise ProposalRejected(f"node {node} leads; transfer leadership first")
        if force:
            return
        after = self.leader_config.apply(change)
        alive = sorted(after.voters & (self.recently_heard() - {node}))
        if not after.is_quorum(alive):
            heard = ",".join(str(n) for n in alive) or "none"
            raise QuorumNotHeard(
                f"removing node {node} would leave {len(alive)} of the"
                f" {len(after.voters)} remaining voters heard from within the"
                f" last election timeout ({heard}), fewer than a quorum of"
                f" {after.quorum}; force skips this check"
            )

    def _check_promote(self, node: int) -> None:
        r = self.replica
        chosen = r.chosen_index
        match = self.match.get(node)
        if match is None:
            raise ProposalRejected(
                f"learner {node} is not caught up: it has not answered this"
                f" leader, whose chosen index is {chosen}"
            )
        floor = self._log_floor()
        if match < floor:
            raise ProposalRejected(
                f"learner {node} is not caught up: its chosen index {match} is"
                f" below {floor}, so it still needs the state (a snapshot)"
            )
        lag = r.options.promote_lag_slots
        if chosen - match > lag:
            raise ProposalRejected(
                f"learner {node} is not caught up: its chosen index {match} is"
                f" {chosen - match} slots behind the leader's {chosen} (at most"
                f" {lag} allowed)"
            )

    def _log_floor(self) -> int:
        """
        The least chosen index a learner must have reported to be caught
        up: one past nothing (a joiner without the state reports 0), and at
        least the leader's compaction point, behind which only a snapshot
        catches it up (a voter promoted at that lag would vote with no
        state, and the quorum would lean on a transfer still under way).
        """
        return max(1, self.replica.snapshot.index)

    def _caught_up(self, match) -> bool:
        """Whether a learner that reported C{match} (or None) is caught up."""
        r = self.replica
        return (
            match is not None
            and match >= self._log_floor()
            and r.chosen_index - match <= r.options.promote_lag_slots
        )

    # --- automatic promotion -------------------------------------------------

    def _count_caught_up(self, m: HeartbeatAck) -> None:
        """
        Count a learner's ack (of this ballot) to a heartbeat: caught up
        extends its run, lagging resets it.  The promotion itself is queued
        when the next Ready is cut (L{_auto_promote}), so that of the
        learners ready by then the lowest id goes first.
        """
        node = m.src
        if node not in self.leader_config.learners:
            return
        if not self.counted_beat.get(node, 0) < m.read_round <= self.beat:
            return
        self.counted_beat[node] = m.read_round
        if self._caught_up(m.chosen_index):
            self.caught_up_beats[node] = self.caught_up_beats.get(node, 0) + 1
        else:
            self.caught_up_beats[node] = 0

    def _promotable(self):
        """
        Return the learner to promote by itself now, if any (a query): with
        auto_promote, no change in flight and no transfer, the lowest id
        caught up for auto_promote_beats acks.
        """
        options = self.replica.options
        if (
            not options.auto_promote
            or self.config_slot is not None
            or self.pending_config is not None
            or self.transfer_target is not None
        ):
            return None
        for node in sorted(self.leader_config.learners):
            if (
                self.caught_up_beats.get(node, 0) >= options.auto_promote_beats
                # and still caught up now, as an operator's PROMOTE must be
                and self._caught_up(self.match.get(node))
            ):
                return node
        return None

    def _auto_promote(self) -> None:
        """Queue the promotion of the learner L{_promotable} names, if any."""
        node = self._promotable()
        if node is not None:
            self.pending_config = ConfigChange(ChangeKind.PROMOTE, node)
