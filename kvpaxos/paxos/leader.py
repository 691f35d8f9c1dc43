"""
The leader: phase 2 of Multi-Paxos with a stable leader (Paxos Made Simple
§3; Paxos Made Moderately Complex).  It batches commands into slots, keeps a
bounded window of slots in flight (pipelining), counts Accepteds per slot
against the member set that governs it, learns what is chosen and tells the
followers (on Accepts and heartbeats), retransmits unanswered Accepts, sends
heartbeats, steps down when no quorum was heard for an election timeout
(L{CheckQuorum}), and hands leadership over on request (L{TimeoutNow}).
The rules for the member-set changes it takes are in
L{kvpaxos.paxos.membership}.

Its timeouts are inputs stepped like messages: L{HeartbeatTimeout} (etcd
raft's MsgBeat) and L{CheckQuorum} (MsgCheckQuorum), made by its tick.
Read rounds and the read lease are in L{kvpaxos.paxos.reads}.

No I/O here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvpaxos.paxos.config import Config, ConfigChange
from kvpaxos.paxos.errors import ProposalRejected
from kvpaxos.paxos.messages import (
    COMMAND_OVERHEAD_BYTES,
    VALUE_OVERHEAD_BYTES,
    Accept,
    Accepted,
    Ballot,
    Batch,
    CheckQuorum,
    Heartbeat,
    HeartbeatAck,
    HeartbeatTimeout,
    TimeoutNow,
    value_size,
)
from kvpaxos.paxos.membership import MemberRules
from kvpaxos.paxos.reads import ReadRounds
from kvpaxos.paxos.roles import Role


@dataclass(slots=True)
class InFlight:
    """A slot the leader proposed and does not yet know chosen."""

    value: object
    config: Config
    sent: int
    acks: set = field(default_factory=set)
    chosen: bool = False


class Leader(ReadRounds, MemberRules, Role):
    """
    Runs phase 2 only: batches commands into slots, keeps a bounded window of
    slots in flight, learns what is chosen, sends heartbeats, confirms
    leadership for reads, and hands leadership over on request.
    """

    name = "leader"
    leads = True

    def __init__(self, replica, ballot: Ballot, plan, config: Config) -> None:
        super().__init__(replica)
        self.ballot = ballot
        self.plan = plan
        #: The member set that governs the next new slot.
        self.leader_config = config
        self.inflight: dict[int, InFlight] = {}
        self.next_slot = replica.chosen_index + 1
        self._init_reads(plan[-1][0] if plan else replica.chosen_index)
        #: Full batches waiting for the window, then the batch being filled.
        self.batches: deque[tuple[bytes, ...]] = deque()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.batch_room = replica.options.batch_bytes_max - VALUE_OVERHEAD_BYTES
        self.pending_config: ConfigChange | None = None
        self.config_slot: int | None = None
        self.heartbeat_elapsed = 0
        self.quorum_elapsed = 0
        #: The nodes heard from (in this ballot) since the last CheckQuorum.
        self.heard: set[int] = set()
        #: node -> the highest chosen index it reported in this ballot; a
        #: node not heard from in this ballot has no entry.
        self.match: dict[int, int] = {}
        self._init_members()
        self.transfer_target: int | None = None
        self.transfer_elapsed = 0
        self.transfer_sent = False
        #: A TimeoutNow went out in this ballot: its target may campaign at
        #: any later time, skipping the pre-vote and every follower's
        #: stickiness, even after the transfer was given up; the lease rests
        #: on those, so it is gone for the rest of this ballot.
        self.lease_forfeited = False
        #: The chosen index the followers were last told (Accepts and
        #: heartbeats carry it).
        self.announced_chosen = replica.chosen_index
        self.peers: list[int] = []
        self.handlers = {
            Accepted: self._on_accepted,
            HeartbeatAck: self._on_heartbeat_ack,
            HeartbeatTimeout: self._on_heartbeat_timeout,
            CheckQuorum: self._on_check_quorum,
        }

    # --- taking and leaving office ---------------------------------------

    def enter(self) -> None:
        r = self.replica
        r.leader = r.id
        r.leader_ballot = self.ballot
        r.election_elapsed = 0
        self._update_peers()
        if self.plan:
            first = self.plan[0][0]
            for slot, value, config in self.plan:
                self._place(slot, value, config)
            self._send_accepts(first, self.next_slot - 1)
        self.plan = None
        self._heartbeat()

    def leave(self) -> None:
        self._abandon_reads()

    def config_changed(self) -> None:
        r = self.replica
        if r.id not in r.config.voters:
            r.step_down(leader=None)
            return
        before = set(self.peers)
        self._update_peers()
        for gone in sorted(before - set(self.peers)):
            # A member whose removal is now chosen hears it once more: the
            # chosen index tells it that its removal is chosen (it stops),
            # for no later message of this leader reaches it.
            r.send(Heartbeat(r.id, gone, self.ballot, r.chosen_index, self.beat))

    def _update_peers(self) -> None:
        r = self.replica
        self.peers = sorted((r.config.members | self.leader_config.members) - {r.id})

    # --- phase 2 -----------------------------------------------------------

    def propose(self, command: bytes) -> None:
        if self.transfer_target is not None:
            raise ProposalRejected("a leader transfer is in progress")
        size = len(command) + COMMAND_OVERHEAD_BYTES
        if self.pending and self.pending_bytes + size > self.batch_room:
            # Cut the batch before the command that would overflow it, so a
            # slot's value never exceeds batch_bytes_max (unless one command
            # alone does).
            self.batches.append(tuple(self.pending))
            self.pending = []
            self.pending_bytes = 0
        self.pending.append(command)
        self.pending_bytes += size

    def _window_open(self) -> bool:
        r = self.replica
        return (
            self.config_slot is None
            and self.next_slot <= r.chosen_index + r.options.window_slots
        )

    def flush(self) -> None:
        if self.reads_next:
            self._start_read_round()
        self._auto_promote()
        self._place_pending()
        if self.replica.chosen_index > self.announced_chosen:
            # The followers learn a new chosen index at once, not with the
            # next heartbeat: a write a follower forwarded is answered when
            # the follower applies it (etcd's raft broadcasts after
            # maybeCommit; issue 9, hole 11).  Accepts sent in this flush
            # carried it already.
            self._heartbeat()

    def has_work(self) -> bool:
        # Exactly when flush() would queue something: a read round to start,
        # a batch or change the window has room for, a chosen index to
        # announce to a peer.
        if self.reads_next and not self.reads_in_round:
            return True
        if (self.batches or self.pending or self.pending_config is not None) and self._window_open():
            return True
        if self._window_open() and self._promotable() is not None:
            return True
        return self.replica.chosen_index > self.announced_chosen and bool(self.peers)

    def _place_pending(self) -> None:
        if not (self.batches or self.pending) and self.pending_config is None:
            return
        first = self.next_slot
        batches = self.batches
        while (batches or self.pending) and self._window_open():
            if batches:
                batch = batches.popleft()
            else:
                batch = tuple(self.pending)
                self.pending = []
                self.pending_bytes = 0
            self._place(self.next_slot, Batch(batch), self.leader_config)
        if (
            self.pending_config is not None
            and not (batches or self.pending)
            and self._window_open()
        ):
            change, self.pending_config = self.pending_config, None
            self._place(self.next_slot, change, self.leader_config)
        if self.next_slot > first:
            self._send_accepts(first, self.next_slot - 1)

    def _place(self, slot: int, value, config: Config) -> None:
        r = self.replica
        assert slot == self.next_slot, f"slot {slot} placed out of order"
        r.accept_own(self.ballot, slot, value)
        self.inflight[slot] = InFlight(value, config, r.ticks)
        self.next_slot = slot + 1
        if type(value) is ConfigChange:
            self.config_slot = slot
            self.leader_config = config.apply(value)
            self._update_peers()

    def _send_accepts(self, first: int, last: int, to=None) -> None:
        """Send Accepts for slots [first, last], several slots per message."""
        r = self.replica
        inflight = self.inflight
        limit = r.options.message_bytes_max
        peers = self.peers if to is None else to
        start = first
        while start <= last:
            values = [inflight[start].value]
            size = value_size(values[0])
            slot = start + 1
            while slot <= last:
                value = inflight[slot].value
                size += value_size(value)
                if size > limit:
                    break
                values.append(value)
                slot += 1
            values = tuple(values)
            for peer in peers:
                r.send(Accept(r.id, peer, self.ballot, start, values, r.chosen_index))
            if to is None:
                self.announced_chosen = r.chosen_index
                # Our own acceptance counts once our log write is durable.
                r.self_messages.append(
                    Accepted(r.id, r.id, self.ballot, start, len(values), r.chosen_index)
                )
            start = slot

    def _heard(self, m) -> bool:
        """
        Note a reply (Accepted or HeartbeatAck) from a follower of this
        ballot: it is alive (check quorum) and has learned through its
        C{chosen_index} (transfer).  Return False for a reply to another
        ballot, which counts for nothing.
        """
        if m.ballot != self.ballot:
            return False
        self.heard.add(m.src)
        self.match[m.src] = max(self.match.get(m.src, 0), m.chosen_index)
        return True

    def _on_accepted(self, m: Accepted) -> None:
        if not self._heard(m):
            return
        inflight = self.inflight
        newly = False
        for slot in range(m.first_slot, m.first_slot + m.count):
            p = inflight.get(slot)
            if p is None or p.chosen:
                continue
            p.acks.add(m.src)
            if p.config.is_quorum(p.acks):
                p.chosen = True
                newly = True
        if newly:
            self._advance_chosen()

    def _advance_chosen(self) -> None:
        r = self.replica
        inflight = self.inflight
        index = r.chosen_index
        while True:
            p = inflight.get(index + 1)
            if p is None or not p.chosen:
                break
            index += 1
        if index > r.chosen_index:
            r.set_chosen(index)

    def chosen_advanced(self, first: int, last: int) -> None:
        # Slots can also become known chosen through a Catchup that was asked
        # for while campaigning; whatever the path, the chosen value must be
        # this leader's own proposal (Paxos Made Simple §2.2, P2b).
        r = self.replica
        inflight = self.inflight
        for slot in range(first, last + 1):
            p = inflight.pop(slot, None)
            # Invariant (agreement): a leader's chosen index moves only by its
            # own quorums, over its own proposals.
            assert p is None or r.log[slot].value == p.value, (
                f"agreement broken: slot {slot} chosen as {r.log[slot].value!r},"
                f" but {self.ballot} proposed {p.value!r}"
            )
        if self.config_slot is not None and last >= self.config_slot:
            self.config_slot = None
        if self.reads_blocked and last >= self.read_barrier:
            self.reads_next.extend(self.reads_blocked)
            self.reads_blocked = []
        # Not flush(): whether a heartbeat must announce the new chosen index
        # is decided when the Ready is cut, once this turn's proposals had
        # their chance to carry it in Accepts.
        if self.reads_next:
            self._start_read_round()
        self._place_pending()
        self._try_transfer()

    # --- time --------------------------------------------------------------

    def tick(self) -> None:
        r = self.replica
        options = r.options
        self.heartbeat_elapsed += 1
        if self.heartbeat_elapsed >= options.heartbeat_ticks:
            r.step(HeartbeatTimeout(r.id, r.id))
        self._retransmit()
        self.quorum_elapsed += 1
        if self.quorum_elapsed >= options.election_ticks:
            r.step(CheckQuorum(r.id, r.id))
            if r.role is not self:
                return
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= options.election_ticks:
                self.transfer_target = None
            else:
                self._try_transfer()

    def _on_heartbeat_timeout(self, m: HeartbeatTimeout) -> None:
        self._heartbeat()

    def _on_check_quorum(self, m: CheckQuorum) -> None:
        # A leader that heard from no quorum for an election timeout steps
        # down rather than hold followers (compare raft's CheckQuorum).
        r = self.replica
        heard = self.heard | {r.id}
        if not (r.config.is_quorum(heard) and self.leader_config.is_quorum(heard)):
            r.step_down(leader=None)
            return
        # The window before is kept, so that what was heard "within the last
        # election timeout" (a REMOVE's quorum rule) covers a whole one.
        self.heard_before = self.heard
        self.heard = set()
        self.quorum_elapsed = 0

    def _heartbeat(self) -> None:
        r = self.replica
        self.heartbeat_elapsed = 0
        self.announced_chosen = r.chosen_index
        self.beat += 1
        self.beat_ticks[self.beat] = r.ticks
        for peer in self.peers:
            r.send(Heartbeat(r.id, peer, self.ballot, r.chosen_index, self.beat))

    def _retransmit(self) -> None:
        r = self.replica
        now = r.ticks
        wait = r.options.retransmit_ticks
        stale = [
            s for s, p in self.inflight.items() if not p.chosen and now - p.sent >= wait
        ]
        if not stale:
            return
        stale.sort()
        run_start = prev = stale[0]
        for slot in stale[1:] + [None]:
            if slot is not None and slot == prev + 1:
                prev = slot
                continue
            missing = set()
            for s in range(run_start, prev + 1):
                p = self.inflight[s]
                p.sent = now
                missing |= set(self.peers) - p.acks
            self._send_accepts(run_start, prev, to=sorted(missing))
            if slot is not None:
                run_start = prev = slot

    # --- leader transfer -----------------------------------------------------

    def transfer_leadership(self, target: int) -> None:
        r = self.replica
        if target == r.id or target not in r.config.voters:
            raise ProposalRejected(f"node {target} is not another voter")
        if target not in self.leader_config.voters:
            raise ProposalRejected(f"node {target} is being removed")
        self.transfer_target = target
        self.transfer_elapsed = 0
        self.transfer_sent = False
        self._try_transfer()

    def _try_transfer(self) -> None:
        r = self.replica
        target = self.transfer_target
        if target is None or self.transfer_sent or self.inflight:
            return
        if self.batches or self.pending:
            return  # proposals taken before the transfer go first
        if self.match.get(target, 0) >= r.chosen_index:
            self.transfer_sent = True
            self.lease_forfeited = True
            r.send(TimeoutNow(r.id, target, self.ballot))
