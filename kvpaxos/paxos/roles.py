"""
The roles of a replica: L{Follower}, L{Candidate} and L{Leader}.

A replica holds exactly one role object and swaps it on a role change (as
etcd raft's C{becomeLeader} swaps C{r.step} and C{r.tick}); nothing here
branches on a role name.  A role handles ticks, client requests and the
replies addressed to it (Promises to a candidate, Accepteds and heartbeat
acks to a leader); the acceptor and learner rules shared by every role live in
L{kvpaxos.paxos.replica}.

Like the rest of the core this module does no I/O and reads no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvpaxos.paxos.errors import ProposalRejected
from kvpaxos.paxos.messages import (
    NOOP,
    Accept,
    Accepted,
    Ballot,
    Batch,
    Config,
    ConfigChange,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    TimeoutNow,
    value_size,
    COMMAND_OVERHEAD_BYTES,
    VALUE_OVERHEAD_BYTES,
    ZERO_BALLOT,
)
from kvpaxos.paxos.state import ReadState


class Role:
    """What every role does unless it says otherwise: refuse leader work."""

    name = "role"
    #: The ballot this role campaigns or leads in; None for a follower.
    ballot: Ballot | None = None

    def __init__(self, replica) -> None:
        self.replica = replica
        self.handlers: dict = {}

    def enter(self) -> None:
        """The replica has just taken this role."""

    def leave(self) -> None:
        """The replica is about to drop this role."""

    def tick(self) -> None:
        """One tick passed."""

    def flush(self) -> None:
        """Turn queued requests into messages before a Ready is cut."""

    def config_changed(self) -> None:
        """A member-set change was chosen (or a snapshot installed)."""

    def outranked(self, ballot: Ballot) -> None:
        """This replica promised C{ballot} to another candidate."""
        if self.ballot is not None and self.ballot < ballot:
            self.replica.step_down(leader=None)

    def leader_heard(self, ballot: Ballot) -> None:
        """The leader of C{ballot} (at least the promised one) is alive."""
        if self.ballot is not None and self.ballot < ballot:
            self.replica.step_down(leader=ballot.node)

    def chosen_advanced(self, first: int, last: int) -> None:
        """The slots [first, last] became known chosen, by any path."""

    def propose(self, command: bytes) -> None:
        raise self.replica.not_leader()

    def propose_config_change(self, change: ConfigChange) -> None:
        raise self.replica.not_leader()

    def read_index(self, context) -> None:
        raise self.replica.not_leader()

    def lease_read_index(self):
        raise self.replica.not_leader()

    def transfer_leadership(self, target: int) -> None:
        raise self.replica.not_leader()

    def _tick_election(self) -> None:
        """
        A pre-candidate's or candidate's tick: when its election timeout
        runs out (split vote, lost messages), it asks again — pre-vote first,
        so a node cut off from the cluster never raises its ballot — after a
        fresh random timeout, so that duelling candidates drift apart.
        """
        r = self.replica
        self.elapsed += 1
        if self.elapsed >= r.election_timeout:
            if r.id in r.config.voters:
                r.pre_campaign()
            else:
                r.step_down(leader=None)

    def _new_election_timeout(self) -> None:
        ticks = self.replica.options.election_ticks
        self.replica.election_timeout = self.replica.rng.randrange(ticks, 2 * ticks)


class Follower(Role):
    """
    Follows whoever leads; campaigns when no leader was heard for a random
    timeout (if it is a voter).
    """

    name = "follower"

    def __init__(self, replica) -> None:
        super().__init__(replica)
        self.handlers = {TimeoutNow: self._on_timeout_now}

    def enter(self) -> None:
        self._new_election_timeout()

    def tick(self) -> None:
        r = self.replica
        r.election_elapsed += 1
        if r.election_elapsed >= r.election_timeout:
            if r.id in r.config.voters:
                r.pre_campaign()
            else:
                r.election_elapsed = 0

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        # Obeyed only from the leader this replica follows and heard lately:
        # a TimeoutNow that arrives late, after that leader was deposed,
        # would otherwise start a campaign while a newer leader holds a lease
        # (found in review, issue 9).
        r = self.replica
        if (
            m.ballot == r.leader_ballot
            and m.src == r.leader
            and r.election_elapsed < r.options.election_ticks
            and r.id in r.config.voters
        ):
            r.campaign(transfer=True, asked_by=m.ballot)


class PreCandidate(Role):
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
        self.elapsed = 0
        self.handlers = {PreVoteReply: self._on_reply}

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

    tick = Role._tick_election

    def outranked(self, ballot: Ballot) -> None:
        self.replica.step_down(leader=None)

    def leader_heard(self, ballot: Ballot) -> None:
        self.replica.step_down(leader=ballot.node)


class Candidate(Role):
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
        self.elapsed = 0
        self.handlers = {Promise: self._on_promise}

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

    tick = Role._tick_election

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


@dataclass(slots=True)
class InFlight:
    """A slot the leader proposed and does not yet know chosen."""

    value: object
    config: Config
    sent: int
    acks: set = field(default_factory=set)
    chosen: bool = False


class Leader(Role):
    """
    Runs phase 2 only: batches commands into slots, keeps a bounded window of
    slots in flight, learns what is chosen, sends heartbeats, confirms
    leadership for reads, and hands leadership over on request.
    """

    name = "leader"

    def __init__(self, replica, ballot: Ballot, plan, config: Config) -> None:
        super().__init__(replica)
        self.ballot = ballot
        self.plan = plan
        #: The member set that governs the next new slot.
        self.leader_config = config
        self.inflight: dict[int, InFlight] = {}
        self.next_slot = replica.chosen_index + 1
        #: Reads wait until every slot re-proposed after phase 1 is chosen:
        #: only then does the chosen index cover all that may have been
        #: chosen before this ballot (raft §6.4: commit an entry first).
        self.read_barrier = plan[-1][0] if plan else replica.chosen_index
        #: Full batches waiting for the window, then the batch being filled.
        self.batches: deque[tuple[bytes, ...]] = deque()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.batch_room = replica.options.batch_bytes_max - VALUE_OVERHEAD_BYTES
        self.pending_config: ConfigChange | None = None
        self.config_slot: int | None = None
        self.heartbeat_elapsed = 0
        self.quorum_elapsed = 0
        self.heard: set[int] = set()
        self.match: dict[int, int] = {}
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
        r = self.replica
        waiting = [c for c, _ in self.reads_in_round] + self.reads_next
        waiting += self.reads_blocked
        r.read_states.extend(ReadState(context, None) for context in waiting)
        self.reads_in_round = []
        self.reads_next = []
        self.reads_blocked = []

    def config_changed(self) -> None:
        r = self.replica
        if r.id not in r.config.voters:
            r.step_down(leader=None)
            return
        self._update_peers()

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

    def propose_config_change(self, change: ConfigChange) -> None:
        if self.transfer_target is not None:
            raise ProposalRejected("a leader transfer is in progress")
        if self.config_slot is not None or self.pending_config is not None:
            raise ProposalRejected("a configuration change is in progress")
        self.leader_config.check(change)
        self.pending_config = change

    def _window_open(self) -> bool:
        r = self.replica
        return (
            self.config_slot is None
            and self.next_slot <= r.chosen_index + r.options.window_slots
        )

    def flush(self) -> None:
        if self.reads_next:
            self._start_read_round()
        self._place_pending()
        if self.replica.chosen_index > self.announced_chosen:
            # The followers learn a new chosen index at once, not with the
            # next heartbeat: a write a follower forwarded is answered when
            # the follower applies it (etcd's raft broadcasts after
            # maybeCommit; issue 9, hole 11).  Accepts sent in this flush
            # carried it already.
            self._heartbeat()

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

    def _on_accepted(self, m: Accepted) -> None:
        if m.ballot != self.ballot:
            return
        self.heard.add(m.src)
        if m.chosen_index > self.match.get(m.src, 0):
            self.match[m.src] = m.chosen_index
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
            self._heartbeat()
        self._retransmit()
        self.quorum_elapsed += 1
        if self.quorum_elapsed >= options.election_ticks:
            # Check quorum: a leader that heard from no quorum for an
            # election timeout steps down rather than hold followers.
            heard = self.heard | {r.id}
            if not (r.config.is_quorum(heard) and self.leader_config.is_quorum(heard)):
                r.step_down(leader=None)
                return
            self.heard = set()
            self.quorum_elapsed = 0
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= options.election_ticks:
                self.transfer_target = None
            else:
                self._try_transfer()

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

    # --- reads -------------------------------------------------------------

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
        if m.ballot != self.ballot:
            return
        self.heard.add(m.src)
        if m.chosen_index > self.match.get(m.src, 0):
            self.match[m.src] = m.chosen_index
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
