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
from kvpaxos.api.errors import error_details
from kvpaxos.client.stream import BlockingMultiplexer, Multiplexer, broken
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.v1 import kv_pb2
from tests.test_api import BOUND_S, RunningServer


class MultiplexerTests(RunningServer, SynchronousTestCase):
    """Many coroutines' requests share one stream; each gets its own answer."""

    def run_client(self, body):
        """Run C{body(multiplexer)} in an event loop of its own thread, pumping the reactor meanwhile."""
        outcome = {}
        done = threading.Event()

        async def main():
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
            mux = Multiplexer(channel)
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
        A request waiting when the stream is closed fails CANCELLED; the
        next request opens a new stream, and nothing of the old one is sent
        again.
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
            self.node.answer = None
            again = await mux.request("put", kv_pb2.PutRequest(key=b"b", value=b"2"), BOUND_S)
            return code, again

        (code, again), _ = self.run_client(body)
        self.assertEqual(code, grpc.StatusCode.CANCELLED)
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
        """A request that times out fails DEADLINE_EXCEEDED; the member was given no longer to wait for it."""
        self.node.answer = lambda: defer.Deferred()  # never answers

        def body(mux, i):
            try:
                mux.request("put", kv_pb2.PutRequest(key=b"t", value=b"1"), 0.3)
            except grpc.RpcError as error:
                return error

        (error,), _ = self.run_threads(1, body)
        self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        (submitted,) = [c for c in self.node.calls if c[0] == "submit"]
        self.assertLessEqual(submitted[2], 0.3)  # the member waits no longer than the client
