"""
Tests for the node side of membership (L{kvpaxos.node.membership}): real
L{ReplicaService}s over the fake peer wire of L{tests.test_service}, with
an injected clock and synchronous commits (no threads, no ports).  They
pin the node's own logic (carrying, answering once chosen, the links
following the member set, published addresses, a removed node's stop), not
the core's rules for a change.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.internet.error import ConnectionAborted
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.kv.commands import Op, Request
from kvpaxos.node.interfaces import (
    IMembership,
    IPeerHandler,
    MembershipRejected,
    NotLeaderError,
    Unavailable,
)
from kvpaxos.node.peer_commands import PeerUnreachable
from kvpaxos.paxos import Config
from kvpaxos.paxos.config import MemberAddress
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.node.service import ReplicaService
from kvpaxos.paxos import Options
from tests.test_service import SyncIO, TICK_S, FakePeers, FakeReactor, Wire, leader_of, run

CLUSTER_ID = 0x77


def peer_of(node_id):
    return f"10.0.0.{node_id}:2380"


def client_of(node_id):
    return f"10.0.0.{node_id}:2379"


class MemberPeers(FakePeers):
    """The fake wire's transport, with the membership calls and set_peers recorded."""

    def __init__(self, wire, node_id):
        super().__init__(wire, node_id)
        self.cluster_id = 0
        #: Every set_peers call's argument, in order.
        self.link_sets = []

    @property
    def links(self):
        return self.link_sets[-1] if self.link_sets else None

    def set_peers(self, peers):
        self.link_sets.append(dict(peers))

    def member_change(self, node_id, kind, node, peer, client, force, timeout_s):
        if not self.wire.reachable(self.node_id, node_id):
            return defer.fail(PeerUnreachable("link down"))
        self.wire.carried.append((self.node_id, node_id, kind, node))
        d = self.wire.later(
            self.wire.services[node_id].member_change_requested, kind, node, peer, client,
            force, timeout_s,
        )
        if getattr(self.wire, "lose_answers", False):
            # The link closes before the answer arrives (the change closed it).
            d.addCallback(lambda _: self.wire.later(lambda: defer.fail(ConnectionAborted())))
        return d


def seed_config(size, node_id=None):
    """
    A seed member set of C{size} voters with peer addresses, and only node
    C{node_id}'s own client address (as a seed member knows it).
    """
    config = Config(frozenset(range(1, size + 1)))
    addresses = {i: MemberAddress(peer_of(i), client_of(i) if i == node_id else "")
                 for i in range(1, size + 1)}
    return config.with_addresses(addresses).with_cluster_id(CLUSTER_ID)


def add_service(wire, node_id, config, own=None):
    """Start node C{node_id} over a new store seeded with C{config}, on the wire."""
    store = MemoryStore(config)
    service = ReplicaService(
        node_id, store, wire.clock, Options(election_ticks=10, heartbeat_ticks=2),
        tick_s=TICK_S, rng=random.Random(node_id),
        run_commit=lambda *args: defer.maybeDeferred(store.commit, *args),
        snapshot_io=SyncIO(),
        clock=wire.clock, addresses=own or (peer_of(node_id), client_of(node_id)),
    )
    service.peers = MemberPeers(wire, node_id)
    service.startService()
    wire.services[node_id] = service
    return service


def make_cluster(size, own=None):
    """Start C{size} members (addresses C{own(id)}, by default their own) and elect a leader."""
    reactor = FakeReactor()
    wire = Wire(reactor)
    wire.carried = []
    for node_id in range(1, size + 1):
        config = seed_config(size, None if own else node_id)
        add_service(wire, node_id, config, own(node_id) if own else None)
    for service in wire.services.values():
        for other in wire.services.values():
            if other is not service:
                service.peer_timing(other.node_id, other.timing)
    run(reactor, 1.5)
    return reactor, wire


def follower_of(wire):
    leader = leader_of(wire)
    return min(i for i in wire.services if i != leader and i not in wire.down)


def config_of(service):
    return service.replica.config


class CarryTests(SynchronousTestCase):
    """A change is made by the leader, whichever node it is sent to."""

    def test_provides_membership(self):
        """ReplicaService provides IMembership (and still IPeerHandler)."""
        reactor, wire = make_cluster(1)
        self.assertTrue(verifyObject(IMembership, wire.services[1]))
        self.assertTrue(verifyObject(IPeerHandler, wire.services[1]))

    def test_follower_carries_to_leader(self):
        """A member add sent to a follower is carried to the leader and answered with the view after it."""
        reactor, wire = make_cluster(3)
        leader, follower = leader_of(wire), follower_of(wire)
        d = wire.services[follower].member_add(4, peer_of(4), client_of(4), 5)
        run(reactor, 0.5)
        view = self.successResultOf(d)
        self.assertEqual(wire.carried, [(follower, leader, "add-learner", 4)])
        added = [m for m in view.members if m.id == 4]
        self.assertEqual(added[0].role, "learner")
        self.assertEqual((added[0].peer, added[0].client), (peer_of(4), client_of(4)))
        self.assertEqual(view.cluster_id, CLUSTER_ID)
        for service in wire.services.values():
            self.assertIn(4, config_of(service).learners)

    def test_answer_lost_but_applied(self):
        """A carried change whose answer is lost with its link is answered from the member set applied here."""
        reactor, wire = make_cluster(3)
        wire.lose_answers = True
        follower = wire.services[follower_of(wire)]
        d = follower.member_add(4, peer_of(4), client_of(4), 5)
        run(reactor, 0.5)
        self.assertIn(4, [m.id for m in self.successResultOf(d).members])
        victim = wire.services[leader_of(wire)]
        d = follower.member_remove(victim.node_id, False, 5)
        run(reactor, 1.5)
        self.assertNotIn(victim.node_id, [m.id for m in self.successResultOf(d).members])

    def test_answer_lost_unknown(self):
        """A carried change whose answer is lost and that is not applied here is Unavailable, not resent."""
        reactor, wire = make_cluster(3)
        follower = wire.services[follower_of(wire)]
        wire.lose_answers = True
        d = follower.member_add(4, peer_of(4), client_of(4), 5)
        wire.down = {follower.node_id}  # the carried call is on its way; nothing else arrives
        run(reactor, 2.0)
        self.assertIn("may still be chosen", str(self.failureResultOf(d, Unavailable).value))
        self.assertEqual(len(wire.carried), 1)

    def test_answer_lost_then_seen_chosen(self):
        """
        A carried change whose answer is lost, and that this node learns is
        chosen a moment later, is answered as done (as when a removed leader
        stops before relaying the answer to its own removal); not resent.
        """
        reactor, wire = make_cluster(3)
        follower = wire.services[follower_of(wire)]
        wire.lose_answers = True
        d = follower.member_add(4, peer_of(4), client_of(4), 5)
        wire.down = {follower.node_id}
        run(reactor, 0.3)
        self.assertNoResult(d)
        wire.down = set()  # it hears the leader again and applies the change
        run(reactor, 1.0)
        self.successResultOf(d)
        self.assertIn(4, follower.replica.config.learners)
        self.assertEqual(len(wire.carried), 1)

    def test_answered_only_once_chosen(self):
        """A change is answered once chosen: not while no quorum takes it, Unavailable at the deadline."""
        reactor, wire = make_cluster(3)
        leader = wire.services[leader_of(wire)]
        wire.down = {i for i in wire.services if i != leader.node_id}
        d = leader.member_add(4, peer_of(4), client_of(4), 1.0)
        run(reactor, 0.5)
        self.assertNoResult(d)
        run(reactor, 0.6)
        self.failureResultOf(d, Unavailable)

    def test_no_leader_unavailable(self):
        """A follower that reaches no leader answers Unavailable by the deadline."""
        reactor, wire = make_cluster(3)
        follower = wire.services[follower_of(wire)]
        wire.down = {i for i in wire.services if i != follower.node_id}
        d = follower.member_promote(3, 0.3)
        run(reactor, 0.4)
        self.failureResultOf(d, Unavailable)

    def test_carried_to_non_leader_refused(self):
        """A change carried to a node that does not lead is refused NOT_LEADER (never carried on)."""
        reactor, wire = make_cluster(3)
        follower = wire.services[follower_of(wire)]
        d = follower.member_change_requested("promote", 3, "", "", False, 1.0)
        failure = self.failureResultOf(d, NotLeaderError)
        self.assertEqual(failure.value.leader, leader_of(wire))


class BadRequestTests(SynchronousTestCase):
    """Bad requests get MembershipRejected and change nothing, on the leader and on a follower."""

    def rejected(self, call, *args):
        reactor, wire = make_cluster(3)
        before = {i: config_of(s) for i, s in wire.services.items()}
        for node in (leader_of(wire), follower_of(wire)):
            d = getattr(wire.services[node], call)(*args)
            run(reactor, 0.3)
            failure = self.failureResultOf(d, MembershipRejected)
            self.assertTrue(str(failure.value))
        run(reactor, 0.3)
        self.assertEqual({i: config_of(s) for i, s in wire.services.items()}, before)
        return failure

    def test_unknown_id(self):
        """Promoting or removing an id that is no member is refused."""
        self.rejected("member_promote", 9, 1.0)
        self.rejected("member_remove", 9, False, 1.0)

    def test_duplicate_id(self):
        """Adding an id that is already a member is refused."""
        self.assertIn("already a member", str(self.rejected("member_add", 2, peer_of(9), client_of(9), 1.0).value))

    def test_duplicate_address(self):
        """Adding a member at another member's peer address is refused."""
        self.assertIn("node 2", str(self.rejected("member_add", 9, peer_of(2), client_of(9), 1.0).value))

    def test_malformed_address(self):
        """A malformed or unreachable address is refused before anything is proposed."""
        for peer, client in (("nohost", client_of(9)), (peer_of(9), "h:99999"),
                             ("0.0.0.0:2380", client_of(9)), ("[::1", client_of(9))):
            self.rejected("member_add", 9, peer, client, 1.0)

    def test_bad_id(self):
        """An id that is not a positive 32-bit number is refused."""
        self.rejected("member_add", 0, peer_of(9), client_of(9), 1.0)
        self.rejected("member_remove", 2**32, False, 1.0)

    def test_promote_voter(self):
        """Promoting a voter is refused."""
        self.assertIn("not a learner", str(self.rejected("member_promote", 2, 1.0).value))

    def test_remove_last_voter(self):
        """Removing the last voter is refused."""
        reactor, wire = make_cluster(1)
        d = wire.services[1].member_remove(1, False, 1.0)
        run(reactor, 0.3)
        self.assertIn("last voter", str(self.failureResultOf(d, MembershipRejected).value))
        self.assertEqual(config_of(wire.services[1]).voters, {1})

    def test_second_change_in_flight(self):
        """A change asked for while another is in flight is refused; the first one is made."""
        reactor, wire = make_cluster(3)
        leader = wire.services[leader_of(wire)]
        first = leader.member_add(4, peer_of(4), client_of(4), 2.0)
        second = leader.member_add(5, peer_of(5), client_of(5), 2.0)
        self.assertIn("in progress", str(self.failureResultOf(second, MembershipRejected).value))
        run(reactor, 0.5)
        self.successResultOf(first)
        self.assertEqual(config_of(leader).learners, {4})


class LeaderTests(SynchronousTestCase):
    """Leader transfer and removing the leader."""

    def test_transfer(self):
        """A transfer asked of a follower makes the target lead, answered once it does."""
        reactor, wire = make_cluster(3)
        leader, follower = leader_of(wire), follower_of(wire)
        target = ({1, 2, 3} - {leader, follower}).pop()
        d = wire.services[follower].leader_transfer(target, 5)
        run(reactor, 1.0)
        self.assertEqual(self.successResultOf(d).leader, target)
        self.assertEqual(leader_of(wire), target)

    def test_transfer_to_non_voter_rejected(self):
        """A transfer to a node that is no voter is refused."""
        reactor, wire = make_cluster(3)
        d = wire.services[follower_of(wire)].leader_transfer(9, 1.0)
        run(reactor, 0.3)
        self.failureResultOf(d, MembershipRejected)

    def test_remove_leader_transfers_first(self):
        """Removing the leader hands leadership to another voter first, and the new leader removes it."""
        reactor, wire = make_cluster(3)
        old = leader_of(wire)
        d = wire.services[old].member_remove(old, False, 5)
        run(reactor, 1.5)
        view = self.successResultOf(d)
        self.assertNotIn(old, [m.id for m in view.members])
        new = leader_of(wire)
        self.assertNotIn(new, (None, old))
        self.assertEqual(wire.carried, [(old, new, "remove", old)])
        self.assertTrue(wire.services[old].membership.removed)  # told by the new leader
        self.assertTrue(reactor.stopped)
        for node, service in wire.services.items():
            if node != old:
                self.assertEqual(config_of(service).voters, {1, 2, 3} - {old})


class LinkTests(SynchronousTestCase):
    """The links follow the replicated member set."""

    def test_links_at_start(self):
        """At start each node links to the other members at their peer addresses, with the stored cluster id."""
        reactor, wire = make_cluster(3)
        for node, service in wire.services.items():
            others = {i: ("10.0.0.%d" % i, 2380) for i in (1, 2, 3) if i != node}
            self.assertEqual(service.peers.link_sets[0], others)
            self.assertEqual(service.peers.cluster_id, CLUSTER_ID)

    def test_add_and_remove_follow(self):
        """A new member's link is opened on every member, a removed member's closed."""
        reactor, wire = make_cluster(3)
        leader = wire.services[leader_of(wire)]
        self.successResultOf(self.run_change(reactor, leader.member_add(4, peer_of(4), client_of(4), 5)))
        for service in wire.services.values():
            self.assertEqual(service.peers.links[4], ("10.0.0.4", 2380))
        victim = follower_of(wire)
        self.successResultOf(self.run_change(reactor, leader.member_remove(victim, False, 5)))
        for node, service in wire.services.items():
            if node != victim:
                self.assertNotIn(victim, service.peers.links)
                self.assertIn(4, service.peers.links)

    def run_change(self, reactor, d):
        run(reactor, 0.5)
        return d

    def test_removed_node_stops(self):
        """A member that learns it was removed logs it once and stops the reactor (a clean stop)."""
        reactor, wire = make_cluster(3)
        leader = wire.services[leader_of(wire)]
        victim = wire.services[follower_of(wire)]
        d = leader.member_remove(victim.node_id, False, 5)
        run(reactor, 0.5)
        self.successResultOf(d)
        # The leader's last heartbeat to it says its removal is chosen.
        run(reactor, 0.2)
        self.assertTrue(victim.membership.removed)
        self.assertTrue(reactor.stopped)
        self.assertIsNone(victim.fatal_error)
        self.assertFalse(leader.membership.removed)


class AddressTests(SynchronousTestCase):
    """Client addresses reach the replicated member set without operator action."""

    def test_client_addresses_published(self):
        """Each member's reported client address (the leader's own too) is proposed by the leader, one at a time."""
        reactor, wire = make_cluster(3)
        for service in wire.services.values():
            for other in wire.services.values():
                if other is not service:
                    service.peer_addresses_reported(other.node_id, peer_of(other.node_id),
                                                    client_of(other.node_id))
        run(reactor, 2.0)
        for service in wire.services.values():
            view = service.members()
            self.assertEqual([(m.peer, m.client) for m in view.members],
                             [(peer_of(i), client_of(i)) for i in (1, 2, 3)])

    def test_bind_address_not_published(self):
        """A reported wildcard address is never proposed, nor a peer address that would replace a known one."""
        reactor, wire = make_cluster(3, own=lambda i: ("0.0.0.0:2380", "0.0.0.0:2379"))
        leader = wire.services[leader_of(wire)]
        other = follower_of(wire)
        leader.peer_addresses_reported(other, "10.9.9.9:2380", ":2379")
        run(reactor, 1.0)
        view = leader.members()
        self.assertEqual([(m.peer, m.client) for m in view.members],
                         [(peer_of(i), "") for i in (1, 2, 3)])


class JoiningNodeTests(SynchronousTestCase):
    """A node with no member set yet serves no client."""

    def test_refuses_clients(self):
        """Writes and reads (serializable ones too) fail Unavailable until the node has a member set."""
        reactor = FakeReactor()
        wire = Wire(reactor)
        service = add_service(wire, 4, Config(frozenset()))
        self.failureResultOf(service.submit(Request(Op.PUT, b"k", b"v"), 1), Unavailable)
        self.failureResultOf(service.get(b"k", 1, "serializable"), Unavailable)
        self.assertEqual(service.members().members, ())


class JoinTests(SynchronousTestCase):
    """A node with an empty store joins through the Joiner and serves once it has the state."""

    def joiner(self, wire, reactor, service, fetch=None):
        from kvpaxos.node.joining import Joiner

        def members(addresses):
            leader = leader_of(wire)
            config = config_of(wire.services[leader])
            return defer.succeed((config.cluster_id, {
                m.id: (m.peer, m.client) for m in wire.services[leader].members().members
            }, leader))

        def join_call(target, cluster_id, member, peer, client, timeout_s):
            self.joins.append((target, cluster_id, member))
            node = int(target.split(".")[3].split(":")[0])
            return wire.services[node].join_requested(member, peer, client, timeout_s)

        self.joins = []
        joiner = Joiner(
            service.node_id, (peer_of(service.node_id), client_of(service.node_id)),
            ["10.0.0.1:2379"], lambda: bool(config_of(service).voters), service.peers, reactor,
            fetch=fetch or members, join_call=join_call,
        )
        joiner.startService()
        self.addCleanup(joiner.stopService)
        return joiner

    def test_join_then_serve(self):
        """The joiner asks the leader once, is added as a learner, receives the state and serves."""
        reactor, wire = make_cluster(3)
        self.successResultOf(self.put(reactor, wire.services[leader_of(wire)], b"k", b"v"))
        service = add_service(wire, 4, Config(frozenset()))
        joiner = self.joiner(wire, reactor, service)
        run(reactor, 3.0)
        self.assertEqual(self.joins, [(peer_of(leader_of(wire)), CLUSTER_ID, 4)])
        self.assertEqual(service.peers.cluster_id, CLUSTER_ID)
        self.assertEqual(config_of(service).learners, {4})
        self.assertEqual(config_of(service).voters, {1, 2, 3})
        d = service.get(b"k", 2, "serializable")
        run(reactor, 0.5)
        self.assertEqual(self.successResultOf(d), b"v")
        attempts = joiner.attempts
        run(reactor, 30)
        self.assertEqual(joiner.attempts, attempts)  # done: it asks no more

    def put(self, reactor, service, key, value):
        d = service.submit(Request(Op.PUT, key, value), 2)
        run(reactor, 0.3)
        return d

    def test_already_added(self):
        """A node added by member add with the same peer address sends no Join."""
        reactor, wire = make_cluster(3)
        leader = wire.services[leader_of(wire)]
        d = leader.member_add(4, peer_of(4), client_of(4), 5)
        run(reactor, 0.5)
        self.successResultOf(d)
        service = add_service(wire, 4, Config(frozenset()))
        self.joiner(wire, reactor, service)
        run(reactor, 3.0)
        self.assertEqual(self.joins, [])
        self.assertEqual(config_of(service).learners, {4})

    def test_keeps_asking_with_backoff(self):
        """While no member answers, the joiner asks again with a bounded backoff."""
        reactor = FakeReactor()
        wire = Wire(reactor)
        service = add_service(wire, 4, Config(frozenset()))
        joiner = self.joiner(wire, reactor, service,
                             fetch=lambda addresses: defer.fail(Unavailable("nobody answered")))
        run(reactor, 60)
        # 0.5, 1, 2, 4, 8, then every 10 s: 0 + 0.5 + 1 + 2 + 4 + 8 = 15.5, 25.5, ... 55.5
        self.assertEqual(joiner.attempts, 10)
        self.assertFalse(config_of(service).voters)

    def test_joined_node_ignores_join(self):
        """A node whose store has a member set never joins."""
        reactor, wire = make_cluster(1)
        joiner = self.joiner(wire, reactor, wire.services[1])
        run(reactor, 5)
        self.assertEqual(joiner.attempts, 0)

    def test_join_requested_twice(self):
        """A Join from a member already at that peer address is answered at once; at another address refused."""
        reactor, wire = make_cluster(3)
        follower = wire.services[follower_of(wire)]
        self.successResultOf(follower.join_requested(2, peer_of(2), client_of(2), 1))
        self.failureResultOf(follower.join_requested(2, peer_of(9), client_of(9), 1), MembershipRejected)
