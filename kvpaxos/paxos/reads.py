"""
Read rounds and the read lease of a leader (docs/design.md, Reads).

  - ReadIndex: a read asked for now is linearizable at the chosen index
    once the leader has confirmed, by one heartbeat round to a quorum of
    both member sets, that it still leads; the reads asked for in one turn
    of the caller's loop share a round (raft thesis §6.4).  Heartbeats are
    numbered ("beats"); acks echo the number.
  - the lease: a quorum that acked a beat sent at tick T refuses every
    other campaign until T + election_ticks of its own ticks, so until
    T + election_ticks - lease_drift_ticks the leader serves reads with no
    round at all; never after a TimeoutNow in its ballot.
  - the read barrier: no read is answered before the slots re-proposed
    after phase 1 are chosen (raft §6.4: commit an entry of one's own
    ballot first).

L{ReadRounds} is a mixin of L{kvpaxos.paxos.leader.Leader}.  No I/O here.
"""

from __future__ import annotations

from kvpaxos.paxos.messages import HeartbeatAck
from kvpaxos.paxos.state import ReadState


class ReadRounds:
    """The read rounds and lease of a L{kvpaxos.paxos.leader.Leader}."""

    def _init_reads(self, read_barrier: int) -> None:
        #: Reads wait until every slot re-proposed after phase 1 is chosen:
        #: only then does the chosen index cover all that may have been
        #: chosen before this ballot (raft §6.4: commit an entry first).
        self.read_barrier = read_barrier
        #: Heartbeats are numbered ("beats"); acks echo the number, so the
        #: leader knows which broadcast a quorum has answered and when it
        #: was sent (reads and the lease rest on that).
        self.beat = 0
        self.beat_ticks: dict[int, int] = {}
        self.acked_beat: dict[int, int] = {}
        self.lease_until = 0
        self.read_beat = 0
        self.reads_in_round: list[tuple[object, int]] = []
        self.reads_next: list[object] = []
        self.reads_blocked: list[object] = []

    def _abandon_reads(self) -> None:
        """Leadership is lost: every read waiting here is answered None."""
        r = self.replica
        waiting = [c for c, _ in self.reads_in_round] + self.reads_next
        waiting += self.reads_blocked
        r.read_states.extend(ReadState(context, None) for context in waiting)
        self.reads_in_round = []
        self.reads_next = []
        self.reads_blocked = []

    def read_index(self, context) -> None:
        # The round starts when the next Ready is cut (flush), so that every
        # read asked in one turn of the caller's loop shares it.
        if self.replica.chosen_index < self.read_barrier:
            self.reads_blocked.append(context)
        else:
            self.reads_next.append(context)

    def _start_read_round(self) -> None:
        if self.reads_in_round or not self.reads_next:
            return
        r = self.replica
        index = r.chosen_index
        self.reads_in_round = [(context, index) for context in self.reads_next]
        self.reads_next = []
        # The round is the next beat: acks to it are sent after every read in
        # the round was asked for.
        self._heartbeat()
        self.read_beat = self.beat
        self._check_read_round()

    def _quorum_beat(self) -> int:
        """
        Return the highest beat a quorum of both member sets has acked (this
        leader counting as having acked its latest).
        """
        r = self.replica
        acked = dict(self.acked_beat)
        acked[r.id] = self.beat
        beat = self.beat
        for config in (r.config, self.leader_config):
            beats = sorted((acked.get(v, 0) for v in config.voters), reverse=True)
            beat = min(beat, beats[config.quorum - 1])
        return beat

    def _check_read_round(self) -> None:
        r = self.replica
        if self.reads_in_round and self._quorum_beat() >= self.read_beat:
            r.read_states.extend(ReadState(c, i) for c, i in self.reads_in_round)
            self.reads_in_round = []
            self._start_read_round()

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if not self._heard(m):
            return
        self._count_caught_up(m)
        if m.read_round > self.acked_beat.get(m.src, 0) and m.read_round <= self.beat:
            self.acked_beat[m.src] = m.read_round
            self._extend_lease()
            self._check_read_round()
        if self.transfer_target is not None:
            self._try_transfer()

    def _extend_lease(self) -> None:
        # A follower that acked a beat refuses other campaigns (pre-votes
        # included) for election_ticks of its own ticks after receiving it,
        # and a restarted one for election_ticks after it starts; so no other
        # leader can be elected before the beat's send tick plus
        # election_ticks.  The drift allowance covers clocks that tick at
        # different rates.
        r = self.replica
        beat = self._quorum_beat()
        sent = self.beat_ticks.get(beat)
        if sent is None:
            return
        options = r.options
        self.lease_until = max(
            self.lease_until, sent + options.election_ticks - options.lease_drift_ticks
        )
        for old in [b for b in self.beat_ticks if b < beat]:
            del self.beat_ticks[old]

    def lease_read_index(self):
        r = self.replica
        if (
            self.transfer_target is None
            and not self.lease_forfeited
            and r.ticks < self.lease_until
            and r.chosen_index >= self.read_barrier
        ):
            return r.chosen_index
        return None
