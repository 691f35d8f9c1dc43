"""
L{NodeWatch}: what a L{kvpaxos.node.service.ReplicaService} tells about
itself, and what it keeps watch of: its status (L{NodeWatch.status}), a
log line for each leader it learns of (L{_note_leader}), whether every
voter reported the timing lease reads count on (L{peer_timing},
L{_lease_allowed}), the alarm raised and cleared from the store's use
against the quota (L{_check_space}, L{_no_space}), and its view handed to
the metrics on ticks (L{_hand_over_view}).  A mixin: it reads the
service's replica, store, clock and settings, in the reactor thread.
"""

from __future__ import annotations

from kvpaxos.api.errors import NoSpace
from kvpaxos.node.interfaces import NodeStatus, Timing


class NodeWatch:
    """Status, leader changes, the peers' timing, the space alarm and the metrics' view, for L{ReplicaService}."""

    def peer_timing(self, peer_id: int, timing: Timing) -> None:
        """
        Peer C{peer_id} runs with C{timing}.  A read lease counts on every
        member ticking alike, so this node refuses lease reads while a voter
        reports other timing than its own (issue 9, hole 6).
        """
        self._peer_timing[peer_id] = timing
        self._lease_allowed()

    def _lease_allowed(self) -> bool:
        """
        Whether lease reads may be served: enabled here, and every other
        voter reported the same timing as this node.  A change of the
        reason is logged once.
        """
        if not self.lease_reads:
            return False
        reason = None
        for voter in sorted(self.replica.config.voters - {self.node_id}):
            theirs = self._peer_timing.get(voter)
            if theirs is None:
                reason = f"node {voter} has not reported its timing"
                break
            if theirs != self.timing:
                reason = f"node {voter} runs {theirs}, this node {self.timing}"
                break
        if reason != self._lease_refused:
            self._lease_refused = reason
            if reason is None:
                self.log.info("lease reads allowed: every voter runs {timing}", timing=self.timing)
            else:
                self.log.warn("lease reads refused: {reason}", reason=reason)
        return reason is None

    def _note_leader(self) -> None:
        """Log each change of the leader this node knows of, or of its ballot (an election that it won again)."""
        replica = self.replica
        leader = replica.leader
        seen = (leader, replica.leader_ballot.round if leader is not None else None)
        if seen == self._leader_seen:
            return
        self._leader_seen = seen
        if self.metrics is not None and leader is not None:
            self.metrics.leader_changed()  # a new leader (or ballot) heard of, as etcd counts them
        if leader is None:
            self.log.info("node {node_id}: no leader known", node_id=self.node_id)
        elif leader == self.node_id:
            self.log.info("node {node_id} is the leader (ballot round {round})", node_id=self.node_id,
                          round=seen[1])
        else:
            self.log.info("node {node_id} follows leader {leader} (ballot round {round})", node_id=self.node_id,
                          leader=leader, round=seen[1])

    def _used_bytes(self) -> int:
        return getattr(self.store, "used_bytes", 0) or 0

    def _check_space(self) -> None:
        """Raise or clear the space alarm from the store's use (after each commit and on ticks)."""
        if not self.quota_bytes:
            return
        used = self._used_bytes()
        over = used >= self.quota_bytes
        if over and not self.space_alarm:
            self.space_alarm = True
            self.log.warn("space alarm: {used} of the {quota}-byte quota in use; writes that grow the store "
                          "are refused until deletes bring it under", used=used, quota=self.quota_bytes)
        elif not over and self.space_alarm:
            self.space_alarm = False
            self.log.info("space alarm cleared: {used} of the {quota}-byte quota in use", used=used,
                          quota=self.quota_bytes)

    def _no_space(self):
        """The refusal of a write that would grow the store, while the space alarm is on."""
        if not self.space_alarm:
            return None
        return NoSpace(self._used_bytes(), self.quota_bytes)

    def _hand_over_view(self) -> None:
        """Give the metrics this node's view (on ticks): the scrape, in another thread, reads only that copy."""
        if self.metrics is not None:
            links = self.peers.link_states() if hasattr(self.peers, "link_states") else None
            counts = {}
            if self.writes is not None:
                counts["proposals"] = self.writes.proposed
                counts["proposals_failed"] = self.writes.failed
            if self.snapshots is not None:
                counts["snapshot_sent_bytes"] = self.snapshots.sender.bytes_sent
                counts["snapshot_received_bytes"] = self.snapshots.receiver.bytes_received
            self.metrics.update(self.status(), links, counts)

    # --- status --------------------------------------------------------------

    def status(self) -> NodeStatus:
        replica = self.replica
        return NodeStatus(
            member_id=self.node_id,
            role=replica.role.name,
            leader=replica.leader,
            voters=tuple(sorted(replica.config.voters)),
            learners=tuple(sorted(replica.config.learners)),
            chosen_index=replica.chosen_index,
            applied_index=replica.applied,
            ballot_round=replica.leader_ballot.round,
            leader_silent_s=(0.0 if replica.leader in (None, self.node_id)
                             else max(0.0, self.clock.seconds() - self._leader_heard_at)),
            election_timeout_s=replica.options.election_ticks * self.tick_s,
            used_bytes=self._used_bytes(),
            quota_bytes=self.quota_bytes,
            space_alarm=self.space_alarm,
        )
