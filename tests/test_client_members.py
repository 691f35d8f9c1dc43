"""
Tests for the client's member list (L{kvpaxos.client.retry.Directory}'s
refresh, driven by L{Client} and L{AsyncClient}): a client given one
address finds the others from C{Cluster.MemberList} and follows members
that join and leave; the seeds stay; a failed listing is not the
request's failure.  No network, no sleeping, as in L{tests.test_client}.
"""

from __future__ import annotations

import asyncio

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.client import AsyncClient, Client, Directory
from kvpaxos.v1 import kv_pb2
from tests.fake_grpc import FakeRpcError, unavailable
from tests.test_client import A, B, C, FakeCluster, FakeTime, LowRandom

D = "d:1"


def member(member_id: int, client: str, role: str = "voter") -> kv_pb2.Member:
    return kv_pb2.Member(member_id=member_id, role=role, peer_address=f"peer{member_id}:1", client_address=client)


class MembersCluster(FakeCluster):
    """
    A L{FakeCluster} that lists its members: C{members} (1, 2, 3 at a:1,
    b:1, c:1 to begin with) in cluster C{cluster_id}.  Listings are
    recorded in C{listings}, not C{requests}; C{list_error}, when set, is
    what every listing raises.
    """

    MEMBERS = {A: 1, B: 2, C: 3, D: 4}

    def __init__(self) -> None:
        super().__init__()
        self.cluster_id = 9
        self.members = [member(1, A), member(2, B), member(3, C)]
        self.list_error = None

    def serve(self, endpoint: str, rpc: str, request, timeout, via: str = "unary"):
        if rpc != "MemberList":
            return super().serve(endpoint, rpc, request, timeout, via)
        self.listings.append((endpoint, timeout))
        if endpoint in self.down:
            raise unavailable("failed to connect to all addresses", reason=None)
        if self.list_error is not None:
            raise self.list_error
        return kv_pb2.MemberListResponse(header=self.header(endpoint), cluster_id=self.cluster_id,
                                         leader_id=self.leader, members=self.members)


class RefreshTests(SynchronousTestCase):
    """The blocking client refreshes its endpoints from the member list."""

    def setUp(self) -> None:
        self.cluster = MembersCluster()
        self.time = FakeTime()

    def make_client(self, *endpoints: str, **kwargs) -> Client:
        options = dict(timeout_s=5.0, channel_factory=self.cluster.channel, sleep=self.time.sleep,
                       clock=self.time.clock, rng=LowRandom())
        options.update(kwargs)
        client = Client(list(endpoints), **options)
        self.addCleanup(client.close)
        return client

    def test_one_endpoint_finds_the_others(self) -> None:
        """A client given one address lists the members first, then knows every member and goes to the leader."""
        client = self.make_client(A)
        client.put(b"k", b"v")
        self.assertEqual(client.endpoints, (A, B, C))
        self.assertEqual([e for e, _ in self.cluster.listings], [A])
        self.assertEqual([(r[0], r[1]) for r in self.cluster.requests], [(C, "OpenSession"), (C, "Put")])

    def test_listing_deadline_bounded(self) -> None:
        """A listing waits at most a second, so it cannot eat the request's deadline."""
        self.make_client(A).get(b"k")
        self.assertEqual(self.cluster.listings, [(A, 1.0)])
        self.make_client(A, timeout_s=1.0).get(b"k")
        self.assertEqual(self.cluster.listings[1], (A, 0.5))

    def test_removed_member_drops_out(self) -> None:
        """After refresh_s, a member no longer listed is no longer an endpoint."""
        client = self.make_client(A)
        client.get(b"k")
        self.cluster.members = [member(1, A), member(3, C)]
        self.time.now += 29.0
        client.get(b"k")
        self.assertEqual((client.endpoints, len(self.cluster.listings)), ((A, B, C), 1))
        self.time.now += 1.0
        client.get(b"k")
        self.assertEqual((client.endpoints, len(self.cluster.listings)), ((A, C), 2))

    def test_new_member_joins(self) -> None:
        """A member added to the cluster becomes an endpoint at the next listing."""
        client = self.make_client(A, refresh_s=10.0)
        client.get(b"k")
        self.cluster.members.append(member(4, D, "learner"))
        self.time.now += 10.0
        client.get(b"k")
        self.assertEqual(client.endpoints, (A, B, C, D))

    def test_seeds_stay(self) -> None:
        """The endpoints given stay first and stay known even when the member list leaves them out."""
        self.cluster.members = [member(2, B), member(3, C)]
        client = self.make_client(A)
        client.get(b"k")
        self.assertEqual(client.endpoints, (A, B, C))

    def test_member_without_client_address_skipped(self) -> None:
        """A member with no client address, a malformed one or a wildcard host is not an endpoint."""
        self.cluster.members = [member(1, A), member(2, ""), member(3, "0.0.0.0:2379"), member(4, "[::]:1"),
                                member(5, "nonsense")]
        client = self.make_client(A)
        client.get(b"k")
        self.assertEqual(client.endpoints, (A,))

    def test_listing_failure_is_not_the_requests(self) -> None:
        """A listing that fails leaves the endpoints as they were, and the request succeeds."""
        self.cluster.list_error = FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        client = self.make_client(A)
        self.cluster._write(b"k", b"v")
        self.assertEqual(client.get(b"k"), b"v")
        self.assertEqual((client.endpoints, self.time.sleeps), ((A,), []))

    def test_refresh_after_every_endpoint_failed(self) -> None:
        """After a round in which every endpoint failed, the client lists the members again and finds the new ones."""
        self.cluster.members = [member(1, A)]
        client = self.make_client(A)
        client.get(b"k")
        self.cluster.errors[A] = [unavailable("no quorum", None)]
        self.cluster.members = [member(1, A), member(4, D)]
        self.cluster.leader = 4
        self.cluster._write(b"k", b"v")
        self.assertEqual(client.get(b"k"), b"v")
        self.assertEqual([e for e, _ in self.cluster.listings], [A, A])
        self.assertEqual(client.endpoints, (A, D))
        self.assertEqual([r[0] for r in self.cluster.sent("Get")][-1], D)

    def test_other_cluster_ignored(self) -> None:
        """A member list from another cluster than the first one listed is ignored."""
        client = self.make_client(A, refresh_s=1.0)
        client.get(b"k")
        self.cluster.cluster_id = 10
        self.cluster.members = [member(1, A), member(4, D)]
        self.time.now += 1.0
        client.get(b"k")
        self.assertEqual(client.endpoints, (A, B, C))

    def test_refresh_off(self) -> None:
        """With refresh_s=None the client never lists the members."""
        client = self.make_client(A, refresh_s=None)
        client.get(b"k")
        self.assertEqual((client.endpoints, self.cluster.listings), ((A,), []))

    def test_member_list(self) -> None:
        """member_list() returns the list (retried like a read) and takes its endpoints."""
        client = self.make_client(B, refresh_s=None)
        response = client.member_list()
        self.assertEqual((response.cluster_id, [m.member_id for m in response.members]), (9, [1, 2, 3]))
        self.assertEqual(client.endpoints, (B, A, C))


class DirectoryTests(SynchronousTestCase):
    """The directory's listing rules, without a client."""

    def listing(self, *members: kv_pb2.Member, member_id: int = 1) -> kv_pb2.MemberListResponse:
        return kv_pb2.MemberListResponse(header=kv_pb2.ResponseHeader(member_id=member_id, leader_id=2),
                                         cluster_id=5, leader_id=2, members=members)

    def test_seed_known_under_another_name(self) -> None:
        """A member known to answer at a seed is not listed again under the address it advertises."""
        directory = Directory(["localhost:2379"], 30.0)
        directory.listed("localhost:2379", self.listing(member(1, "127.0.0.1:2379"), member(2, "127.0.0.1:22379")))
        self.assertEqual(directory.endpoints, ("localhost:2379", "127.0.0.1:22379"))
        self.assertEqual((directory.leader, directory.leader_endpoint()), (2, "127.0.0.1:22379"))

    def test_due(self) -> None:
        """The list is due at first, then every refresh_s, and after a round that failed everywhere; once per claim."""
        directory = Directory(["a:1"], 30.0)
        self.assertEqual([directory.begin_refresh(0.0), directory.begin_refresh(0.0)], [True, False])
        self.assertEqual([directory.begin_refresh(29.9), directory.begin_refresh(30.0)], [False, True])
        directory.round_failed()
        self.assertTrue(directory.begin_refresh(30.5))
        self.assertFalse(Directory(["a:1"], None).begin_refresh(0.0))

    def test_bad_refresh(self) -> None:
        """refresh_s must be more than 0 (or None)."""
        self.assertRaises(ValueError, Directory, ["a:1"], 0)


class AsyncRefreshTests(SynchronousTestCase):
    """The asyncio client refreshes the same way."""

    def test_one_endpoint_finds_the_others(self) -> None:
        """An AsyncClient given one address ends up knowing every member."""
        cluster, time = MembersCluster(), FakeTime()

        async def main():
            async with AsyncClient([A], channel_factory=cluster.aio_channel, sleep=time.async_sleep,
                                   clock=time.clock, rng=LowRandom()) as client:
                await client.put(b"k", b"v")
                listed = await client.member_list()
                return client.endpoints, len(listed.members)

        self.assertEqual(asyncio.run(main()), ((A, B, C), 3))
        self.assertEqual([(r[0], r[1]) for r in cluster.requests], [(C, "OpenSession"), (C, "Put")])
