"""
The Multi-Paxos replica: a pure state machine in the manner of etcd raft's
C{RawNode}.

The caller feeds it messages (L{Replica.step}), clock ticks (L{Replica.tick})
and client requests (L{Replica.propose}, L{Replica.read_index},
L{Replica.propose_config_change}, L{Replica.transfer_leadership}), then takes
a L{Ready}, performs it in the order the L{Ready} documents, and calls
L{Replica.advance}.

What must not live here: I/O of any kind, clocks, threads, sockets, module
level randomness, or imports of twisted, grpc or lmdb.  The same state and the
same inputs always give the same outputs; the simulator depends on it.

Every replica is an acceptor and a learner.  What it does beyond that depends
on its role, an object swapped on a role change (L{Follower}, L{Candidate},
L{Leader}); the role handles ticks, proposals and the replies meant for a
candidate or a leader.  The acceptor rules (Paxos Made Simple §2.2) are here:

  - promise a ballot only if it is above every ballot promised so far, and
    persist the promise before the Promise leaves;
  - accept in a ballot only if no higher ballot was promised, and persist the
    accepted entries before the Accepted leaves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from kvpaxos.paxos.errors import NotLeader, ProposalRejected
from kvpaxos.paxos.messages import (
    Accept,
    Accepted,
    Ballot,
    Catchup,
    CatchupRequest,
    Config,
    ConfigChange,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Snapshot,
    ZERO_BALLOT,
    value_size,
)
from kvpaxos.paxos.state import Entry, HardState, ReadState, Ready


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

    def __post_init__(self):
        if self.election_ticks < 2 or not 1 <= self.heartbeat_ticks < self.election_ticks:
            raise ValueError(
                "need election_ticks >= 2 and 1 <= heartbeat_ticks < election_ticks"
            )
        if self.window_slots < 1 or self.committed_max < 1:
            raise ValueError("window_slots and committed_max must be positive")
        if not 1 <= self.lease_drift_ticks < self.election_ticks:
            raise ValueError("need 1 <= lease_drift_ticks < election_ticks")


class Replica:
    """
    One Multi-Paxos replica.

    @param node_id: this replica's id, a positive integer unique in the
        cluster.
    @param storage: an L{kvpaxos.storage.interfaces.IReplicaStorage}.  Its
        durable state is read back here, before the replica can answer
        anyone: a restarted acceptor keeps every promise it made.
    @param rng: the only source of randomness (election timeouts).
    @param options: L{Options}.
    @param state_machine: an L{kvpaxos.storage.interfaces.IStateMachine}
        asked for snapshots; without one the log is never compacted.
    @param applied: the slot through which the state machine has already
        applied (a durable state machine knows); by default the snapshot's.
    """

    def __init__(
        self,
        node_id: int,
        storage,
        rng: random.Random,
        options: Options = Options(),
        state_machine=None,
        applied: Optional[int] = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError("node ids are positive integers")
        self.id = node_id
        self.options = options
        self.rng = rng
        self.state_machine = state_machine

        hard = storage.hard_state()
        snapshot = storage.snapshot()
        self.promised: Ballot = hard.promised
        self.snapshot: Snapshot = snapshot
        self.log: dict[int, Entry] = dict(storage.entries(snapshot.index + 1))
        self.chosen_index = max(hard.chosen_index, snapshot.index)
        self.applied = snapshot.index if applied is None else applied
        # Invariant: snapshot.index <= applied <= chosen_index, and every slot
        # in (snapshot.index, chosen_index] is in the log.
        assert snapshot.index <= self.applied <= self.chosen_index, (
            f"applied {self.applied} outside [{snapshot.index}, {self.chosen_index}]"
        )
        # The member sets in force: (slot, config) means config governs the
        # slots after slot.  The last one governs chosen_index + 1.
        self._configs: list[tuple[int, Config]] = [(snapshot.index, snapshot.config)]
        self.config: Config = snapshot.config
        self._track_config_changes(snapshot.index + 1, self.chosen_index)

        self.ticks = 0
        self.max_round = self.promised.round
        self.leader: Optional[int] = None
        self.leader_ballot: Ballot = self.promised
        self.election_elapsed = 0
        self.election_timeout = options.election_ticks
        self.catchup_wait = 0
        #: The peers asked for a catch-up and not yet answered, with the tick
        #: they were asked at: a Catchup or InstallSnapshot is taken only from
        #: one of them or from the current leader (issue 9, hole 9).  An ask
        #: is remembered long enough for a snapshot read off the reactor.
        self.catchup_asked: dict[int, int] = {}
        self._catchup_memory_ticks = 10 * max(options.catchup_retry_ticks, options.election_ticks)
        #: The candidate this replica last promised, and the tick it did:
        #: for election_ticks it grants no other node's pre-vote, so a second
        #: campaign does not depose one that is still collecting promises.
        self._promised_to: Optional[int] = None
        self._promised_tick = 0

        # Work for the next Ready.
        self._persisted = HardState(self.promised, self.chosen_index)
        self._entries: dict[int, Entry] = {}
        self._snapshot_out: Optional[Snapshot] = None
        # Peers behind a data-less compaction point, to be sent the state.
        self._snapshot_wanted: set[int] = set()
        self._install = False
        self.messages: list[Message] = []
        self.durable_messages: list[Message] = []
        self.self_messages: list[Message] = []
        self.read_states: list[ReadState] = []
        self._outstanding: Optional[Ready] = None

        self._handlers = {
            Prepare: self._on_prepare,
            PreVote: self._on_pre_vote,
            Accept: self._on_accept,
            Heartbeat: self._on_heartbeat,
            Nack: self._on_nack,
            CatchupRequest: self._on_catchup_request,
            Catchup: self._on_catchup,
            InstallSnapshot: self._on_install_snapshot,
        }
        from kvpaxos.paxos.roles import Follower

        self.role = None
        self.become(Follower(self))

    # --- the caller's interface ----------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica currently leads."""
        return self.role.name == "leader"

    def step(self, message: Message) -> None:
        """
        Take one message addressed to this replica.

        @raise ValueError: the message is addressed to another replica.
        """
        if message.dst != self.id:
            raise ValueError(f"message for {message.dst} stepped into {self.id}")
        handler = self.role.handlers.get(type(message)) or self._handlers.get(
            type(message)
        )
        if handler is not None:
            handler(message)

    def tick(self) -> None:
        """Advance this replica's clock by one tick."""
        self.ticks += 1
        if self.catchup_wait:
            self.catchup_wait -= 1
        if self.catchup_asked:
            # An ask unanswered this long is forgotten: its peer may no longer
            # send chosen values unasked (a request is renewed on every retry).
            expired = self.ticks - self._catchup_memory_ticks
            for peer in [p for p, at in self.catchup_asked.items() if at <= expired]:
                del self.catchup_asked[peer]
        self.role.tick()

    def propose(self, command: bytes) -> None:
        """
        Propose a client command for the log.  The command is chosen (or
        lost, if leadership is lost first) asynchronously; the caller learns
        by seeing it in L{Ready.committed}.

        @raise NotLeader: this replica does not lead.
        @raise ProposalRejected: a leader transfer is in progress.
        """
        self.role.propose(command)

    def propose_config_change(self, change: ConfigChange) -> None:
        """
        Propose one change of the member set.  It takes effect for the slots
        after its own, once it is chosen; until then no later slot is
        proposed, so no slot is decided under two member sets.

        @raise NotLeader: this replica does not lead.
        @raise ProposalRejected: another change is still in flight.
        @raise kvpaxos.paxos.messages.ConfigError: the change does not apply.
        """
        self.role.propose_config_change(change)

    def read_index(self, context) -> None:
        """
        Ask for the index at which a linearizable read issued now may be
        served: the leader confirms with one heartbeat round to a quorum
        (shared by all reads asked for meanwhile) that it still leads.  The
        answer arrives as a L{ReadState} with C{context} in a later
        L{Ready}; a leader that loses leadership first answers C{None}.

        @raise NotLeader: this replica does not lead.
        """
        self.role.read_index(context)

    def lease_read_index(self) -> Optional[int]:
        """
        Return the index at which a read may be served now without a quorum
        round, if this leader holds a read lease: a quorum acknowledged one
        of its heartbeats less than C{election_ticks - lease_drift_ticks}
        ticks ago (so no other leader can have been elected since), it is
        not handing leadership over, and its re-proposals are chosen.
        Otherwise return C{None} (use L{read_index}).  Safe only if clocks
        tick at rates within the drift allowance.

        @raise NotLeader: this replica does not lead.
        """
        return self.role.lease_read_index()

    def transfer_leadership(self, target: int) -> None:
        """
        Hand leadership to voter C{target}: stop taking proposals, wait until
        C{target} has learned everything chosen, then tell it to campaign.
        Given up after C{election_ticks}.

        @raise NotLeader: this replica does not lead.
        @raise ProposalRejected: C{target} is not another voter.
        """
        self.role.transfer_leadership(target)

    def pre_campaign(self) -> None:
        """Ask the voters whether a campaign could win, changing nothing."""
        from kvpaxos.paxos.roles import PreCandidate

        self.become(PreCandidate(self))

    def campaign(self, transfer: bool = False, asked_by: Ballot = ZERO_BALLOT) -> None:
        """
        Start phase 1 with a ballot above every ballot seen; C{transfer}: a
        campaign the leader of ballot C{asked_by} asked for.
        """
        from kvpaxos.paxos.roles import Candidate

        self.max_round = max(self.max_round, self.promised.round) + 1
        ballot = Ballot(self.max_round, self.id)
        self.promised = ballot
        self.leader = None
        self.become(Candidate(self, ballot, transfer, asked_by))

    def has_ready(self) -> bool:
        """Whether L{ready} would return any work."""
        if self._outstanding is not None:
            return False
        self.role.flush()
        return bool(
            self._entries
            or self._snapshot_out is not None
            or self.messages
            or self.durable_messages
            or self.self_messages
            or self.read_states
            or self._snapshot_wanted
            or self.chosen_index > self.applied
            or self.promised != self._persisted.promised
            or self.chosen_index != self._persisted.chosen_index
        )

    def ready(self) -> Ready:
        """
        Return the work accumulated since the last L{Ready}.  The caller must
        call L{advance} with it before asking for another.
        """
        assert self._outstanding is None, "advance() the previous Ready first"
        self.role.flush()
        rd = Ready()
        hard = HardState(self.promised, self.chosen_index)
        if hard != self._persisted:
            rd.hard_state = hard
            self._persisted = hard
        if self._entries:
            rd.entries = sorted(self._entries.items())
            self._entries = {}
        if self._snapshot_out is not None:
            rd.snapshot = self._snapshot_out
            rd.install_snapshot = self._install
            self._snapshot_out = None
            self._install = False
        rd.messages, self.messages = self.messages, []
        rd.durable_messages, self.durable_messages = self.durable_messages, []
        rd.self_messages, self.self_messages = self.self_messages, []
        rd.read_states, self.read_states = self.read_states, []
        rd.snapshot_wanted = sorted(self._snapshot_wanted)
        self._snapshot_wanted.clear()
        start = (rd.snapshot.index if rd.install_snapshot else self.applied) + 1
        end = min(self.chosen_index, start + self.options.committed_max - 1)
        log = self.log
        rd.committed = [(s, log[s].value) for s in range(start, end + 1)]
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """
        Say that C{rd} was performed: persisted, sent and applied.  The
        replica's own Promise or Accepted in it now count.
        """
        assert rd is self._outstanding, "advance() takes the last Ready"
        self._outstanding = None
        if rd.install_snapshot:
            self.applied = max(self.applied, rd.snapshot.index)
        if rd.committed:
            self.applied = rd.committed[-1][0]
        for message in rd.self_messages:
            self.step(message)
        interval = self.options.snapshot_interval
        if (
            self.state_machine is not None
            and interval
            and self.applied - self.snapshot.index >= interval
        ):
            self._take_snapshot()

    # --- the acceptor ------------------------------------------------------

    def _hears_leader_other_than(self, node: int) -> bool:
        # Leader stickiness (compare raft's CheckQuorum lease): while this
        # replica hears from a live leader it ignores other campaigns, so a
        # partitioned node that comes back with a high round cannot depose a
        # healthy leader.
        return (
            self.leader is not None
            and self.leader != node
            and self.election_elapsed < self.options.election_ticks
        )

    def _waived(self, prepare: Prepare) -> bool:
        # A transfer campaign asked for by the leader this replica follows:
        # that leader gave up its lease when it sent the TimeoutNow.  Asked
        # for by any other ballot (a leader deposed since), it is an
        # ordinary campaign (found in review, issue 9).
        return prepare.transfer and prepare.asked_by == self.leader_ballot

    def _sticky(self, prepare: Prepare) -> bool:
        return not self._waived(prepare) and self._hears_leader_other_than(prepare.src)

    def _on_pre_vote(self, m: PreVote) -> None:
        # Grant only what _on_prepare would promise: no live leader heard,
        # not starting, and the candidate lacks nothing this replica knows
        # chosen.  No state changes; the reply needs nothing persisted.
        granted = (
            not self._hears_leader_other_than(m.src)
            and not self._hears_candidate_other_than(m.src)
            and not self._starting()
            and self.chosen_index < m.first_slot
        )
        self.send(PreVoteReply(self.id, m.src, m.ballot, granted, self.chosen_index))

    def _hears_candidate_other_than(self, node: int) -> bool:
        # As raft resets its election timer when it grants a vote: a replica
        # that promised a candidate within election_ticks does not help
        # another start a campaign, which would depose the first 10-50 ms
        # after it won (duelling elections the simulator found).
        return (
            self._promised_to is not None
            and self._promised_to != node
            and self.ticks - self._promised_tick < self.options.election_ticks
        )

    def _starting(self) -> bool:
        # A replica refuses pre-votes and non-transfer Prepares for its first
        # election_ticks: it may have acked a leader's heartbeat just before
        # it restarted, and that leader's read lease counts on it.
        return self.ticks < self.options.election_ticks

    def _on_prepare(self, m: Prepare) -> None:
        if m.ballot < self.promised:
            self.send(Nack(self.id, m.src, m.ballot, self.promised, self.chosen_index))
            return
        if self._sticky(m):
            return
        if self._starting():
            # The start guard, as for pre-votes (issue 9, hole 5), transfers
            # included: whose beat this replica acked before it restarted is
            # not known, so no transfer can be known to come from that leader.
            return
        if self.chosen_index >= m.first_slot:
            # The candidate lacks slots this replica knows chosen: refuse
            # without promising and let it catch up first.  This bounds a
            # Promise to the slots not yet chosen.
            self.send(Nack(self.id, m.src, m.ballot, self.promised, self.chosen_index))
            return
        if m.ballot > self.promised:
            self.promised = m.ballot
            self.max_round = max(self.max_round, m.ballot.round)
            self.role.outranked(m.ballot)
        if m.src != self.id:
            self._promised_to = m.src
            self._promised_tick = self.ticks
            self.election_elapsed = 0
        first = m.first_slot
        accepted = tuple(
            (s, e.ballot, e.value) for s, e in sorted(self.log.items()) if s >= first
        )
        # Paxos Made Simple §2.2: the promise holds only once it is durable.
        self.durable_messages.append(Promise(self.id, m.src, m.ballot, first, accepted))

    def _on_accept(self, m: Accept) -> None:
        ballot = m.ballot
        if ballot < self.promised:
            self.send(Nack(self.id, m.src, ballot, self.promised, self.chosen_index))
            return
        if ballot > self.promised:
            self.promised = ballot
            self.max_round = max(self.max_round, ballot.round)
        chosen = self.chosen_index
        log = self.log
        floor = self.snapshot.index
        slot = m.first_slot
        for value in m.values:
            if slot > chosen:
                break
            if slot > floor and log[slot].value != value:
                # A stale Accept from a deposed leader for a slot this
                # replica already learned chosen otherwise: that ballot can
                # no longer gather a quorum (Paxos Made Simple §2.2, P2b);
                # neither store nor acknowledge it.
                return
            slot += 1
        self._follow(ballot)
        entries = self._entries
        slot = m.first_slot
        for value in m.values:
            if slot > chosen:
                entry = Entry(ballot, value)
                log[slot] = entry
                entries[slot] = entry
            slot += 1
        self.durable_messages.append(
            Accepted(self.id, m.src, ballot, m.first_slot, len(m.values), self.chosen_index)
        )
        self._learn(ballot, m.chosen_index, m.src)

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if m.ballot < self.promised:
            self.send(Nack(self.id, m.src, m.ballot, self.promised, self.chosen_index))
            return
        self._follow(m.ballot)
        self._learn(m.ballot, m.chosen_index, m.src)
        self.send(HeartbeatAck(self.id, m.src, m.ballot, m.read_round, self.chosen_index))

    def _on_nack(self, m: Nack) -> None:
        self.max_round = max(self.max_round, m.promised.round)
        if m.chosen_index > self.chosen_index and not self.is_leader:
            self.request_catchup(m.src)
        if self.role.ballot is not None and m.ballot == self.role.ballot:
            if m.promised > m.ballot:
                self.step_down(leader=None)

    def _follow(self, ballot: Ballot) -> None:
        """Note that the leader of C{ballot} is alive."""
        if ballot >= self.leader_ballot:
            self.leader_ballot = ballot
            self.leader = ballot.node
        if ballot.node == self.leader:
            self.election_elapsed = 0
        self.role.leader_heard(ballot)

    # --- the learner -------------------------------------------------------

    def _learn(self, ballot: Ballot, leader_chosen: int, src: int) -> None:
        """
        The leader of C{ballot} has chosen every slot through
        C{leader_chosen}.  A slot this replica accepted in that same ballot
        holds the leader's value, which is the chosen one; any other slot
        must be fetched.
        """
        slot = self.chosen_index
        if slot >= leader_chosen:
            return
        if not self.config.voters:
            # Joining: the log means nothing without the member set it starts
            # from, which only a snapshot brings.
            self.request_catchup(src)
            return
        log = self.log
        while slot < leader_chosen:
            entry = log.get(slot + 1)
            if entry is None or entry.ballot != ballot:
                break
            slot += 1
        if slot > self.chosen_index:
            self.set_chosen(slot)
        if slot < leader_chosen:
            self.request_catchup(src)

    def set_chosen(self, index: int) -> None:
        """Every slot through C{index} is chosen; the log holds their values."""
        assert index > self.chosen_index, "the chosen index only grows"
        first = self.chosen_index + 1
        self.chosen_index = index
        if self._track_config_changes(first, index):
            self.role.config_changed()
        self.role.chosen_advanced(first, index)

    def _track_config_changes(self, first: int, last: int) -> bool:
        changed = False
        log = self.log
        for slot in range(first, last + 1):
            value = log[slot].value
            if type(value) is ConfigChange:
                self.config = self.config.apply(value)
                self._configs.append((slot, self.config))
                changed = True
        return changed

    def config_after(self, index: int) -> Config:
        """Return the member set that governs the slot after C{index}."""
        config = self._configs[0][1]
        for slot, later in self._configs:
            if slot > index:
                break
            config = later
        return config

    def request_catchup(self, dst: int) -> None:
        if self.catchup_wait or dst == self.id:
            return
        self.catchup_wait = self.options.catchup_retry_ticks
        self.catchup_asked[dst] = self.ticks
        # A node that joined with no member set cannot replay the log from
        # slot 1: it needs the member set the log starts from, so it asks for
        # a snapshot (first_slot 0), even the bootstrap one.
        first = self.chosen_index + 1 if self.config.voters else 0
        self.send(CatchupRequest(self.id, dst, first))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        first = m.first_slot
        if first <= self.snapshot.index:
            if self.snapshot.data is not None:
                self.send(InstallSnapshot(self.id, m.src, self.snapshot))
            else:
                # A durable state machine's compaction point: the state is
                # taken off this call (it is O(state)), see Ready.
                self._snapshot_wanted.add(m.src)
            return
        entries = []
        size = 0
        log = self.log
        limit = self.options.message_bytes_max
        for slot in range(first, self.chosen_index + 1):
            entry = log[slot]
            size += value_size(entry.value)
            if entries and size > limit:
                break  # the rest next time; one oversized slot goes alone
            entries.append((entry.ballot, entry.value))
        if entries:
            self.send(Catchup(self.id, m.src, first, tuple(entries), self.chosen_index))

    def _solicited(self, src: int) -> bool:
        """
        Whether chosen values from C{src} may be taken: it leads, or this
        replica asked it.  A misconfigured neighbour (another cluster on a
        reused address, a stale process) must not write into this log.
        """
        if self.catchup_asked.pop(src, None) is not None:
            return True
        return src == self.leader

    def _on_catchup(self, m: Catchup) -> None:
        if self.is_leader:
            # A leader's chosen index must come from its own quorums only:
            # followers learn a slot as chosen from it when they accepted it
            # in its ballot.  A late answer to a request it made while
            # campaigning could make a deposed leader announce slots chosen
            # in a later ballot (its re-proposals cover everything anyway).
            return
        if not self._solicited(m.src):
            return
        self.catchup_wait = 0
        slot = m.first_slot
        if slot > self.chosen_index + 1 or not self.config.voters:
            return
        log = self.log
        for ballot, value in m.entries:
            if slot > self.chosen_index:
                entry = Entry(ballot, value)
                log[slot] = entry
                self._entries[slot] = entry
            slot += 1
        last = m.first_slot + len(m.entries) - 1
        if last > self.chosen_index:
            self.set_chosen(last)
        if self.chosen_index < m.chosen_index:
            self.request_catchup(m.src)

    def would_install(self, m: InstallSnapshot) -> bool:
        """
        Whether stepping C{m} now would install its snapshot (a query: it
        changes nothing), so the caller checks the state only of those.
        """
        if self.is_leader or not (m.src in self.catchup_asked or m.src == self.leader):
            return False
        return self._wanted(m.snapshot)

    def _wanted(self, snapshot: Snapshot) -> bool:
        joining = not self.config.voters and self.chosen_index == 0
        return snapshot.index > self.chosen_index or (joining and bool(snapshot.config.voters))

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        if self.is_leader:
            return  # as for Catchup: a leader learns only from its quorums
        if not self._solicited(m.src):
            return
        self.catchup_wait = 0
        snapshot = m.snapshot
        if not self._wanted(snapshot):
            return
        self.snapshot = snapshot
        self._snapshot_out = snapshot
        self._install = True
        self._drop_log_through(snapshot.index)
        self.chosen_index = snapshot.index
        self._configs = [(snapshot.index, snapshot.config)]
        self.config = snapshot.config
        self.role.config_changed()

    def _drop_log_through(self, index: int) -> None:
        log = self.log
        for slot in [s for s in log if s <= index]:
            del log[slot]
        for slot in [s for s in self._entries if s <= index]:
            del self._entries[slot]

    def _take_snapshot(self) -> None:
        """
        Drop the log through the applied slot, with a copy of the state
        machine's state, or none if the state machine is durable (see
        L{Snapshot}).
        """
        index = self.applied
        machine = self.state_machine
        data = None if getattr(machine, "durable", False) else machine.snapshot()
        snapshot = Snapshot(index, self.config_after(index), data)
        self.snapshot = snapshot
        self._snapshot_out = snapshot
        self._install = False
        self._drop_log_through(index)
        keep = [(s, c) for s, c in self._configs if s > index]
        self._configs = [(index, snapshot.config)] + keep

    def snapshot_message(self, peer: int, index: int, data: bytes) -> Optional[InstallSnapshot]:
        """
        Return the L{InstallSnapshot} that sends C{peer} (one of a Ready's
        C{snapshot_wanted}) a durable state machine's state C{data}, taken
        after it applied slot C{index} (which may be past C{applied}: a
        commit in flight; never past C{chosen_index}).  None if this replica
        has compacted past C{index} meanwhile (the member set there is
        forgotten; the peer asks again).
        """
        assert index <= self.chosen_index, f"state machine at {index}, past chosen {self.chosen_index}"
        if index < self.snapshot.index:
            return None
        return InstallSnapshot(self.id, peer, Snapshot(index, self.config_after(index), data))

    # --- helpers for the roles --------------------------------------------

    def send(self, message: Message) -> None:
        """Queue a message that needs nothing persisted first."""
        self.messages.append(message)

    def become(self, role) -> None:
        """Swap in C{role}; the old role's pending work is settled first."""
        old = self.role
        if old is not None:
            old.leave()
        self.role = role
        role.enter()

    def step_down(self, leader: Optional[int]) -> None:
        """Become a follower of C{leader} (or of nobody yet)."""
        from kvpaxos.paxos.roles import Follower

        self.leader = leader
        self.election_elapsed = 0
        self.become(Follower(self))

    def promise_for(self, ballot: Ballot, first_slot: int) -> Promise:
        """Return this replica's own Promise for its campaign in C{ballot}."""
        accepted = tuple(
            (s, e.ballot, e.value)
            for s, e in sorted(self.log.items())
            if s >= first_slot
        )
        return Promise(self.id, self.id, ballot, first_slot, accepted)

    def accept_own(self, ballot: Ballot, slot: int, value) -> None:
        """Write the leader's own proposal into its log, to be persisted."""
        entry = Entry(ballot, value)
        self.log[slot] = entry
        self._entries[slot] = entry

    def not_leader(self):
        """Return the error for a request only a leader serves."""
        return NotLeader(self.leader)


__all__ = ["Options", "Replica", "NotLeader", "ProposalRejected"]
