"""
Tests for leases in the client library (L{kvpaxos.client.lease},
L{kvpaxos.client.blocking}, L{kvpaxos.client.aio}): the lease calls and
their retries, puts with a lease, and held leases renewed by a thread (a
task) whose waits a test steps through (L{Steps}), so no test sleeps.
Channels come from L{LeaseCluster}, a L{tests.test_client.FakeCluster}
with leases; the clock is L{tests.test_client.FakeTime}.
"""

from __future__ import annotations

import asyncio
import queue

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.client import (
    AsyncClient,
    AsyncLease,
    InvalidArgument,
    Lease,
    LeaseExists,
    LeaseExpired,
    LeaseNotFound,
    Unavailable,
    lease_grant_operation,
    put_op,
)
from kvpaxos.client.lease import RETRY_S, Renewals
from kvpaxos.client.requests import MAX_LEASE_ID, MAX_LEASE_TTL
from kvpaxos.v1 import kv_pb2, lease_pb2
from tests.fake_grpc import FakeRpcError, unavailable
from tests.test_client import A, B, C, ClientTestCase, FakeChannel, FakeCluster, FakeTime, LowRandom

#: The longest a test waits for the renewing thread.
BOUND_S = 10.0


class LeaseChannel(FakeChannel):
    """A L{FakeChannel} that serves C{Lease.KeepAlive} streams too: each request as the cluster's C{KeepAlive}."""

    def stream_stream(self, path: str, request_serializer=None, response_deserializer=None, **_):
        if not path.endswith("/KeepAlive"):
            return super().stream_stream(path)

        def serve(request, timeout):
            request = type(request).FromString(request_serializer(request))
            answer = self._cluster.serve(self._endpoint, "KeepAlive", request, timeout, via="stream")
            return response_deserializer(answer.SerializeToString())

        def call(requests, timeout=None, metadata=None):
            return iter([serve(request, timeout) for request in requests])

        async def aio_answers(requests, timeout):
            for request in requests:
                yield serve(request, timeout)

        def aio_call(requests, timeout=None, metadata=None):
            return aio_answers(requests, timeout)

        return aio_call if self._aio else call


class LeaseCluster(FakeCluster):
    """
    A L{FakeCluster} with a lease table (C{leases}: id -> TTL), keys
    attached to leases (C{attached}) and the state machine's rules;
    C{remaining[id]} is the time a lease has left (default its TTL);
    C{lose_answers}: how many grants and revokes apply and then fail
    UNAVAILABLE (the answer lost); C{gone}: ids whose keep-alives answer 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.leases: dict[int, int] = {}
        self.attached: dict[bytes, int] = {}
        self.remaining: dict[int, int] = {}
        self.lose_answers = 0
        self.min_ttl = 2

    def channel(self, endpoint: str, aio: bool = False) -> FakeChannel:
        channel = LeaseChannel(self, endpoint, aio)
        self.channels.append(channel)
        return channel

    def _lost(self) -> None:
        if self.lose_answers:
            self.lose_answers -= 1
            raise unavailable("no answer from the node within 4.5s; leader is 3", 3)

    @staticmethod
    def not_found(lease_id: int) -> FakeRpcError:
        return FakeRpcError(grpc.StatusCode.NOT_FOUND, f"requested lease not found: lease {lease_id}",
                            errors.LEASE_NOT_FOUND, {errors.LEASE_ID: lease_id})

    def Grant(self, endpoint, request):
        if request.id in self.leases:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "lease already exists: ...", errors.LEASE_EXISTS,
                               {errors.LEASE_ID: request.id})
        ttl = max(request.ttl, self.min_ttl)
        self.leases[request.id] = ttl
        self._lost()
        return lease_pb2.LeaseGrantResponse(header=self.header(endpoint), id=request.id, ttl=ttl)

    def Revoke(self, endpoint, request):
        if request.id not in self.leases:
            raise self.not_found(request.id)
        del self.leases[request.id]
        for key in [k for k, lease in self.attached.items() if lease == request.id]:
            del self.attached[key]
            self._write(key, None)
        self._lost()
        return lease_pb2.LeaseRevokeResponse(header=self.header(endpoint))

    def KeepAlive(self, endpoint, request):
        return lease_pb2.LeaseKeepAliveResponse(header=self.header(endpoint), id=request.id,
                                                ttl=self.leases.get(request.id, 0))

    def TimeToLive(self, endpoint, request):
        ttl = self.leases.get(request.id)
        if ttl is None:
            return lease_pb2.LeaseTimeToLiveResponse(header=self.header(endpoint), id=request.id, ttl=-1)
        keys = sorted(k for k, lease in self.attached.items() if lease == request.id) if request.keys else []
        return lease_pb2.LeaseTimeToLiveResponse(header=self.header(endpoint), id=request.id, granted_ttl=ttl,
                                                 ttl=self.remaining.get(request.id, ttl), keys=keys)

    def Leases(self, endpoint, request):
        return lease_pb2.LeasesResponse(header=self.header(endpoint), ids=sorted(self.leases))

    def Put(self, endpoint, request):
        if request.lease and request.lease not in self.leases:
            raise self.not_found(request.lease)
        response = super().Put(endpoint, request)
        if request.lease:
            self.attached[request.key] = request.lease
        else:
            self.attached.pop(request.key, None)
        return response


class Steps:
    """
    The renewing thread's waits, stepped by the test: each C{wait(delay)}
    is recorded and blocks until the test says L{go} (renew) or L{stop}.
    """

    def __init__(self) -> None:
        self.delays: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()

    def wait(self, delay_s: float) -> bool:
        self.delays.put(delay_s)
        return self._answers.get(timeout=BOUND_S)

    def next_delay(self) -> float:
        """The delay of the thread's next wait (so everything before it is done)."""
        return self.delays.get(timeout=BOUND_S)

    def go(self) -> None:
        self._answers.put(False)

    def stop(self) -> None:
        self._answers.put(True)


class LeaseTestCase(ClientTestCase):
    """A blocking client over a L{LeaseCluster}."""

    def setUp(self) -> None:
        self.cluster = LeaseCluster()
        self.time = FakeTime()
        self.client = self.make_client()

    def sent(self, rpc: str) -> list:
        return [r[2] for r in self.cluster.sent(rpc)]


class LeaseCallTests(LeaseTestCase):
    """The lease calls alone: grant, revoke, keep-alive, time-to-live, list."""

    def test_grant_picks_id(self) -> None:
        """A grant without an id sends one this client picked, and answers the TTL granted (raised)."""
        response = self.client.lease_grant(1)
        (request,) = self.sent("Grant")
        self.assertTrue(1 <= request.id <= MAX_LEASE_ID)
        self.assertEqual((response.id, response.ttl), (request.id, 2))
        self.assertEqual(self.endpoints_sent("Grant"), [A])  # the leader is unknown yet
        self.assertEqual(self.cluster.sent("OpenSession"), [])

    def test_grant_id(self) -> None:
        """A grant of a chosen id sends it; one in use raises LeaseExists, not resent."""
        self.assertEqual(self.client.lease_grant(30, 7).id, 7)
        with self.assertRaises(LeaseExists) as raised:
            self.client.lease_grant(30, 7)
        self.assertEqual((raised.exception.lease_id, raised.exception.maybe_applied), (7, False))
        self.assertEqual(len(self.sent("Grant")), 2)

    def test_grant_resent(self) -> None:
        """A grant whose answer was lost is resent with its id; LEASE_EXISTS then is its own: the granted TTL."""
        self.cluster.lose_answers = 1
        response = self.client.lease_grant(45)
        first, second = self.sent("Grant")
        self.assertEqual((first.id, response.id, response.ttl), (second.id, first.id, 45))
        self.assertEqual(len(self.cluster.leases), 1)
        self.assertEqual(self.sent("TimeToLive")[0].id, first.id)

    def test_grant_collision(self) -> None:
        """An id this client picked that is taken (on the first attempt) is picked again."""
        self.client._pick_lease_id = iter([5, 6]).__next__
        self.cluster.leases[5] = 10
        self.assertEqual(self.client.lease_grant(10).id, 6)

    def test_grant_bad(self) -> None:
        """A TTL or an id out of range is InvalidArgument before anything is sent."""
        for ttl, lease_id in ((0, 0), (MAX_LEASE_TTL + 1, 0), (True, 0), (5, -1), (5, MAX_LEASE_ID + 1)):
            self.assertRaises(InvalidArgument, self.client.lease_grant, ttl, lease_id)
        self.assertEqual(self.cluster.requests, [])

    def test_revoke(self) -> None:
        """Revoke sends the id; no such lease raises LeaseNotFound naming it."""
        self.cluster.leases[9] = 10
        self.client.lease_revoke(9)
        with self.assertRaises(LeaseNotFound) as raised:
            self.client.lease_revoke(9)
        self.assertEqual((raised.exception.lease_id, raised.exception.code), (9, grpc.StatusCode.NOT_FOUND))

    def test_revoke_resent(self) -> None:
        """A revoke whose answer was lost, resent and refused not found, is done."""
        self.cluster.leases[9] = 10
        self.cluster.lose_answers = 1
        self.client.lease_revoke(9)
        self.assertEqual([r.id for r in self.sent("Revoke")], [9, 9])

    def test_keep_alive(self) -> None:
        """A keep-alive answers the TTL (0: no such lease), over a stream of its own."""
        self.cluster.leases[4] = 12
        self.assertEqual((self.client.lease_keep_alive(4), self.client.lease_keep_alive(5)), (12, 0))
        self.assertEqual(self.cluster.ways[-1], "stream")

    def test_keep_alive_follows_leader(self) -> None:
        """A keep-alive refused NOT_LEADER, or unanswered, goes on to the leader and to other members."""
        self.cluster.leases[4] = 12
        self.cluster.followers_refuse = True
        self.assertEqual(self.client.lease_keep_alive(4), 12)
        self.assertEqual(self.endpoints_sent("KeepAlive"), [A, B, C])
        self.cluster.leader = 1
        self.cluster.errors[C] = [unavailable("leader gone", None)]
        self.assertEqual(self.client.lease_keep_alive(4), 12)
        self.assertEqual(self.endpoints_sent("KeepAlive")[3:], [C, A])

    def test_time_to_live_and_list(self) -> None:
        """time-to-live answers TTLs and keys (-1: none); leases lists the ids."""
        self.cluster.leases.update({4: 12, 2: 30})
        self.client.put(b"k", b"v", lease=4)
        self.cluster.remaining[4] = 11
        response = self.client.lease_time_to_live(4, keys=True)
        self.assertEqual((response.ttl, response.granted_ttl, list(response.keys)), (11, 12, [b"k"]))
        self.assertEqual(self.client.lease_time_to_live(8).ttl, -1)
        self.assertEqual(self.client.leases(), [2, 4])


class PutLeaseTests(LeaseTestCase):
    """put(..., lease=) and put_op(..., lease=)."""

    def test_put(self) -> None:
        """A put carries its lease (an id or a held lease); no such lease raises LeaseNotFound."""
        self.cluster.leases[3] = 10
        self.client.put(b"k", b"v", lease=3)
        lease = Lease(self.client, 3, 10, keep_alive=False)
        self.client.put(b"j", b"v", lease=lease)
        self.assertEqual([(r.key, r.lease) for r in self.sent("Put")], [(b"k", 3), (b"j", 3)])
        self.assertRaises(LeaseNotFound, self.client.put, b"k", b"v", lease=8)
        self.assertIsNone(self.cluster.data.get(b"x"))

    def test_put_op(self) -> None:
        """A Txn put op carries its lease."""
        self.assertEqual(put_op(b"k", b"v", lease=0x1F).request_put.lease, 0x1F)
        self.assertRaises(InvalidArgument, put_op, b"k", b"v", lease=-1)
        self.assertRaises(InvalidArgument, put_op, b"k", b"v", lease="1f")

    def test_put_lost_lease(self) -> None:
        """A put naming a held lease the cluster has not: LeaseExpired, the lease lost; the next is not sent."""
        lease = Lease(self.client, 3, 10, keep_alive=False)
        with self.assertRaises(LeaseExpired):
            self.client.put(b"k", b"v", lease=lease)
        self.assertTrue(lease.expired)
        self.assertRaises(LeaseExpired, self.client.put, b"k", b"v", lease=lease)
        self.assertRaises(LeaseExpired, lease.keep_alive)
        self.assertEqual(len(self.sent("Put")), 1)


class HeldLeaseTests(LeaseTestCase):
    """A held lease renewed by its thread, every third of its TTL."""

    def hold(self, ttl: int = 9, **kwargs) -> tuple[Lease, Steps]:
        self.cluster.leases[5] = ttl
        steps = Steps()
        lease = Lease(self.client, 5, ttl, wait=steps.wait, **kwargs)
        self.addCleanup(lease._thread.join, BOUND_S)
        self.addCleanup(steps.stop)
        return lease, steps

    def test_renewals(self) -> None:
        """The thread renews every third of the TTL, from when the last renewal was sent."""
        lease, steps = self.hold(9)
        self.assertEqual(steps.next_delay(), 3.0)
        self.time.now += 3.0
        steps.go()
        self.assertEqual(steps.next_delay(), 3.0)
        self.assertEqual((len(self.sent("KeepAlive")), lease.renewed, lease.valid_until), (1, 1, 112.0))
        answer = self.cluster.KeepAlive

        def slow(endpoint, request):
            self.time.now += 1.0  # the renewal takes a second to answer
            return answer(endpoint, request)

        self.cluster.KeepAlive = slow
        steps.go()
        self.assertEqual(steps.next_delay(), 2.0)  # counted from the renewal's sending
        self.assertEqual(lease.valid_until, 112.0)

    def test_renewal_fails(self) -> None:
        """A renewal that failed is kept in error and tried again soon; an answer clears it."""
        lease, steps = self.hold(9)
        steps.next_delay()
        self.cluster.down = {A, B, C}
        steps.go()
        self.assertEqual(steps.next_delay(), RETRY_S)
        self.assertIsInstance(lease.error, Unavailable)
        self.cluster.down = set()
        steps.go()
        self.assertEqual(steps.next_delay(), 3.0)
        self.assertIsNone(lease.error)
        self.assertFalse(lease.expired)

    def test_lost(self) -> None:
        """A renewal answered TTL 0 loses the lease: on_lost is called, the thread ends, operations raise."""
        called = []
        lease, steps = self.hold(9, on_lost=called.append)
        steps.next_delay()
        del self.cluster.leases[5]
        steps.go()
        lease._thread.join(BOUND_S)
        self.assertFalse(lease._thread.is_alive())
        self.assertEqual(called, [lease])
        self.assertIsInstance(lease.lost, LeaseExpired)
        self.assertIsInstance(lease.lost, LeaseNotFound)
        for operation in (lease.keep_alive, lease.time_to_live, lease.revoke):
            self.assertRaises(LeaseExpired, operation)
        lease.close()  # nothing to revoke
        self.assertEqual(self.sent("Revoke"), [])

    def test_close_revokes(self) -> None:
        """Closing stops the thread and revokes (unless asked not to); later operations raise."""
        lease, steps = self.hold(9)
        steps.next_delay()
        steps.stop()
        lease.close()
        self.assertEqual([r.id for r in self.sent("Revoke")], [5])
        self.assertRaises(LeaseExpired, lease.keep_alive)
        other, other_steps = self.hold(9)
        other_steps.next_delay()
        other_steps.stop()
        other.close(revoke=False)
        self.assertEqual(len(self.sent("Revoke")), 1)

    def test_time_to_live_gone(self) -> None:
        """A time-to-live that finds no such lease loses it."""
        lease = Lease(self.client, 5, 9, keep_alive=False)
        self.assertRaises(LeaseExpired, lease.time_to_live)
        self.assertTrue(lease.expired)

    def test_context_manager(self) -> None:
        """client.lease grants, renews from a thread until the block ends, then revokes (the thread wakes)."""
        with self.client.lease(60) as lease:
            self.assertEqual((lease.ttl, lease.closed), (60, False))
            self.assertTrue(lease._thread.is_alive())
            self.client.put(b"k", b"v", lease=lease)
        self.assertFalse(lease._thread.is_alive())
        self.assertEqual((self.sent("Revoke")[0].id, self.cluster.data), (lease.id, {}))

    def test_schedule(self) -> None:
        """Renewals: due a third of the TTL after the last answered one was sent; soon after a failure."""
        renewals = Renewals(30, 0.0)
        self.assertEqual((renewals.delay_s(4.0), renewals.valid_until), (6.0, 30.0))
        renewals.answered(30, 9.0)
        self.assertEqual((renewals.delay_s(10.0), renewals.valid_until), (9.0, 39.0))
        renewals.failed(12.0)
        self.assertEqual(renewals.delay_s(12.0), RETRY_S)
        self.assertEqual(Renewals(1, 0.0).delay_s(0.0), 1 / 3)


class AsyncLeaseTests(SynchronousTestCase):
    """The asyncio client's leases: the same calls, and a held lease renewed by a task."""

    def setUp(self) -> None:
        self.cluster = LeaseCluster()
        self.time = FakeTime()

    def run_client(self, body):
        async def main():
            async with AsyncClient([A, B, C], channel_factory=self.cluster.aio_channel, sleep=self.time.async_sleep,
                                   clock=self.time.clock, rng=LowRandom()) as client:
                return await body(client)
        return asyncio.run(main())

    def test_calls(self) -> None:
        """grant, keep-alive, time-to-live, leases and revoke, as coroutines."""
        async def body(client):
            granted = await client.lease_grant(20, 6)
            await client.put(b"k", b"v", lease=6)
            kept = await client.lease_keep_alive(6)
            ttl = (await client.lease_time_to_live(6, keys=True)).keys
            listed = await client.leases()
            await client.lease_revoke(6)
            return granted.ttl, kept, list(ttl), listed, self.cluster.data

        self.assertEqual(self.run_client(body), (20, 20, [b"k"], [6], {}))

    def test_held(self) -> None:
        """An awaited lease is renewed by a task; lost once a renewal answers 0; closing revokes a held one."""
        waits = []

        async def body(client):
            async def wait(delay_s):
                waits.append(delay_s)
                return len(waits) > 2  # renew twice, then stop

            lease = await AsyncLease(client, 9, 5, wait=wait)
            await lease._task
            renewed = lease.renewed
            await lease.close()
            lost = []
            gone = await AsyncLease(client, 9, 7, on_lost=lost.append, wait=wait)
            del self.cluster.leases[7]
            with self.assertRaises(LeaseExpired):
                await gone.keep_alive()
            await gone.close()
            return renewed, lost == [gone], [r[2].id for r in self.cluster.sent("Revoke")]

        self.assertEqual(self.run_client(body), (2, True, [5]))
        self.assertEqual(waits[:2], [3.0, 3.0])

    def test_context_manager(self) -> None:
        """async with client.lease(ttl): granted on entry, its key put with it, revoked on exit."""
        async def body(client):
            async with client.lease(30) as lease:
                await client.put(b"k", b"v", lease=lease)
                keys = list((await lease.time_to_live(keys=True)).keys)
            return keys, lease.expired, self.cluster.data

        self.assertEqual(self.run_client(body), ([b"k"], True, {}))

    def test_not_granted(self) -> None:
        """An AsyncLease not awaited yet cannot be used."""
        async def body(client):
            lease = client.lease(10)
            with self.assertRaises(InvalidArgument):
                await client.put(b"k", b"v", lease=lease)
            return lease.id

        self.assertIsNone(self.run_client(body))


class OperationTests(SynchronousTestCase):
    """The grant operation: a write without a session, to the leader."""

    def test_grant_operation(self) -> None:
        """Grant is a sessionless write on the Lease service."""
        operation = lease_grant_operation(10, 3)
        self.assertEqual((operation.service, operation.rpc, operation.write, operation.session, operation.leader),
                         ("lease", "Grant", True, False, True))
        self.assertEqual(operation.request, lease_pb2.LeaseGrantRequest(ttl=10, id=3))
        self.assertIsInstance(kv_pb2.PutRequest(lease=3).lease, int)
