"""
The tunables of a replica (L{Options}): times in ticks, sizes in bytes, and
the leader's membership rules.  Plain data, checked when built; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """
    Tunables of a replica.  Times are in ticks; sizes in bytes as counted by
    L{kvpaxos.paxos.messages.value_size}.

    @ivar election_ticks: a follower that hears no leader for a random number
        of ticks in [election_ticks, 2 * election_ticks) campaigns; a leader
        that hears from no quorum for election_ticks steps down.
    @ivar heartbeat_ticks: a leader sends heartbeats this often.
    @ivar window_slots: at most this many slots past the chosen index are in
        flight at once.
    @ivar batch_bytes_max: a slot's batch of commands is cut at this size (a
        single larger command gets a slot of its own).
    @ivar message_bytes_max: an Accept or Catchup carrying several slots
        stops adding slots at this size.
    @ivar retransmit_ticks: an Accept not acknowledged for this long is sent
        again to the voters that did not answer.
    @ivar catchup_retry_ticks: a catch-up request not answered for this long
        may be sent again.
    @ivar snapshot_interval: take a snapshot of the state machine (and drop
        the log before it) every this many applied slots; 0 never does.
    @ivar committed_max: at most this many slots to apply per L{Ready}.
    @ivar lease_drift_ticks: how much shorter than election_ticks a leader's
        read lease is: at least 1, since tick quantisation alone costs one
        (the leader counts its lease from the tick it sent a beat on, a
        follower its stickiness from the tick it received it, and the two
        tick boundaries are up to one tick apart); each tick more allows for
        clocks ticking at different rates, about election_ticks per
        lease_drift_ticks - 1 of relative rate error, plus what delivery
        delay the beat saw (issue 9, hole 6).
    @ivar promote_lag_slots: a learner is promoted only while the chosen
        index it last reported to the leader is at most this many slots
        behind the leader's.  1,000 by default: a healthy learner under load
        trails by what is chosen in one heartbeat round trip (a window or
        two of slots), and 1,000 slots are a few Catchup messages away,
        well below C{snapshot_interval}, so a promoted voter never needs a
        snapshot to catch up (docs/design.md, "Membership rules").
    @ivar auto_promote: the leader promotes a learner by itself once it has
        been caught up (within promote_lag_slots) for auto_promote_beats
        consecutive acks to its heartbeats, when no change is in flight;
        one learner at a time, lowest id first.
    @ivar auto_promote_beats: see auto_promote.
    """

    election_ticks: int = 10
    heartbeat_ticks: int = 2
    window_slots: int = 64
    batch_bytes_max: int = 60_000
    message_bytes_max: int = 60_000
    retransmit_ticks: int = 4
    catchup_retry_ticks: int = 4
    snapshot_interval: int = 10_000
    committed_max: int = 4096
    lease_drift_ticks: int = 2
    promote_lag_slots: int = 1000
    auto_promote: bool = False
    auto_promote_beats: int = 10

    def __post_init__(self):
        if self.election_ticks < 2 or not 1 <= self.heartbeat_ticks < self.election_ticks:
            raise ValueError(
                "need election_ticks >= 2 and 1 <= heartbeat_ticks < election_ticks"
            )
        if self.window_slots < 1 or self.committed_max < 1:
            raise ValueError("window_slots and committed_max must be positive")
        if not 1 <= self.lease_drift_ticks < self.election_ticks:
            raise ValueError("need 1 <= lease_drift_ticks < election_ticks")
        if self.promote_lag_slots < 0 or self.auto_promote_beats < 1:
            raise ValueError("need promote_lag_slots >= 0 and auto_promote_beats >= 1")


__all__ = ["Options"]
