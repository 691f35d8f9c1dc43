"""
L{Membership}: the node side of the replicated member set (issue 11),
handed only what it uses by L{kvpaxos.node.service.ReplicaService}:

  - L{kvpaxos.node.interfaces.IMembership}: the member list; add, promote,
    remove and leader transfer, each answered once chosen (and applied
    here), carried to the leader by a follower (C{MemberChange}); removing
    the leader hands leadership to the most caught-up other voter first;
  - the links follow the member set: after every Ready that changed it
    (and at start) the transport is told the members' peer addresses
    (C{set_peers}) and the cluster id;
  - client addresses: members report theirs in the handshake; the leader
    proposes an UPDATE, one at a time, for a member the set lacks it of;
  - a node that learns it was removed logs it once and stops serving.

Not here: Paxos rules (the core checks every change) and wire formats
(L{kvpaxos.node.peer_members}).  Deadlines are on the injected reactor.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.node.interfaces import (
    MemberInfo,
    MembershipRejected,
    MemberView,
    NotLeaderError,
    Unavailable,
)
from kvpaxos.node.peer_commands import NotIdentified, PeerUnreachable
from kvpaxos.api.endpoints import BadEndpoint, split_host_port
from kvpaxos.node.member_addresses import AddressPublishing
from kvpaxos.node.member_checks import _check_node_id, check_address
from kvpaxos.paxos import (
    ChangeKind, ConfigChange, ConfigError, NotLeader, ProposalRejected, QuorumNotHeard,
)


class Membership(AddressPublishing):
    """
    The membership of one node.

    @param node_id: this node's id.
    @param replica: the core's L{kvpaxos.paxos.Replica}.
    @param peers: returns the node's L{IPeerTransport} (set after start).
    @param reactor: timeouts, and C{stop} when this node was removed.
    @param guard: runs a core call (an invariant it breaks stops the node).
    @param schedule: asks the service for a Ready.
    @param stopping: whether the node is shutting down.
    @param addresses: (peer, client) addresses of this node, as configured.
    @param tick_s: seconds per tick (a refused attempt's retry).
    """

    log = Logger()

    def __init__(self, node_id: int, replica, peers: Callable, reactor, guard: Callable,
                 schedule: Callable, stopping: Callable, addresses: tuple[str, str] = ("", ""),
                 tick_s: float = 0.05) -> None:
        self.node_id = node_id
        self._replica = replica
        self._peers = peers
        self._reactor = reactor
        self._guard = guard
        self._schedule = schedule
        self._stopping = stopping
        self._own = addresses
        self._retry_s = tick_s * 2
        #: Whether this node learned that it was removed (it stops serving).
        self.removed = False
        self._was_member = False
        self._config = None  # the member set the links last followed
        # Changes this leader proposed: change -> Deferreds firing with its slot.
        self._proposed: dict[ConfigChange, list[defer.Deferred]] = {}
        # (predicate, Deferred) pairs, fired once the predicate holds.
        self._waits: list[tuple[Callable[[], bool], defer.Deferred]] = []
        # What each member reported in its handshake: id -> (peer, client).
        self._reported: dict[int, tuple[str, str]] = {}
        # This leader's UPDATE in flight and the tick it was proposed at.
        self._updating: Optional[tuple[ConfigChange, int]] = None
        self._refused_updates: set[ConfigChange] = set()
        # Whether this node's own addresses went through the log while it
        # leads: its own member set may have them from its seed while the
        # others' do not (each seed knows only its own client address).
        self._own_published = False
        self._takes_force = "force" in inspect.signature(replica.propose_config_change).parameters

    # --- the Ready loop's hooks ------------------------------------------------

    def started(self) -> None:
        """The replica exists: the links follow its member set."""
        self._follow_config()

    def applied(self, rd) -> None:
        """C{rd} was performed: the changes it applied are answered."""
        for slot, value in rd.committed:
            if type(value) is ConfigChange:
                for d in self._proposed.pop(value, []):
                    if not d.called:
                        d.callback(slot)
                if self._updating is not None and self._updating[0] == value:
                    self._updating = None
                if value.node == self.node_id and value.client == self._own[1]:
                    self._own_published = True
        self._follow_config()
        self._poll()

    def tick(self) -> None:
        """A tick: publish a member's reported address; check the waits."""
        self._publish_addresses()
        self._poll()

    def stop(self, error: Exception) -> None:
        """Fail everything still waiting with C{error}."""
        waiting = [d for ds in self._proposed.values() for d in ds] + [d for _, d in self._waits]
        self._proposed.clear()
        self._waits.clear()
        for d in waiting:
            if not d.called:
                d.errback(Failure(error))

    # --- the member set ------------------------------------------------------------

    def members(self, config=None) -> MemberView:
        """L{kvpaxos.node.interfaces.IMembership.members} (of C{config}, by default the one in force)."""
        config = config or self._replica.config
        infos = tuple(
            MemberInfo(
                node, "voter" if node in config.voters else "learner",
                config.address(node).peer, config.address(node).client,
            )
            for node in sorted(config.members)
        )
        return MemberView(config.cluster_id, self._replica.leader, infos)

    def _follow_config(self) -> None:
        """
        Point the links at the members in force (once per change) and stop
        if this node was removed.  A member set without addresses (the
        simulator's) leaves the links as the wiring made them.
        """
        config = self._replica.config
        if config == self._config:
            return
        before, self._config = self._config, config
        if before is not None and (before.voters, before.learners) != (config.voters, config.learners):
            self.log.info(
                "member set changed: voters {voters}, learners {learners} (was voters {was_voters}, learners"
                " {was_learners})", voters=sorted(config.voters), learners=sorted(config.learners),
                was_voters=sorted(before.voters), was_learners=sorted(before.learners))
        transport = self._peers()
        if transport is not None and config.cluster_id and hasattr(transport, "cluster_id"):
            transport.cluster_id = config.cluster_id
        if transport is not None and config.addresses:
            links = {}
            for node, address in sorted(config.peer_addresses().items()):
                if node == self.node_id or node not in config.members:
                    continue
                try:
                    links[node] = split_host_port(address)
                except BadEndpoint:
                    self.log.warn("node {node}'s peer address {a!r} is malformed", node=node, a=address)
            transport.set_peers(links)
        if self.node_id in config.members:
            self._was_member = True
        elif self._was_member and config.voters:
            self._removed(f"its member set has voters {sorted(config.voters)} only")

    def _removed(self, why: str) -> None:
        """
        This node was removed: log it once and stop serving.  A member that
        learns it was removed takes no part any more; its peers refuse it
        already (they follow the same member set).  It stops cleanly, with
        no fatal error: see docs/design.md on exit status 0.
        """
        if self.removed:
            return
        self.removed = True
        self.log.warn("node {node} was removed from the cluster ({why}): it stops serving",
                      node=self.node_id, why=why)
        # A moment later: the answers this turn wrote (the operator's) go out.
        self._reactor.callLater(self._retry_s, lambda: self._reactor.running and self._reactor.stop())

    def removed_by_peer(self, peer: int, why: str) -> None:
        """
        Peer C{peer} refused this node's link because its log has this
        node's removal chosen (the last heartbeat of the leader that removed
        it never arrived): it was removed.  A node with no member set yet (a
        joiner re-added under its old id, which a lagging member has not
        seen added again) takes no notice.
        """
        config = self._replica.config
        if config.voters and self.node_id in config.members:
            self._removed(f"node {peer} refused its link: {why}")

    # --- the API -------------------------------------------------------------------

    def member_add(self, node_id: int, peer: str, client: str, timeout_s: float):
        """L{kvpaxos.node.interfaces.IMembership.member_add}."""
        try:
            _check_node_id(node_id)
            peer = check_address(peer, "peer")
            # No client address yet: the member reports its own when it joins.
            client = check_address(client, "client") if client else ""
        except MembershipRejected:
            return defer.fail()
        return self._view(self.change("add-learner", node_id, peer, client, False, timeout_s))

    def member_promote(self, node_id: int, timeout_s: float):
        """L{kvpaxos.node.interfaces.IMembership.member_promote}."""
        return self._view(self.change("promote", node_id, "", "", False, timeout_s))

    def member_remove(self, node_id: int, force: bool, timeout_s: float):
        """L{kvpaxos.node.interfaces.IMembership.member_remove}."""
        d = self.change("remove", node_id, "", "", bool(force), timeout_s)
        if node_id != self.node_id:
            return self._view(d)
        # This node will not apply its own removal: the view after it.
        removal = ConfigChange(ChangeKind.REMOVE, node_id)
        return d.addCallback(lambda _: self.members(self._replica.config.apply(removal)))

    def leader_transfer(self, target: int, timeout_s: float):
        """L{kvpaxos.node.interfaces.IMembership.leader_transfer}."""
        return self._view(self.change("transfer", target, "", "", False, timeout_s))

    def transfer_leadership(self, target: int) -> None:
        """
        Hand leadership to voter C{target} now, as the core does (the
        simulator's operator): not waiting, not carried to the leader.

        @raise kvpaxos.paxos.NotLeader: this node does not lead.
        @raise kvpaxos.paxos.ProposalRejected: C{target} cannot take it.
        """
        self._guard(self._replica.transfer_leadership, target)
        self._schedule()

    def _view(self, d: defer.Deferred) -> defer.Deferred:
        return d.addCallback(lambda _: self.members())

    def member_change_requested(self, kind, node, peer, client, force, timeout_s):
        """A follower carried a change here (L{kvpaxos.node.peer_commands.MemberChange})."""
        if kind == "add-learner":
            try:
                peer = check_address(peer, "peer")
                client = check_address(client, "client") if client else ""
            except MembershipRejected:
                return defer.fail()
        return self.change(kind, node, peer, client, force, timeout_s, carried=True)

    def join_requested(self, member: int, peer: str, client: str, timeout_s: float):
        """
        Node C{member}, not yet a member, asks to be added
        (L{kvpaxos.node.peer_commands.Join}): done at once if it already is
        one at C{peer} (added by C{member add}); refused if it is one at
        another peer address.
        """
        try:
            peer = check_address(peer, "peer")
            # No client address yet: the member reports its own when it joins.
            client = check_address(client, "client") if client else ""
        except MembershipRejected:
            return defer.fail()
        config = self._replica.config
        if member in config.members:
            if config.address(member).peer == peer:
                return defer.succeed(None)
            return defer.fail(MembershipRejected(
                f"node {member} is already a member, at peer address"
                f" {config.address(member).peer!r}, not {peer!r}"
            ))
        return self.change("add-learner", member, peer, client, False, timeout_s)

    @defer.inlineCallbacks
    def change(self, kind: str, node: int, peer: str, client: str, force: bool,
               timeout_s: float, carried: bool = False):
        """
        Make one change (C{kind}: C{"add-learner"}, C{"promote"},
        C{"remove"} or C{"transfer"}) here if this node leads, else carry it
        to the leader.  Fires with the slot the change was chosen in (0 for
        a transfer), once it is applied on this node.

        @param carried: the change was carried here by a follower: if this
            node does not lead it is refused with L{NotLeaderError} (not
            proposed: the follower may try the leader it knows).
        @raise MembershipRejected: the change is wrong; nothing changed.
        @raise Unavailable: no leader, or not chosen within C{timeout_s}.
        """
        _check_node_id(node)
        deadline = self._reactor.seconds() + timeout_s
        replica = self._replica
        while True:
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0 or self._stopping():
                raise Unavailable(f"the {kind} of node {node} was not done within {timeout_s} s",
                                  replica.leader)
            if replica.is_leader:
                if kind == "transfer":
                    yield self._transfer(node, remaining, lambda: replica.leader == node)
                    return 0
                if kind == "remove" and node == self.node_id:
                    # The leader hands over first; the remove is then carried
                    # to the new leader (which this node originates).
                    yield self._transfer(self._successor(), remaining,
                                         lambda: not replica.is_leader and replica.leader is not None)
                    carried = False
                    continue
                slot = yield self._propose_here(kind, node, peer, client, force, remaining)
                return slot
            if kind == "transfer" and replica.leader == node:
                return 0
            if carried:
                raise NotLeaderError(replica.leader)
            leader = replica.leader
            if leader is None:
                yield self._wait(lambda: replica.leader is not None or replica.is_leader,
                                 remaining, "a leader to be known")
                continue
            try:
                slot = yield self._peers().member_change(leader, kind, node, peer, client,
                                                         force, remaining)
            except (NotLeaderError, PeerUnreachable, NotIdentified):
                # Certainly not proposed: try again once a tick has passed.
                yield task.deferLater(self._reactor, min(self._retry_s, remaining), lambda: None)
                continue
            except MembershipRejected:
                raise
            except Exception as error:
                # The outcome is unknown (never resent: it may be chosen).
                # The link may have been closed by the change itself (a
                # removed member's links are, and a removed leader that
                # carried its own removal may stop before it relays the
                # answer): done once it is chosen here.  This node may learn
                # it a moment after the failure, so it waits a little.
                settle_s = min(deadline - self._reactor.seconds(),
                               replica.options.election_ticks * self._retry_s)
                try:
                    yield self._wait(lambda: self._done_here(kind, node, peer), settle_s,
                                     f"the {kind} of node {node} to be chosen here")
                    return 0
                except Unavailable:
                    pass
                if isinstance(error, Unavailable):
                    raise
                raise Unavailable(
                    f"node {leader} did not answer the {kind} of node {node}"
                    f" ({error.__class__.__name__}); it may still be chosen", leader,
                ) from None
            if kind == "remove" and node == self.node_id:
                # The leader says this node's removal is chosen; it will not
                # hear of it otherwise (nobody sends to it any more).
                self._removed(f"node {leader} chose its removal in slot {slot}")
                return slot
            if slot:
                yield self._wait(lambda: replica.applied >= slot, deadline - self._reactor.seconds(),
                                 f"slot {slot} to be applied here")
            return slot

    def _done_here(self, kind: str, node: int, peer: str) -> bool:
        """Whether the change is in the member set this node applied."""
        config = self._replica.config
        if kind == "add-learner":
            return node in config.members and config.address(node).peer == peer
        if kind == "promote":
            return node in config.voters
        if kind == "remove":
            return bool(config.voters) and node not in config.members
        return self._replica.leader == node

    def _successor(self) -> int:
        """The other voter this leader has seen furthest along (lowest id on a tie)."""
        others = sorted(self._replica.config.voters - {self.node_id})
        if not others:
            raise MembershipRejected(f"node {self.node_id} is the last voter")
        # What the leader knows each peer has accepted through (the leader
        # role's match index); a voter it has not heard from counts 0.
        match = getattr(self._replica.role, "match", {})
        return max(others, key=lambda voter: match.get(voter, 0))

    def _transfer(self, target: int, timeout_s: float, done: Callable[[], bool]):
        """Ask the core to hand leadership to C{target}; fire once C{done()}."""
        if target == self.node_id:
            return defer.succeed(None)
        try:
            self._guard(self._replica.transfer_leadership, target)
        except ProposalRejected as error:
            return defer.fail(MembershipRejected(str(error)))
        except NotLeader as error:
            return defer.fail(NotLeaderError(error.leader))
        self._schedule()
        return self._wait(done, timeout_s, f"node {target} to take leadership")

    def _propose(self, change: ConfigChange, force: bool) -> None:
        if self._takes_force:
            self._replica.propose_config_change(change, force=force)
        else:
            self._replica.propose_config_change(change)

    @defer.inlineCallbacks
    def _propose_here(self, kind, node, peer, client, force, timeout_s):
        """Propose the change as leader; fire with its slot once chosen and applied here."""
        if self._updating is not None:
            # This leader's own UPDATE goes first (one change at a time).
            yield self._wait(lambda: self._updating is None, timeout_s, "an address update")
        change = ConfigChange(ChangeKind(kind), node, peer, client)
        # A leader just elected (one a removed leader handed over to) has
        # heard from no follower in its ballot yet: a removal it cannot
        # prove safe is retried for up to two election timeouts.
        settle_until = self._reactor.seconds() + min(
            timeout_s, self._replica.options.election_ticks * self._retry_s
        )
        while True:
            try:
                self._guard(self._propose, change, force)
                break
            except QuorumNotHeard as error:
                if self._reactor.seconds() >= settle_until:
                    raise MembershipRejected(str(error)) from None
            except (ConfigError, ProposalRejected) as error:
                raise MembershipRejected(str(error)) from None
            except NotLeader as error:
                raise NotLeaderError(error.leader) from None
            yield task.deferLater(self._reactor, self._retry_s, lambda: None)
        d = defer.Deferred()
        self._proposed.setdefault(change, []).append(d)
        self._schedule()
        self._timeout(d, timeout_s, f"the {kind} of node {node} to be chosen")
        slot = yield d
        return slot

    # --- waiting -------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> defer.Deferred:
        """A Deferred firing once C{predicate()} holds (checked after each Ready and tick)."""
        if predicate():
            return defer.succeed(None)
        d = defer.Deferred()
        self._waits.append((predicate, d))
        return self._timeout(d, timeout_s, what)

    def _timeout(self, d: defer.Deferred, timeout_s: float, what: str) -> defer.Deferred:
        leader = self._replica.leader

        def unavailable(result, timeout):
            return Failure(Unavailable(f"timed out after {timeout:g} s waiting for {what}", leader))

        return d.addTimeout(max(timeout_s, 0.0), self._reactor, onTimeoutCancel=unavailable)

    def _poll(self) -> None:
        waits, self._waits = self._waits, []
        for predicate, d in waits:
            if d.called:
                continue
            if predicate():
                d.callback(None)
            else:
                self._waits.append((predicate, d))
        for change in [c for c, ds in self._proposed.items() if all(d.called for d in ds)]:
            del self._proposed[change]
