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

The core, module by module, as the paper tells it:

  - L{kvpaxos.paxos.acceptor}: the acceptor rules (Paxos Made Simple §2.2),
    the one ballot check, stickiness, the start guard, the pre-vote answer;
  - L{kvpaxos.paxos.learner}: the chosen index, catch-up, snapshots and the
    member set in force per slot;
  - L{kvpaxos.paxos.roles}, L{kvpaxos.paxos.election}: following, pre-vote
    and phase 1;
  - L{kvpaxos.paxos.leader}: phase 2, heartbeats, check quorum, transfer;
  - L{kvpaxos.paxos.reads}: read rounds and the read lease;
  - L{kvpaxos.paxos.membership}: the leader's rules for member-set changes
    (promote only caught-up learners, remove only with a quorum heard from,
    never the leader itself; automatic promotion);
  - L{kvpaxos.paxos.config}, L{kvpaxos.paxos.messages},
    L{kvpaxos.paxos.state}, L{kvpaxos.paxos.options}: the values.

Every replica is an acceptor and a learner (the mixins L{Acceptor} and
L{Learner} over the state declared in L{Replica.__init__}).  What it does
beyond that depends on its role, an object swapped on a role change
(L{Follower}, L{PreCandidate}, L{Candidate}, L{Leader}).  This module holds
the caller's interface: step, tick, the requests, and the L{Ready} cycle.

Time is ticks counted here.  A timeout that runs out becomes a message the
replica steps into itself (L{kvpaxos.paxos.messages.ElectionTimeout},
C{HeartbeatTimeout}, C{CheckQuorum}; etcd raft's MsgHup, MsgBeat,
MsgCheckQuorum), so a test can step a timeout directly.
"""

from __future__ import annotations

import random
from typing import Optional

from kvpaxos.paxos.acceptor import Acceptor
from kvpaxos.paxos.config import Config, ConfigChange
from kvpaxos.paxos.election import Candidate, PreCandidate
from kvpaxos.paxos.errors import NotLeader, ProposalRejected
from kvpaxos.paxos.learner import Learner
from kvpaxos.paxos.options import Options
from kvpaxos.paxos.messages import (
    Accept,
    Ballot,
    Catchup,
    CatchupRequest,
    Heartbeat,
    InstallSnapshot,
    Message,
    Nack,
    Prepare,
    PreVote,
    Snapshot,
    ZERO_BALLOT,
)
from kvpaxos.paxos.roles import Follower
from kvpaxos.paxos.state import Entry, HardState, ReadState, Ready


class Replica(Acceptor, Learner):
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
        self.role = None
        self.become(Follower(self))

    # --- the caller's interface ----------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica currently leads."""
        return self.role.leads

    @property
    def removed(self) -> frozenset[int]:
        """The nodes removed and not added again since (those of the member set in force)."""
        return self.config.removed

    def step(self, message: Message) -> None:
        """
        Take one message addressed to this replica.

        @raise ValueError: the message is addressed to another replica.
        """
        if message.dst != self.id:
            raise ValueError(f"message for {message.dst} stepped into {self.id}")
        src = message.src
        if src in self.config.removed and src != self.id:
            # A removed member that has not learned it (or a stale process)
            # must not disturb the members: no pre-vote, campaign or catch-up
            # of its counts.  Ignoring a message is always safe (it could
            # have been lost).
            return
        handler = self.role.handlers.get(type(message)) or self._handlers.get(
            type(message)
        )
        if handler is not None:
            handler(message)

    def tick(self) -> None:
        """
        Advance this replica's clock by one tick.  A timeout that runs out
        is stepped in as a message (see the module docstring).
        """
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

    def propose_config_change(self, change: ConfigChange, force: bool = False) -> None:
        """
        Propose one change of the member set.  It takes effect for the slots
        after its own, once it is chosen; until then no later slot is
        proposed, so no slot is decided under two member sets.  The leader's
        rules (L{kvpaxos.paxos.membership}): a PROMOTE only of a learner that
        is caught up (its last reported chosen index within
        C{Options.promote_lag_slots} of the leader's); a REMOVE only if the
        voters heard from within the last election timeout (see
        L{recently_heard}), less the node removed, are a quorum of the member
        set after the removal, and never of the leader itself.

        @param force: skip the REMOVE quorum rule only; never the leader's
            own removal nor L{Config.check}'s rules (the last voter).
        @raise NotLeader: this replica does not lead.
        @raise ProposalRejected: another change is still in flight, a leader
            transfer is in progress, the learner to promote is not caught
            up, the removal would leave no quorum heard from, or the leader
            is the node to remove; the message is one sentence saying why.
        @raise kvpaxos.paxos.config.ConfigError: the change does not apply.
        """
        self.role.propose_config_change(change, force)

    def recently_heard(self) -> frozenset:
        """
        Return the members a leader heard from (in its ballot) within the
        last election timeout, itself included: the current check-quorum
        window and the one before it, so between one and two election
        timeouts.  A query; empty on a replica that does not lead.
        """
        return self.role.recently_heard()

    def member_progress(self) -> dict[int, int]:
        """
        Return {node: the highest chosen index it reported to this leader in
        its ballot} for the members heard from, this leader included (its own
        chosen index), in ascending id order.  A query; empty on a replica
        that does not lead.
        """
        return self.role.member_progress()

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
        self.become(PreCandidate(self))

    def campaign(self, transfer: bool = False, asked_by: Ballot = ZERO_BALLOT) -> None:
        """
        Start phase 1 with a ballot above every ballot seen; C{transfer}: a
        campaign the leader of ballot C{asked_by} asked for.
        """
        self.max_round = max(self.max_round, self.promised.round) + 1
        ballot = Ballot(self.max_round, self.id)
        self.promised = ballot
        self.leader = None
        self.become(Candidate(self, ballot, transfer, asked_by))

    def has_ready(self) -> bool:
        """
        Whether L{ready} would return any work.  A query: it changes nothing
        (the role's queued requests are turned into messages by L{ready}).
        """
        if self._outstanding is not None:
            return False
        return bool(
            self.role.has_work()
            or self._entries
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
        self.leader = leader
        self.election_elapsed = 0
        self.become(Follower(self))

    def accept_own(self, ballot: Ballot, slot: int, value) -> None:
        """Write the leader's own proposal into its log, to be persisted."""
        entry = Entry(ballot, value)
        self.log[slot] = entry
        self._entries[slot] = entry

    def not_leader(self):
        """Return the error for a request only a leader serves."""
        return NotLeader(self.leader)


__all__ = ["Options", "Replica", "NotLeader", "ProposalRejected"]
