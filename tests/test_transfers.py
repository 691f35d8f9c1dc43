"""
Tests for the snapshot transfer in chunks between two nodes
(L{kvpaxos.node.transfers}, through L{kvpaxos.node.snapshots.SnapshotPath}):
the sender's window, timeout and abort, the receiver's staging, checks and
install through the core, restart after a dropped link, and a state
larger than the old single-message cap over a real AMP pair.  A task.Clock
for time; pool and writer work runs at once (no threads); no ports.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.transfer import (
    CHUNK_BYTES_MAX,
    MESSAGE_BYTES_MAX,
    SnapshotAbort,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotOffer,
    encode,
)
from kvpaxos.node import transfers
from kvpaxos.node.snapshots import SnapshotPath
from kvpaxos.paxos import InstallSnapshot
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.storage.staging import StagedState
from tests.test_storage import batch, put

CONFIG = Config(frozenset({1, 2, 3}))
SENDER, RECEIVER = 1, 2


def fill(store, count: int, value_bytes: int = 200) -> None:
    """Apply C{count} puts of distinct keys, one slot each."""
    committed = [
        (1 + i, batch(put(b"key%06d" % i, bytes([i % 251]) * value_bytes))) for i in range(count)
    ]
    store.commit(Commit(None, [], None, False, committed))


class SyncIO:
    """Pool and writer work run at once; C{held} holds the writer's instead."""

    def __init__(self):
        self.held = None

    def in_pool(self, call, *args):
        return defer.maybeDeferred(call, *args)

    def on_writer(self, call, *args):
        if self.held is not None:
            d = defer.Deferred()
            self.held.append((d, call, args))
            return d
        return defer.maybeDeferred(call, *args)

    def release(self):
        held, self.held = self.held, None
        for d, call, args in held:
            defer.maybeDeferred(call, *args).chainDeferred(d)


class FakeReplica:
    """What the path asks of the core: labels, and whether it would install."""

    def __init__(self, node_id):
        self.id = node_id
        self.wanted = True
        self.stepped = []
        #: Whether a stepped InstallSnapshot is taken (the core installs it).
        self.takes = True
        self.chosen_index = 0
        self.snapshot = Snapshot(0, Config(frozenset()))

    def step(self, message):
        self.stepped.append(message)
        if self.takes and type(message) is InstallSnapshot:
            self.snapshot = Snapshot(message.snapshot.index, message.snapshot.config)
            self.chosen_index = message.snapshot.index

    def snapshot_message(self, peer, index, data):
        return InstallSnapshot(self.id, peer, Snapshot(index, CONFIG, data))

    def would_install(self, message):
        return self.wanted


class Link:
    """Both directions of one link: messages queue until delivered (or dropped)."""

    def __init__(self):
        self.queue = []
        self.paths = {}
        self.sent = []
        self.up = True

    def transport(self, node_id):
        link = self

        class Peers:
            def send_stream(self, message):
                assert message.src == node_id
                link.sent.append(message)
                if link.up:
                    link.queue.append(message)

        return Peers()

    def deliver(self, limit=None, drop=None):
        """Deliver what is queued (and what that sends): C{limit} messages, or until quiet."""
        for _ in range(10_000 if limit is None else limit):
            if not self.queue:
                return
            message = self.queue.pop(0)
            if drop is not None and drop(message):
                continue
            self.paths[message.dst].received(message)
        if limit is None:
            raise AssertionError("the link never went quiet")


class TransferFixture:
    """A sender (node 1) and a receiver (node 2) over one L{Link}."""

    def make_store(self, config):
        return MemoryStore(config)

    def setUp(self):
        self.clock = Clock()
        self.link = Link()
        self.source = self.make_store(CONFIG)
        self.target = self.make_store(Config(frozenset()))
        self.replicas = {SENDER: FakeReplica(SENDER), RECEIVER: FakeReplica(RECEIVER)}
        self.io = SyncIO()
        self.paths = {}
        for node_id, store in ((SENDER, self.source), (RECEIVER, self.target)):
            replica = self.replicas[node_id]
            path = SnapshotPath(
                replica, store, lambda node_id=node_id: self.link.transport(node_id),
                self.clock, lambda call, *args: call(*args), replica.step,
                lambda: False, node_id=node_id, io=self.io,
            )
            self.paths[node_id] = self.link.paths[node_id] = path
        self.sender = self.paths[SENDER].sender
        self.receiver = self.paths[RECEIVER].receiver

    def sent(self, kind):
        return [m for m in self.link.sent if type(m) is kind]

    def install(self):
        """Perform the install the core was stepped (the Ready's commit)."""
        (message,) = self.replicas[RECEIVER].stepped
        self.assertIsInstance(message.snapshot.data, StagedState)
        self.target.commit(Commit(None, [], message.snapshot, True, []))
        return message


class TransferTests(TransferFixture, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.patch(transfers, "CHUNK_BYTES", 2_000)
        fill(self.source, 200)
        self.sender.chunk_bytes = 2_000

    def test_transfer_installs_the_state(self):
        """Offer, chunks, acks and done: the receiver installs the sender's state through the core."""
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        message = self.install()
        self.assertEqual(message, InstallSnapshot(SENDER, RECEIVER, message.snapshot))
        self.assertEqual(message.snapshot.index, 200)
        self.assertEqual(self.target.snapshot_data(), self.source.snapshot_data())
        chunks = self.sent(SnapshotChunk)
        self.assertGreater(len(chunks), 10)
        self.assertEqual(len(self.sent(SnapshotAck)), len(chunks))
        self.assertEqual(self.sent(SnapshotDone)[0].count, len(chunks))
        self.assertEqual(self.sent(SnapshotAbort), [])
        self.assertEqual(self.sender.transfers, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_install_not_taken_is_dropped(self):
        """
        A finished transfer the core does not take when stepped (its
        catch-up expired in the ticks counted first) is discarded: the next
        offer is staged, not refused as waiting for that install.
        """
        self.replicas[RECEIVER].takes = False
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.assertEqual(len(self.replicas[RECEIVER].stepped), 1)
        self.assertEqual(self.receiver.installed, 0)
        self.assertFalse(self.target.staging.complete)
        self.replicas[RECEIVER].takes = True
        self.clock.advance(10)
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.assertEqual([m.reason for m in self.sent(SnapshotAbort)], [])
        self.assertEqual(self.receiver.installed, 1)
        del self.replicas[RECEIVER].stepped[0]  # the one not taken
        self.install()
        self.assertEqual(self.target.snapshot_data(), self.source.snapshot_data())

    def test_one_transfer_per_peer(self):
        """A peer that asks again while a transfer is under way gets no second one."""
        self.paths[SENDER].send(RECEIVER)
        self.paths[SENDER].send(RECEIVER)
        self.assertEqual(len(self.sent(SnapshotOffer)), 1)

    def test_window_bounds_unacknowledged_chunks(self):
        """At most the window's chunks are sent before an ack; each ack lets one more go."""
        self.paths[SENDER].send(RECEIVER)
        self.assertEqual(len(self.sent(SnapshotChunk)), transfers.WINDOW_CHUNKS)
        self.io.held = []
        self.link.deliver()  # offer and chunks reach the receiver; staging waits
        self.assertEqual(len(self.sent(SnapshotChunk)), transfers.WINDOW_CHUNKS)
        self.assertEqual(self.sent(SnapshotAck), [])
        self.io.release()  # staged: acked
        self.assertEqual(len(self.sent(SnapshotAck)), transfers.WINDOW_CHUNKS)
        self.link.deliver()
        self.install()
        self.assertEqual(self.target.snapshot_data(), self.source.snapshot_data())

    def test_timeout_aborts_and_closes(self):
        """A transfer whose acks stop is aborted after the timeout and its stream closed."""
        self.paths[SENDER].send(RECEIVER)
        out = self.sender.transfers[RECEIVER]
        stream = out.stream
        self.assertFalse(stream.closed)
        self.clock.advance(transfers.TIMEOUT_S)
        self.assertTrue(stream.closed)
        self.assertEqual(self.sender.transfers, {})
        self.assertEqual([m.reason for m in self.sent(SnapshotAbort)], ["timed out"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_after_dropped_link(self):
        """A link dropped mid-transfer: both sides time out, and the next request transfers anew."""
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver(limit=6)
        self.link.up = False  # the connection drops: what is in flight is lost
        self.link.queue.clear()
        self.clock.advance(transfers.TIMEOUT_S)
        self.assertEqual(self.sender.transfers, {})
        self.assertIsNone(self.receiver.incoming)
        self.assertEqual(self.replicas[RECEIVER].stepped, [])
        self.link.up = True
        self.paths[SENDER].send(RECEIVER)  # the peer's catch-up retry
        self.link.deliver()
        offers = self.sent(SnapshotOffer)
        self.assertEqual(len(offers), 2)
        self.assertNotEqual(offers[0].transfer, offers[1].transfer)
        self.install()
        self.assertEqual(self.target.snapshot_data(), self.source.snapshot_data())

    def test_corrupt_chunk_refuses_the_transfer(self):
        """A chunk that does not decode: the receiver aborts, nothing is stepped, the state stays."""
        fill(self.target, 3)
        before = self.target.snapshot_data()
        self.paths[SENDER].send(RECEIVER)

        def corrupt(message):
            if type(message) is SnapshotChunk and message.seq == 2:
                bad = SnapshotChunk(message.src, message.dst, message.transfer, 2,
                                    message.records[:-3])
                self.paths[RECEIVER].received(bad)
                return True
            return False

        self.link.deliver(drop=corrupt)
        self.assertEqual(self.replicas[RECEIVER].stepped, [])
        (abort,) = self.sent(SnapshotAbort)
        self.assertEqual(abort.src, RECEIVER)
        self.assertIn("refused", abort.reason)
        self.assertEqual(self.sender.transfers, {})
        self.assertEqual(self.target.snapshot_data(), before)
        self.assertFalse(self.target.staging.complete)

    def test_done_that_does_not_add_up(self):
        """A done whose digest differs from the chunks received installs nothing."""
        self.paths[SENDER].send(RECEIVER)

        def tamper(message):
            if type(message) is SnapshotDone:
                self.paths[RECEIVER].received(SnapshotDone(
                    message.src, message.dst, message.transfer, message.count, b"\0" * 16))
                return True
            return False

        self.link.deliver(drop=tamper)
        self.assertEqual(self.replicas[RECEIVER].stepped, [])
        self.assertEqual(len(self.sent(SnapshotAbort)), 1)

    def test_offer_not_wanted(self):
        """An offer the core would not install is refused; the sender closes its stream."""
        self.replicas[RECEIVER].wanted = False
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.assertEqual([m.reason for m in self.sent(SnapshotAbort)], ["not wanted"])
        self.assertEqual(self.sender.transfers, {})
        self.assertEqual(self.replicas[RECEIVER].stepped, [])

    def test_new_offer_discards_stale_staging(self):
        """A new offer mid-transfer discards what the old one staged and installs the new one."""
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver(limit=6)
        self.link.queue.clear()
        first = self.sender.transfers[RECEIVER]
        self.sender._end(first, None)  # the sender restarted, say
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.install()
        self.assertEqual(self.target.snapshot_data(), self.source.snapshot_data())

    def test_busy_until_installed(self):
        """While a finished transfer waits for its install, a new offer is refused."""
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.paths[SENDER].send(RECEIVER)
        self.link.deliver()
        self.assertEqual([m.reason for m in self.sent(SnapshotAbort)], ["busy installing"])
        self.install()
        self.assertFalse(self.target.staging.complete)

    def test_stop_closes_streams(self):
        """A stop ends the transfers and fires once their streams are closed."""
        self.paths[SENDER].send(RECEIVER)
        stream = self.sender.transfers[RECEIVER].stream
        self.successResultOf(self.paths[SENDER].sent())
        self.assertTrue(stream.closed)


class LMDBTransferTests(TransferTests):
    """The same, between two LMDB stores."""

    def make_store(self, config):
        store = LMDBStore(self.mktemp(), config, map_bytes=1 << 20)
        self.addCleanup(store.close)
        return store


class LargeStateOverAMPTests(SynchronousTestCase):
    """A state larger than the old one-message cap moves over a real AMP pair."""

    def test_state_over_the_old_cap(self):
        """
        With the old cap lowered to 256 KiB (half of a connection's buffer), a 1.2 MiB state still transfers:
        in more than one chunk, no AMP value over the chunk cap, never more
        than the window unacknowledged; the old one-message path is refused.
        """
        from twisted.test import iosim

        from kvpaxos.encoding.messages import encode as encode_message
        from kvpaxos.node import peer_protocol
        from tests.test_peers import RecordingNode, listener, opener

        self.patch(peer_protocol, "PEER_BUFFER_BYTES", 512 << 10)
        clock = Clock()
        source = LMDBStore(self.mktemp(), CONFIG, map_bytes=8 << 20)
        target = LMDBStore(self.mktemp(), Config(frozenset()), map_bytes=8 << 20)
        self.addCleanup(source.close)
        self.addCleanup(target.close)
        fill(source, 600, value_bytes=2_000)
        whole = source.snapshot_data()
        self.assertGreater(len(whole), 1 << 20)

        handlers = {SENDER: RecordingNode(), RECEIVER: RecordingNode()}
        client, server, pump = iosim.connectedServerAndClient(
            lambda: listener(handlers[RECEIVER], clock),
            lambda: opener(handlers[SENDER], clock),
        )
        values = []
        real = client.callRemote
        client.callRemote = lambda c, **kw: (values.append(len(kw.get("data", b""))), real(c, **kw))[1]
        protocols = {SENDER: client, RECEIVER: server}
        replicas = {SENDER: FakeReplica(SENDER), RECEIVER: FakeReplica(RECEIVER)}
        io = SyncIO()
        paths = {}
        peak = []

        for node_id, store in ((SENDER, source), (RECEIVER, target)):
            class Peers:
                def send_stream(self, message, node_id=node_id):
                    if node_id == SENDER:
                        out = paths[SENDER].sender.transfers.get(RECEIVER)
                        if out is not None:
                            peak.append(out.sent - out.acked)
                    protocols[node_id].send_message(encode(message), stream=True)

            peers = Peers()
            replica = replicas[node_id]
            paths[node_id] = SnapshotPath(
                replica, store, lambda peers=peers: peers, clock,
                lambda call, *args: call(*args), replica.step,
                lambda: False, node_id=node_id, io=io,
            )
            handlers[node_id].snapshot_stream_received = paths[node_id].received

        paths[SENDER].send(RECEIVER)
        pump.flush()
        (message,) = replicas[RECEIVER].stepped
        target.commit(Commit(None, [], message.snapshot, True, []))
        self.assertEqual(target.snapshot_data(), whole)
        self.assertGreater(len(values), len(whole) // CHUNK_BYTES_MAX)
        self.assertLessEqual(max(values), MESSAGE_BYTES_MAX)
        self.assertLess(MESSAGE_BYTES_MAX, 65_535)
        self.assertLessEqual(max(peak), transfers.WINDOW_CHUNKS)

        # The whole state in one message is over the (lowered) cap: the
        # receiving side cuts the link rather than hold it.
        client.send_message(encode_message(InstallSnapshot(SENDER, RECEIVER, Snapshot(9, CONFIG, whole))))
        pump.flush()
        self.assertTrue(server._dropped)
        self.assertEqual(handlers[RECEIVER].messages, [])
