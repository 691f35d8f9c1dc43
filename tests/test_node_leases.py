"""
Tests for the node's side of leases (issue 14): the leader's L{Lessor}
(L{kvpaxos.node.leases}), the node's lease calls and expiry
(L{kvpaxos.node.lease_calls}, on a fake node and in a cluster of real
services over the fake wire of L{tests.test_service}), and the AMP
commands that carry keep-alives to the leader.  Injected clocks, no
threads, no ports.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.defer import fail, succeed
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.errors import PermissionDenied
from kvpaxos.kv.commands import MAX_LEASE_ID, InvalidArgument, Op, Request
from kvpaxos.kv.leases import LeaseError, LeaseGranted, LeaseRefused, LeaseRevoked
from kvpaxos.node.interfaces import NotLeaderError, Unavailable
from kvpaxos.node.lease_calls import LeaseCalls
from kvpaxos.node.leases import LeaseTime, Lessor
from kvpaxos.node.peer_commands import PeerRequestError, PeerUnreachable
from kvpaxos.node.peers import PeerNetwork
from kvpaxos.paxos import Config
from kvpaxos.paxos.messages import Ballot
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.testing.simnet import Network, SimTransport
from kvpaxos.testing.simworld import MachineClock, Process, VirtualTime
from tests.test_peers import RecordingNode, listener, opener
from tests.test_service import FakePeers, FakeReactor, Wire, exchange_timing, leader_of, run, start_service

#: The election timeout of the fakes: 10 ticks of 50 ms.
EXTEND_S = 0.5


class LessorTests(SynchronousTestCase):
    """L{Lessor}: deadlines on the leader's clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.lessor = Lessor(self.clock, EXTEND_S)

    def test_promotion_extends_by_the_election_timeout(self):
        """A new leader runs every lease out at now + its TTL + the election timeout (no mass expiry)."""
        self.clock.advance(100)
        self.lessor.promote([(7, 10), (8, 3)])
        self.assertEqual((self.lessor.deadline(7), self.lessor.deadline(8)), (110.5, 103.5))

    def test_due_strictly_after_the_deadline(self):
        """A lease is due only once its deadline has passed, then once until its expiry ends."""
        self.lessor.promote([(7, 10)])
        self.clock.advance(10.5)
        self.assertEqual(self.lessor.due(), [])
        self.clock.advance(0.001)
        self.assertEqual(self.lessor.due(), [7])
        self.assertEqual(self.lessor.due(), [])
        self.lessor.expire_ended(7, self.lessor.term)
        self.assertEqual(self.lessor.due(), [7])

    def test_due_bounded_and_earliest_first(self):
        """At most in_flight_max leases are being expired at once, the earliest deadlines first."""
        lessor = Lessor(self.clock, 0.0, in_flight_max=2)
        lessor.promote([(1, 5), (2, 3), (3, 4)])
        self.clock.advance(6)
        self.assertEqual(lessor.due(), [2, 3])
        self.assertEqual(lessor.due(), [])
        lessor.revoked(2)
        self.assertEqual(lessor.due(), [1])

    def test_refresh(self):
        """A keep-alive runs the lease out at now + TTL; one past its deadline or being expired is refused."""
        self.lessor.promote([(7, 10), (8, 10)])
        self.clock.advance(4)
        self.assertTrue(self.lessor.refresh(7, 10))
        self.assertEqual(self.lessor.deadline(7), 14)
        self.clock.advance(6.6)
        self.assertEqual(self.lessor.due(), [8])
        self.assertFalse(self.lessor.refresh(8, 10))
        self.clock.advance(3.5)
        self.assertFalse(self.lessor.refresh(7, 10))  # ran out, not yet proposed: not brought back

    def test_granted_only_while_leading(self):
        """A grant applied while leading runs out at now + TTL; a follower keeps no deadline."""
        self.lessor.granted(5, 10)
        self.assertIsNone(self.lessor.deadline(5))
        self.lessor.promote([])
        self.clock.advance(2)
        self.lessor.granted(5, 10)
        self.assertEqual(self.lessor.deadline(5), 12)
        self.lessor.promote([(6, 10)])  # read the store after the grant applied: the later deadline stays
        self.lessor.granted(6, 10)
        self.assertEqual(self.lessor.deadline(6), 12.5)

    def test_demotion_forgets_and_old_expiries_end_nothing(self):
        """Losing leadership forgets every deadline; an expiry ended from an earlier leadership changes nothing."""
        self.lessor.promote([(7, 1)])
        self.clock.advance(2)
        self.assertEqual(self.lessor.due(), [7])
        old = self.lessor.term
        self.lessor.demote()
        self.assertEqual((len(self.lessor), self.lessor.due(), self.lessor.refresh(7, 1)), (0, [], False))
        self.lessor.promote([(7, 1)])
        self.clock.advance(2)
        self.assertEqual(self.lessor.due(), [7])
        self.lessor.expire_ended(7, old)
        self.assertTrue(self.lessor.expiring(7))

    def test_remaining(self):
        """Time left is whole seconds rounded up, 0 once past, None at a follower."""
        self.assertIsNone(self.lessor.remaining(7, 10))
        self.lessor.promote([(7, 10)])
        self.clock.advance(3)
        self.assertEqual(self.lessor.remaining(7, 10), 8)
        self.assertEqual(self.lessor.remaining(9, 4), 4)  # no deadline: its TTL
        self.clock.advance(20)
        self.assertEqual(self.lessor.remaining(7, 10), 0)


# --- the node's calls, on a fake node ------------------------------------------------


class _Replica:
    def __init__(self):
        self.is_leader = True
        self.leader = 1
        self.leader_ballot = Ballot(1, 1)
        self.applied = 10


class _Store:
    def __init__(self, leases):
        self.leases = dict(leases)
        self.keys = {}

    def lease_ttl(self, lease):
        return self.leases.get(lease)

    def lease_items(self):
        return sorted(self.leases.items())

    def lease_keys(self, lease):
        return sorted(self.keys.get(lease, ()))


class _Writes:
    def __init__(self):
        self.submitted = []

    def submit(self, request, timeout_s, leader_only=False):
        # The leader's own expiry is never forwarded nor queued for later.
        assert leader_only == (request.op is Op.LEASE_EXPIRE), request
        d = defer.Deferred()
        self.submitted.append((request, d))
        return d


class _Auth:
    def user_of(self, credential):
        return credential or ""

    def check_read(self, user, key, end):
        if key.startswith(b"secret") and user != "root":
            raise PermissionDenied("etcdserver: permission denied")


class _Peers:
    def __init__(self):
        self.calls = []
        self.answer = lambda: succeed(10)

    def lease_keep_alive(self, node_id, lease):
        self.calls.append(("keep-alive", node_id, lease))
        return self.answer()

    def lease_time_to_live(self, node_id, lease):
        self.calls.append(("time-to-live", node_id, lease))
        return self.answer()


class _Node(LeaseCalls):
    """The parts of a replica service the lease calls use."""

    node_id = 1
    tick_s = 0.05
    _stopping = False

    def __init__(self, leases=(), election_ticks=10):
        self.options = SimpleNamespace(election_ticks=election_ticks)
        self.clock = self.reactor = task.Clock()
        self.replica = _Replica()
        self.store = _Store(leases)
        self.writes = _Writes()
        self.peers = _Peers()
        self.auth = _Auth()
        self.rng = random.Random(7)
        self.read_indexes = []
        self.submitted = []

    def _unserved(self):
        return None

    def _no_space(self):
        return None

    def _compact_tick(self):
        pass

    def _watchers_applied(self):
        pass

    def _stop_watchers(self):
        pass

    def read_index_requested(self):
        d = defer.Deferred()
        self.read_indexes.append(d)
        return d

    def submit(self, request, timeout_s, credential=None):
        d = defer.Deferred()
        self.submitted.append((request, credential, d))
        return d

    def applied(self, results=(), install_snapshot=None):
        self._batch_applied(list(results), SimpleNamespace(install_snapshot=install_snapshot))

    def deposed(self, leader=2):
        self.replica.is_leader = False
        self.replica.leader = leader
        self.replica.leader_ballot = Ballot(2, leader)

    def expiries(self):
        return [request.lease for request, _ in self.writes.submitted if request.op is Op.LEASE_EXPIRE]


class KeepAliveTests(SynchronousTestCase):
    """Keep-alives and time-to-live: answered by the leader once it confirmed it leads."""

    def test_refreshed_once_confirmed(self):
        """The leader refreshes only after its read index confirmed it leads, and answers the TTL."""
        node = _Node({7: 10})
        node._ticked()
        self.assertEqual(node.lessor.deadline(7), 10.5)
        node.clock.advance(4)
        d = node.lease_keep_alive(7)
        self.assertNoResult(d)
        self.assertEqual(node.lessor.deadline(7), 10.5)
        node.read_indexes[0].callback(10)
        self.assertEqual(self.successResultOf(d), 10)
        self.assertEqual(node.lessor.deadline(7), 14)

    def test_refresh_counted_from_the_confirmation_start(self):
        """The refresh counts from when the leader began to confirm; a confirmation slower than an election timeout refreshes nothing."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(4)
        d = node.lease_keep_alive(7)
        node.clock.advance(0.3)
        node.read_indexes[0].callback(10)
        self.assertEqual(self.successResultOf(d), 10)
        self.assertEqual(node.lessor.deadline(7), 14)  # from 4, not 4.3
        node.clock.advance(1)
        slow = node.lease_keep_alive(7)
        node.clock.advance(0.51)  # the election timeout is 0.5 s
        node.read_indexes[1].callback(10)
        self.failureResultOf(slow, Unavailable)
        self.assertEqual(node.lessor.deadline(7), 14)

    def test_waits_until_applied_through_the_index(self):
        """A keep-alive is answered from a store applied through the read index (a grant chosen before is seen)."""
        node = _Node()
        node.replica.applied = 3
        d = node.lease_keep_alive(7)
        node.read_indexes[0].callback(5)
        self.assertNoResult(d)
        node.store.leases[7] = 10
        node.replica.applied = 5
        node.applied([(Request(Op.LEASE_GRANT, lease=7, ttl=10), LeaseGranted(7, 10, 1))])
        self.assertEqual(self.successResultOf(d), 10)

    def test_lagging_leader_gives_up(self):
        """A leader that does not apply through the index in time answers Unavailable."""
        node = _Node({7: 10})
        node.replica.applied = 3
        d = node.lease_keep_alive(7)
        node.read_indexes[0].callback(5)
        node.clock.advance(1.01)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(node._lease_waiters, [])

    def test_deposed_leader_refuses(self):
        """A leader whose read index fails (deposed) refreshes nothing and answers NotLeaderError."""
        node = _Node({7: 10})
        node._ticked()
        d = node.lease_keep_alive(7)
        node.read_indexes[0].errback(NotLeaderError(2))
        self.assertEqual(self.failureResultOf(d, NotLeaderError).value.leader, 2)
        self.assertEqual(node.lessor.deadline(7), 10.5)

    def test_deposed_while_confirming(self):
        """A leader deposed between its confirmation and the refresh refuses, and forgets its deadlines."""
        node = _Node({7: 10})
        node._ticked()
        d = node.lease_keep_alive(7)
        node.deposed()
        node.read_indexes[0].callback(10)
        self.failureResultOf(d, NotLeaderError)
        self.assertIsNone(node.lessor.deadline(7))

    def test_read_index_timeout(self):
        """A read index that times out is Unavailable."""
        node = _Node({7: 10})
        d = node.lease_keep_alive(7)
        node.read_indexes[0].errback(defer.TimeoutError())
        self.failureResultOf(d, Unavailable)

    def test_not_found(self):
        """An unknown lease, an impossible id, or one being expired answers 0 (etcd's TTL for "not found")."""
        node = _Node({7: 1})
        node._ticked()
        for lease in (8, 0, MAX_LEASE_ID + 1, -3):
            d = node.lease_keep_alive(lease)
            for confirm in node.read_indexes:
                if not confirm.called:
                    confirm.callback(10)
            self.assertEqual(self.successResultOf(d), 0)
        node.clock.advance(2)
        node._ticked()
        self.assertEqual(node.expiries(), [7])
        d = node.lease_keep_alive(7)
        node.read_indexes[-1].callback(10)
        self.assertEqual(self.successResultOf(d), 0)
        self.failureResultOf(node.lease_keep_alive("7"), InvalidArgument)

    def test_follower_forwards(self):
        """A follower carries a keep-alive to the leader over its peer link and answers what it says."""
        node = _Node({7: 10})
        node.deposed(leader=3)
        self.assertEqual(self.successResultOf(node.lease_keep_alive(7)), 10)
        self.assertEqual(node.peers.calls, [("keep-alive", 3, 7)])
        self.assertEqual(node.read_indexes, [])

    def test_follower_errors(self):
        """No leader known: NotLeaderError; the leader refusing: its NotLeaderError; no link: Unavailable."""
        node = _Node({7: 10})
        node.deposed(leader=None)
        self.failureResultOf(node.lease_keep_alive(7), NotLeaderError)
        node.replica.leader = 3
        node.peers.answer = lambda: fail(NotLeaderError(2))
        self.assertEqual(self.failureResultOf(node.lease_keep_alive(7), NotLeaderError).value.leader, 2)
        node.peers.answer = lambda: fail(PeerUnreachable("no link"))
        failure = self.failureResultOf(node.lease_keep_alive(7), Unavailable)
        self.assertFalse(failure.check(NotLeaderError))
        node.peers.answer = lambda: fail(PeerRequestError("boom"))
        self.failureResultOf(node.lease_time_to_live(7), Unavailable)

    def test_peer_request_at_a_follower_refused(self):
        """A keep-alive forwarded to a node that does not lead is refused NotLeaderError, never forwarded on."""
        node = _Node({7: 10})
        node.deposed(leader=3)
        self.assertEqual(self.failureResultOf(node.lease_keep_alive_requested(7), NotLeaderError).value.leader, 3)
        self.assertEqual(node.peers.calls, [])

    def test_time_to_live(self):
        """The leader answers the granted TTL and the whole seconds left, rounded up; None if not found."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(3)
        d = node.lease_time_to_live(7)
        node.read_indexes[0].callback(10)
        self.assertEqual(self.successResultOf(d), LeaseTime(10, 8))
        d = node.lease_time_to_live(9)
        node.read_indexes[1].callback(10)
        self.assertIsNone(self.successResultOf(d))

    def test_stop_fails_waiting(self):
        """Stopping fails keep-alives waiting for the applied index."""
        node = _Node({7: 10})
        node.replica.applied = 3
        d = node.lease_keep_alive(7)
        node.read_indexes[0].callback(5)
        node._stop_calls(Unavailable("node shutting down"))
        self.failureResultOf(d, Unavailable)


class ExpiryTests(SynchronousTestCase):
    """The leader proposes LEASE_EXPIRE once a deadline has passed on its clock."""

    def test_only_after_the_deadline(self):
        """Nothing is proposed before the deadline; once it has passed, one LEASE_EXPIRE, once."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(10.5)
        node._ticked()
        self.assertEqual(node.expiries(), [])
        node.clock.advance(0.05)
        node._ticked()
        node._ticked()
        self.assertEqual(node.writes.submitted[0][0], Request(Op.LEASE_EXPIRE, lease=7))
        self.assertEqual(node.expiries(), [7])

    def test_keep_alive_postpones(self):
        """A lease kept alive is not expired at its old deadline."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(9)
        d = node.lease_keep_alive(7)
        node.read_indexes[0].callback(10)
        self.successResultOf(d)
        node.clock.advance(10)
        node._ticked()
        self.assertEqual(node.expiries(), [])
        node.clock.advance(0.1)
        node._ticked()
        self.assertEqual(node.expiries(), [7])

    def test_failed_expiry_retried(self):
        """An expiry that failed is proposed again on a later tick; one applied is not."""
        node = _Node({7: 1, 8: 1})
        node._ticked()
        node.clock.advance(2)
        node._ticked()
        self.assertEqual(node.expiries(), [7, 8])
        node.writes.submitted[0][1].errback(Unavailable("no quorum"))
        node.writes.submitted[1][1].callback(LeaseRevoked(8, 2, 5))
        del node.store.leases[8]
        node._ticked()
        self.assertEqual(node.expiries(), [7, 8, 7])

    def test_gone_from_the_store_not_proposed(self):
        """A lease past its deadline that the store no longer has is dropped, not proposed."""
        node = _Node({7: 1})
        node._ticked()
        del node.store.leases[7]
        node.clock.advance(2)
        node._ticked()
        self.assertEqual(node.expiries(), [])
        self.assertIsNone(node.lessor.deadline(7))

    def test_bounded_in_flight(self):
        """At most 64 expiries are in flight; another goes once one is applied."""
        node = _Node({lease: 1 for lease in range(1, 71)})
        node._ticked()
        node.clock.advance(2)
        node._ticked()
        self.assertEqual(node.expiries(), list(range(1, 65)))
        node.writes.submitted[0][1].callback(LeaseRevoked(1, 0, 3))
        node._ticked()
        self.assertEqual(node.expiries()[64:], [65])

    def test_only_the_leader(self):
        """A follower proposes no expiry, and a deposed leader forgets its deadlines."""
        node = _Node({7: 1})
        node._ticked()
        node.deposed()
        node.clock.advance(5)
        node._ticked()
        self.assertEqual(node.expiries(), [])
        self.assertEqual(len(node.lessor), 0)

    def test_applied_results_seen(self):
        """A grant applied at the leader runs out at now + TTL; a revoke applied drops the lease."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(2)
        node.store.leases[8] = 20
        node.applied([(Request(Op.LEASE_GRANT, lease=8, ttl=20), LeaseGranted(8, 20, 1)),
                      (Request(Op.LEASE_REVOKE, lease=7), LeaseRevoked(7, 0, 1))])
        self.assertEqual((node.lessor.deadline(8), node.lessor.deadline(7)), (22, None))

    def test_snapshot_adopted(self):
        """Leases a snapshot installed under a leader get a promotion's deadline."""
        node = _Node({7: 10})
        node._ticked()
        node.clock.advance(1)
        node.store.leases[9] = 5
        node.applied(install_snapshot=object())
        self.assertEqual((node.lessor.deadline(7), node.lessor.deadline(9)), (10.5, 6.5))


class GrantTests(SynchronousTestCase):
    """Grants and revokes through the log."""

    def test_min_ttl(self):
        """The minimum TTL is 1.5 election timeouts, rounded up, and at least 1 second."""
        self.assertEqual(_Node(election_ticks=10).min_lease_ttl, 1)
        self.assertEqual(_Node(election_ticks=20).min_lease_ttl, 2)
        self.assertEqual(_Node(election_ticks=40).min_lease_ttl, 3)
        self.assertEqual(_Node(election_ticks=41).min_lease_ttl, 4)

    def test_ttl_raised(self):
        """A TTL under the minimum is granted as the minimum; a longer one as it is."""
        node = _Node(election_ticks=40)
        for asked, granted in ((1, 3), (0, 3), (-5, 3), (3, 3), (60, 60)):
            node.lease_grant(asked, 5, lease_id=9)
            self.assertEqual(node.submitted[-1][0], Request(Op.LEASE_GRANT, lease=9, ttl=granted))

    def test_user_id_not_repicked(self):
        """A grant of a taken id the client chose is refused, as it is, with the credential's user."""
        node = _Node()
        d = node.lease_grant(30, 5, lease_id=9, credential="alice")
        [(request, credential, applied)] = node.submitted
        self.assertEqual(credential, "alice")
        refused = LeaseRefused(LeaseError.EXISTS, 9, 4)
        applied.callback(refused)
        self.assertEqual(self.successResultOf(d), refused)
        self.assertEqual(len(node.submitted), 1)

    def test_id_picked_and_repicked(self):
        """Id 0: the node picks one from its rng, and picks again while the one picked is taken."""
        node = _Node()
        expected = random.Random(7)
        picks = [expected.randint(1, MAX_LEASE_ID) for _ in range(2)]
        d = node.lease_grant(30, 5)
        self.assertEqual(node.submitted[0][0], Request(Op.LEASE_GRANT, lease=picks[0], ttl=30))
        node.submitted[0][2].callback(LeaseRefused(LeaseError.EXISTS, picks[0], 4))
        self.assertEqual(node.submitted[1][0].lease, picks[1])
        granted = LeaseGranted(picks[1], 30, 4)
        node.submitted[1][2].callback(granted)
        self.assertEqual(self.successResultOf(d), granted)

    def test_id_taken_here_not_proposed(self):
        """An id picked that this member's store already has is picked again before anything is proposed."""
        node = _Node()
        expected = random.Random(7)
        picks = [expected.randint(1, MAX_LEASE_ID) for _ in range(2)]
        node.store.leases[picks[0]] = 10
        node.lease_grant(30, 5)
        self.assertEqual([request.lease for request, _, _ in node.submitted], [picks[1]])

    def test_repicks_bounded(self):
        """After grant_attempts taken ids the last refusal is the answer."""
        node = _Node()
        d = node.lease_grant(30, 5)
        for attempt in range(node.grant_attempts):
            node.submitted[attempt][2].callback(LeaseRefused(LeaseError.EXISTS, node.submitted[attempt][0].lease, 1))
        self.assertEqual(len(node.submitted), node.grant_attempts)
        self.assertEqual(self.successResultOf(d).error, LeaseError.EXISTS)

    def test_refused_without_space_or_members(self):
        """A grant is refused under the space alarm; every call is Unavailable without a member set."""
        node = _Node()
        node._no_space = lambda: Unavailable("no space")
        self.failureResultOf(node.lease_grant(30, 5), Unavailable)
        node._unserved = lambda: fail(Unavailable("no member set yet"))
        for d in (node.lease_revoke(3, 5), node.lease_list(), node.lease_keys(3), node.lease_keep_alive(3),
                  node.lease_time_to_live(3)):
            self.failureResultOf(d, Unavailable)
        self.assertEqual(node.submitted, [])

    def test_revoke(self):
        """A revoke goes through the log as LEASE_REVOKE with the credential's user."""
        node = _Node()
        node.lease_revoke(9, 5, credential="bob")
        self.assertEqual(node.submitted[0][:2], (Request(Op.LEASE_REVOKE, lease=9), "bob"))

    def test_list_and_keys(self):
        """Leases and their keys come from the store; a key the user may not read is refused."""
        node = _Node({3: 10, 1: 5})
        node.store.keys[3] = [b"b", b"a"]
        self.assertEqual(self.successResultOf(node.lease_list()), [1, 3])
        self.assertEqual(self.successResultOf(node.lease_keys(3)), [b"a", b"b"])
        self.assertEqual(self.successResultOf(node.lease_keys(4)), [])
        node.store.keys[1] = [b"secret"]
        self.failureResultOf(node.lease_keys(1), PermissionDenied)
        self.assertEqual(self.successResultOf(node.lease_keys(1, credential="root")), [b"secret"])

    def test_store_without_leases(self):
        """A store with no lease reads serves no lease calls and expires nothing."""
        node = _Node()
        node.store = object()
        self.failureResultOf(node.lease_grant(30, 5), Unavailable)
        self.failureResultOf(node.lease_keep_alive(3), Unavailable)
        node._ticked()
        node.applied()
        self.assertEqual(node.writes.submitted, [])


# --- in a cluster of real services -------------------------------------------------------


class LeaseStore(MemoryStore):
    """A MemoryStore with a lease table set by the test (no grants through the log)."""

    def __init__(self, config, leases):
        super().__init__(config)
        self.leases = dict(leases)

    def lease_ttl(self, lease):
        return self.leases.get(lease)

    def lease_items(self):
        return sorted(self.leases.items())

    def lease_keys(self, lease):
        return []


class LeasePeers(FakePeers):
    def lease_keep_alive(self, node_id, lease):
        if not self.wire.reachable(self.node_id, node_id):
            return fail(PeerUnreachable("link down"))
        return self.wire.later(self.wire.services[node_id].lease_keep_alive_requested, lease)

    def lease_time_to_live(self, node_id, lease):
        if not self.wire.reachable(self.node_id, node_id):
            return fail(PeerUnreachable("link down"))
        return self.wire.later(self.wire.services[node_id].lease_time_to_live_requested, lease)


class ClusterTests(SynchronousTestCase):
    """Three services with a lease in every store."""

    def cluster(self, leases):
        reactor = FakeReactor()
        wire = Wire(reactor)
        config = Config(frozenset({1, 2, 3}))
        for node_id in (1, 2, 3):
            service = start_service(node_id, LeaseStore(config, leases), reactor, wire)
            service.peers = LeasePeers(wire, node_id)
            wire.services[node_id] = service
        exchange_timing(wire)
        return reactor, wire

    def until_leading(self, reactor, wire):
        """Run until one lessor is promoted; return its service."""
        for _ in range(5000):
            leading = [s for s in wire.services.values() if s._lessor_ballot is not None]
            if leading:
                return leading[0]
            reactor.advance(0.001)
        self.fail("no leader")

    def test_promotion_extends(self):
        """The leader's lessor starts the lease at the time it took over + TTL + election timeout."""
        reactor, wire = self.cluster({7: 60})
        leader = self.until_leading(reactor, wire)
        self.assertAlmostEqual(leader.lessor.deadline(7), reactor.seconds() + 60 + EXTEND_S)

    def test_follower_keep_alive_refreshes_at_the_leader(self):
        """A keep-alive sent to a follower is carried to the leader, which refreshes the lease."""
        reactor, wire = self.cluster({7: 60})
        leader = self.until_leading(reactor, wire)
        run(reactor, 1)
        follower = next(s for i, s in sorted(wire.services.items()) if s is not leader)
        asked_at = reactor.seconds()
        d = follower.lease_keep_alive(7)
        run(reactor, 0.2)
        self.assertEqual(self.successResultOf(d), 60)
        self.assertGreater(leader.lessor.deadline(7), asked_at + 60)
        self.assertLess(leader.lessor.deadline(7), asked_at + 60.2)
        self.assertIsNone(follower.lessor.deadline(7))
        d = follower.lease_time_to_live(7)
        run(reactor, 0.2)
        self.assertEqual(self.successResultOf(d), LeaseTime(60, 60))

    def test_deposed_leader_refuses(self):
        """A leader cut off from the others acknowledges no keep-alive; the new leader extends on taking over."""
        reactor, wire = self.cluster({7: 60})
        old = self.until_leading(reactor, wire)
        run(reactor, 0.5)
        before = old.lessor.deadline(7)
        wire.down = {old.node_id}
        d = old.lease_keep_alive(7)
        run(reactor, 3)
        self.failureResultOf(d, Unavailable)
        self.assertIn(old.lessor.deadline(7), (before, None))
        new = wire.services[leader_of(wire)]
        self.assertIsNot(new, old)
        self.assertGreater(new.lessor.deadline(7), reactor.seconds() + 60 + EXTEND_S - 3)

    def test_only_the_leader_expires_after_the_deadline(self):
        """LEASE_EXPIRE is proposed by the leader alone, once its deadline has passed."""
        reactor, wire = self.cluster({7: 1})
        proposed = []
        for node_id, service in sorted(wire.services.items()):
            real = service.writes.submit

            def submit(request, timeout_s, leader_only=False, real=real, node_id=node_id):
                if request.op is Op.LEASE_EXPIRE:
                    self.assertTrue(leader_only)
                    proposed.append((node_id, request.lease, reactor.seconds()))
                    return defer.Deferred()  # never applied: the test watches who proposes when
                return real(request, timeout_s, leader_only)

            service.writes.submit = submit
        leader = self.until_leading(reactor, wire)
        deadline = leader.lessor.deadline(7)
        run(reactor, 1 + EXTEND_S - 0.01)
        self.assertEqual(proposed, [])
        run(reactor, 0.2)
        self.assertEqual([(n, lease) for n, lease, _ in proposed], [(leader.node_id, 7)])
        self.assertGreater(proposed[0][2], deadline)


# --- the AMP commands ----------------------------------------------------------------------


class LeaseNode(RecordingNode):
    def __init__(self):
        super().__init__()
        self.asked = []
        self.keep_alive = lambda lease: succeed(30)
        self.time_to_live = lambda lease: succeed(LeaseTime(30, 12))

    def lease_keep_alive_requested(self, lease):
        self.asked.append(("keep-alive", lease))
        return self.keep_alive(lease)

    def lease_time_to_live_requested(self, lease):
        self.asked.append(("time-to-live", lease))
        return self.time_to_live(lease)


class LeaseCommandTests(SynchronousTestCase):
    """LeaseKeepAlive and LeaseTimeToLive over one AMP connection."""

    def setUp(self):
        self.clock = task.Clock()
        self.node = LeaseNode()
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: listener(self.node, self.clock),
            lambda: opener(LeaseNode(), self.clock),
        )

    def results(self, d):
        out = []
        d.addBoth(out.append)
        self.pump.flush()
        self.assertEqual(len(out), 1, "the Deferred did not fire")
        return out[0]

    def test_keep_alive_round_trip(self):
        """The leader's TTL comes back; 0 (not found) too."""
        self.assertEqual(self.results(self.client.lease_keep_alive(1 << 62)), 30)
        self.node.keep_alive = lambda lease: succeed(0)
        self.assertEqual(self.results(self.client.lease_keep_alive(5)), 0)
        self.assertEqual(self.node.asked, [("keep-alive", 1 << 62), ("keep-alive", 5)])

    def test_time_to_live_round_trip(self):
        """The granted TTL and time left come back as a LeaseTime; not found as None."""
        self.assertEqual(self.results(self.client.lease_time_to_live(5)), LeaseTime(30, 12))
        self.node.time_to_live = lambda lease: succeed(None)
        self.assertIsNone(self.results(self.client.lease_time_to_live(5)))

    def test_not_leader_crosses(self):
        """NOT_LEADER comes back as NotLeaderError naming the leader."""
        self.node.keep_alive = lambda lease: fail(NotLeaderError(3))
        failure = self.results(self.client.lease_keep_alive(5))
        failure.trap(NotLeaderError)
        self.assertEqual(failure.value.leader, 3)
        self.node.time_to_live = lambda lease: fail(NotLeaderError(None))
        self.assertIsNone(self.results(self.client.lease_time_to_live(5)).value.leader)

    def test_other_errors_cross_as_peer_errors(self):
        """Any other failure at the leader is a PeerRequestError; a negative TTL from a peer too."""
        self.node.keep_alive = lambda lease: fail(Unavailable("could not confirm"))
        self.results(self.client.lease_keep_alive(5)).trap(PeerRequestError)
        self.flushLoggedErrors(Unavailable)
        self.node.keep_alive = lambda lease: succeed(-4)
        self.results(self.client.lease_keep_alive(5)).trap(PeerRequestError)

    def test_no_link(self):
        """Lease calls to a peer with no link fail with PeerUnreachable."""
        network = PeerNetwork(1, {2: ("h2", 5002)}, LeaseNode(), task.Clock())
        self.failureResultOf(network.lease_keep_alive(2, 5), PeerUnreachable)
        self.failureResultOf(network.lease_time_to_live(2, 5), PeerUnreachable)


class SimTransportTests(SynchronousTestCase):
    """The simulator's links carry the lease calls as the AMP commands do."""

    def test_lease_calls_carried(self):
        """A keep-alive and a time-to-live reach the leader's service and come back; NOT_LEADER crosses."""
        world = VirtualTime()
        processes = {i: Process(world, i, 1, MachineClock(1.0, 0.0), 0.0, lambda p, c, a, k=None: c(*a))
                     for i in (1, 2)}
        processes[1].service = SimpleNamespace()
        processes[2].service = leader = LeaseNode()
        network = Network(world, random.Random(0), processes, (0.001, 0.002))
        network.connect_later(processes[1], 2, 0.0)
        self.drain(world)
        transport = SimTransport(network, processes[1])
        kept, time = transport.lease_keep_alive(2, 5), transport.lease_time_to_live(2, 6)
        leader.keep_alive = lambda lease: fail(NotLeaderError(3)) if lease == 7 else succeed(30)
        refused = transport.lease_keep_alive(2, 7)
        self.drain(world)
        self.assertEqual((self.successResultOf(kept), self.successResultOf(time)), (30, LeaseTime(30, 12)))
        self.assertEqual(self.failureResultOf(refused, NotLeaderError).value.leader, 3)
        self.assertEqual(leader.asked, [("keep-alive", 5), ("time-to-live", 6), ("keep-alive", 7)])

    def drain(self, world):
        while (item := world.pop()) is not None:
            call, args = item
            call(*args)
