"""
Tests for L{kvpaxos.client.stream.Multiplexer} and L{BlockingMultiplexer}:
concurrent requests over one C{KV.Stream} to a real grpc.aio server (on 127.0.0.1, an ephemeral port) in
front of the fake node of L{tests.test_api}.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.api.endpoints import CHANNEL_OPTIONS
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.api.errors import error_details
from kvpaxos.client.stream import BlockingMultiplexer, Multiplexer, broken
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.v1 import kv_pb2
from tests.test_api import BOUND_S, RunningServer


class _AioClient(RunningServer):
    """A real server, and a L{Multiplexer} to it in an event loop of its own thread."""

    def run_client(self, body):
        """Run C{body(multiplexer)} in an event loop of its own thread, pumping the reactor meanwhile."""
        outcome = {}
        done = threading.Event()

        async def main():
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
            mux = Multiplexer(channel)
            self.aio_channel = channel
            try:
                return await body(mux), mux
            finally:
                await mux.close()
                await channel.close()

        def thread():
            try:
                outcome["value"] = asyncio.run(main())
            except BaseException as error:  # reported below, in the test's thread
                outcome["error"] = error
            finally:
                done.set()
                self.reactor.wake()

        threading.Thread(target=thread, daemon=True).start()
        self.reactor.pump_until(done.is_set)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


class MultiplexerTests(_AioClient, SynchronousTestCase):
    """Many coroutines' requests share one stream; each gets its own answer."""

    def test_concurrent_puts_share_messages(self):
        """64 concurrent puts are each answered, in fewer request messages than requests."""
        async def body(mux):
            put = mux.caller("put")
            return await asyncio.gather(*(
                put(kv_pb2.PutRequest(key=b"k%d" % i, value=b"v"), timeout=BOUND_S) for i in range(64)
            ))

        answers, mux = self.run_client(body)
        self.assertEqual(len(answers), 64)
        self.assertEqual(len({a.header.revision for a in answers}), 64)  # 64 distinct writes
        self.assertEqual(mux.requests, 64)
        self.assertLess(mux.messages, 64)
        self.assertEqual(sorted(self.node.state.get(b"k%d" % i).value for i in range(64)), [b"v"] * 64)

    def test_error_is_the_unary_error(self):
        """A request's failure is raised as the unary RPC's error: its code and ErrorInfo."""
        self.node.answer = lambda: defer.fail(NotLeaderError(2))

        async def body(mux):
            try:
                await mux.request("put", kv_pb2.PutRequest(key=b"k", value=b"v"), BOUND_S)
            except grpc.aio.AioRpcError as error:
                return error
            return None

        error, _ = self.run_client(body)
        self.assertIsNotNone(error)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        details = error_details(error)
        self.assertEqual(details.reason, errors.NOT_LEADER)

    def test_close_then_reopen(self):
        """
        A request waiting when the stream is closed fails CANCELLED, and a
        later one is refused; a new multiplexer opens a new stream, and
        nothing of the old one is sent again.
        """
        hung = []

        def hang() -> defer.Deferred:
            d = defer.Deferred()
            hung.append(d)
            return d

        self.node.answer = hang

        async def body(mux):
            waiting = asyncio.ensure_future(
                mux.request("put", kv_pb2.PutRequest(key=b"a", value=b"1"), BOUND_S))
            while not self.node.calls:
                await asyncio.sleep(0.01)
            await mux.close()
            try:
                await waiting
            except grpc.aio.AioRpcError as error:
                code = error.code()
            try:
                await mux.request("put", kv_pb2.PutRequest(key=b"c", value=b"3"), BOUND_S)
            except grpc.aio.AioRpcError as error:
                later = (error.code(), broken(error))
            self.node.answer = None
            fresh = Multiplexer(self.aio_channel)
            try:
                again = await fresh.request("put", kv_pb2.PutRequest(key=b"b", value=b"2"), BOUND_S)
            finally:
                await fresh.close()
            return code, later, again

        (code, later, again), _ = self.run_client(body)
        self.assertEqual(code, grpc.StatusCode.CANCELLED)
        self.assertEqual(later, (grpc.StatusCode.CANCELLED, True))
        self.assertFalse(again.existed)
        self.assertEqual([c[1].key for c in self.node.calls if c[0] == "submit"], [b"a", b"b"])

    def test_unknown_kind(self):
        """Asking for a kind the stream does not carry is the caller's error."""
        channel = grpc.insecure_channel("127.0.0.1:1")
        self.addCleanup(channel.close)
        self.assertRaises(ValueError, Multiplexer(channel).caller, "status")


class BlockingMultiplexerTests(RunningServer, SynchronousTestCase):
    """The blocking twin: many threads' requests share one stream; each gets its own answer."""

    def run_threads(self, count: int, body):
        """Run C{body(multiplexer, i)} in C{count} threads at once, pumping the reactor; return the results."""
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        mux = BlockingMultiplexer(channel)
        self.addCleanup(mux.close)
        results: dict = {}
        left = threading.Semaphore(0)

        def thread(i: int) -> None:
            try:
                results[i] = body(mux, i)
            except BaseException as error:  # reported below, in the test's thread
                results[i] = error
            finally:
                left.release()
                self.reactor.wake()

        for i in range(count):
            threading.Thread(target=thread, args=(i,), daemon=True).start()
        finished = []
        self.reactor.pump_until(lambda: finished.append(left.acquire(blocking=False)) or finished.count(True) == count)
        return [results[i] for i in range(count)], mux

    def test_concurrent_puts_share_messages(self):
        """32 threads' puts are each answered once, in fewer request messages than requests."""
        answers, mux = self.run_threads(32, lambda mux, i: mux.request(
            "put", kv_pb2.PutRequest(key=b"k%d" % i, value=b"v"), BOUND_S))
        self.assertEqual([type(a) for a in answers], [kv_pb2.PutResponse] * 32)
        self.assertEqual(len({a.header.revision for a in answers}), 32)
        self.assertEqual(mux.requests, 32)
        self.assertLessEqual(mux.messages, 32)
        self.assertEqual(sorted(self.node.state.get(b"k%d" % i).value for i in range(32)), [b"v"] * 32)

    def test_error_is_the_unary_error(self):
        """A request's failure is raised as a grpc.RpcError with the unary RPC's code and ErrorInfo."""
        self.node.answer = lambda: defer.fail(NotLeaderError(2))

        def body(mux, i):
            try:
                mux.request("get", kv_pb2.GetRequest(key=b"k"), BOUND_S)
            except grpc.RpcError as error:
                return error

        (error,), _ = self.run_threads(1, body)
        self.assertIsInstance(error, grpc.RpcError)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(error_details(error).reason, errors.NOT_LEADER)
        self.assertFalse(broken(error))

    def test_close_fails_waiting_then_reopens(self):
        """
        A request waiting when the stream is closed fails CANCELLED, marked
        broken; a new multiplexer's stream then serves, and the first put
        is not sent again.
        """
        hung = []

        def hang() -> defer.Deferred:
            d = defer.Deferred()
            hung.append(d)
            return d

        self.node.answer = hang

        def body(mux, i):
            if i == 0:
                try:
                    mux.request("put", kv_pb2.PutRequest(key=b"a", value=b"1"), BOUND_S)
                except grpc.RpcError as error:
                    return error
            while not self.node.calls:
                threading.Event().wait(0.01)
            mux.close()
            return None

        (error, _), _ = self.run_threads(2, body)
        self.assertEqual(error.code(), grpc.StatusCode.CANCELLED)
        self.assertTrue(broken(error))
        self.node.answer = None
        (again,), _ = self.run_threads(1, lambda mux, i: mux.request(
            "put", kv_pb2.PutRequest(key=b"b", value=b"2"), BOUND_S))
        self.assertFalse(again.existed)
        self.assertEqual([c[1].key for c in self.node.calls if c[0] == "submit"], [b"a", b"b"])

    def test_timeout(self):
        """
        A request nobody answers fails once its timeout is up: the
        client's own DEADLINE_EXCEEDED or the member's UNAVAILABLE,
        whichever of the two clocks, both counting the same timeout,
        fires first; the member was given no longer to wait than that.
        """
        self.node.answer = lambda: defer.Deferred()  # never answers

        def body(mux, i):
            try:
                mux.request("put", kv_pb2.PutRequest(key=b"t", value=b"1"), 0.3)
            except grpc.RpcError as error:
                return error

        (error,), _ = self.run_threads(1, body)
        self.assertIn(error.code(), (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE))
        self.assertFalse(broken(error))
        (submitted,) = [c for c in self.node.calls if c[0] == "submit"]
        self.assertLessEqual(submitted[2], 0.3)  # the member waits no longer than the client


class LargeRequestsTests(_AioClient, SynchronousTestCase):
    """Requests that queue up together go in as many messages as keep each under the message limit."""

    def test_large_requests_queued_together(self):
        """Six concurrent 900 KiB puts (more than one message holds) are each answered."""
        value = b"x" * (900 << 10)

        async def body(mux):
            return await asyncio.gather(*(
                mux.request("put", kv_pb2.PutRequest(key=b"big%d" % i, value=value), BOUND_S) for i in range(6)))

        answers, mux = self.run_client(body)
        self.assertEqual(len({a.header.revision for a in answers}), 6)
        self.assertGreaterEqual(mux.messages, 2)
        self.assertEqual([len(self.node.state.get(b"big%d" % i).value) for i in range(6)], [len(value)] * 6)

    def test_request_too_large_for_a_message(self):
        """A request no message could carry is refused alone, before anything is sent; the stream serves on."""
        async def body(mux):
            try:
                await mux.request("put", kv_pb2.PutRequest(key=b"huge", value=b"x" * MAX_MESSAGE_BYTES), BOUND_S)
            except grpc.aio.AioRpcError as error:
                refused = (error.code(), broken(error))
            return refused, await mux.request("put", kv_pb2.PutRequest(key=b"k", value=b"v"), BOUND_S)

        (refused, after), mux = self.run_client(body)
        self.assertEqual(refused, (grpc.StatusCode.RESOURCE_EXHAUSTED, False))
        self.assertFalse(after.existed)
        self.assertEqual([c[1].key for c in self.node.calls if c[0] == "submit"], [b"k"])


class _SilentCall:
    """A stream call that never takes a request nor answers (what is queued stays queued)."""

    def __init__(self, requests) -> None:
        self.cancelled = False
        self.requests = requests
        self._cancel = asyncio.Event()

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self._cancel.wait()  # nothing ever comes
        raise asyncio.CancelledError()

    def cancel(self) -> None:
        self.cancelled = True
        self._cancel.set()


class QueueTests(SynchronousTestCase):
    """What a multiplexer does with requests given up on, and with the time left it stamps (no network)."""

    def test_cancelled_request_is_never_sent(self):
        """A request whose caller is cancelled before it was sent is taken out of the queue."""
        async def main():
            mux = Multiplexer(grpc.aio.insecure_channel("127.0.0.1:1"))
            mux._stub = type("Stub", (), {"Stream": staticmethod(_SilentCall)})()
            task = asyncio.ensure_future(mux.request("put", kv_pb2.PutRequest(key=b"k", value=b"v"), 5.0))
            await asyncio.sleep(0)  # queued, not sent: nothing takes it
            stream = mux._stream
            queued_before = len(stream.queued)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            left = (len(stream.queued), len(stream.pending))
            await mux.close()
            return queued_before, left, stream.call.cancelled

        self.assertEqual(asyncio.run(main()), (1, (0, 0), True))

    def test_time_left_stamped_when_sent(self):
        """Each request carries the time left at sending, not the timeout it was given when queued."""
        from kvpaxos.client.stream import _messages, _queued

        queued = _queued(1, "get", kv_pb2.GetRequest(key=b"k"), 10.0, now=100.0)
        untimed = _queued(2, "get", kv_pb2.GetRequest(key=b"k"), None, now=100.0)
        (message,) = _messages([queued, untimed], now=107.5)
        self.assertEqual(message.requests[0].timeout.ToNanoseconds(), 2_500_000_000)
        self.assertFalse(message.requests[1].HasField("timeout"))
        (late,) = _messages([_queued(3, "get", kv_pb2.GetRequest(key=b"k"), 1.0, now=100.0)], now=105.0)
        self.assertEqual(late.requests[0].timeout.ToNanoseconds(), 0)

    def test_unreadable_error_answer(self):
        """An error answer that does not parse is that request's INTERNAL error, not a broken stream."""
        from kvpaxos.client.stream import _error_of

        error = _error_of(b"\xff\xff not a status")
        self.assertEqual(error.code(), grpc.StatusCode.INTERNAL)
        self.assertFalse(broken(error))

    def test_broken_stream_read_as_unavailable(self):
        """The retry policy reads any broken stream as UNAVAILABLE (outcome unknown), naming what ended it."""
        from kvpaxos.client.stream import _broken_error, as_unavailable

        error = as_unavailable(_broken_error(grpc.StatusCode.INTERNAL, "RST_STREAM"))
        self.assertEqual((error.code(), broken(error)), (grpc.StatusCode.UNAVAILABLE, True))
        self.assertIn("INTERNAL: RST_STREAM", error.details())
