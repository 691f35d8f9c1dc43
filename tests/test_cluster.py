"""
Integration tests with real processes: three twistd kvpaxos nodes on
127.0.0.1 with ephemeral ports (L{kvpaxos.testing.processes}).  Every test
stops every process it started and bounds every wait.
"""

import io
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.client.cli import main as cli_main
from kvpaxos.cluster import plugin_environment
from kvpaxos.testing.processes import ROOT, ProcessCluster, free_port
from kvpaxos.v1 import kv_pb2

TIMEOUT_S = 5.0


class ClusterTestCase(SynchronousTestCase):
    """Starts a three-node cluster for each test and stops it afterwards."""

    storage = "lmdb"
    settings: dict = {}

    def setUp(self):
        self.cluster = ProcessCluster(
            self.mktemp(), size=3, storage=self.storage, settings=self.settings
        )
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.leader = self.cluster.wait_for_leader(timeout_s=20)

    def put(self, node_id, key: bytes, value: bytes, timeout_s=TIMEOUT_S):
        return self.cluster.nodes[node_id].kv().Put(
            kv_pb2.PutRequest(key=key, value=value), timeout=timeout_s
        )

    def get(self, node_id, key: bytes, timeout_s=TIMEOUT_S):
        response = self.cluster.nodes[node_id].kv().Get(
            kv_pb2.GetRequest(key=key), timeout=timeout_s
        )
        return response.value if response.found else None

    def followers(self):
        return [i for i in self.cluster.nodes if i != self.leader]

    def kill_write_restart(self, follower, writes: dict) -> None:
        """
        Kill C{follower} with -9, put C{writes} through the leader, restart
        it and wait until it has applied all the leader knows chosen.
        """
        self.cluster.kill(follower, signal.SIGKILL)
        for key, value in writes.items():
            self.put(self.leader, key, value)
        self.cluster.start(follower)
        leader_status = self.cluster.nodes[self.leader].status()
        self.cluster.wait_for(
            lambda: self.cluster.nodes[follower].status().applied_index
            >= leader_status.chosen_index,
            20, "the restarted follower to catch up",
        )


class ClientTests(ClusterTestCase):
    """Every node serves every request, through gRPC and through the CLI."""

    def test_grpc_through_every_node(self):
        """Put, append, get and delete work through each of the three nodes."""
        for node_id in self.cluster.nodes:
            key = f"key-{node_id}".encode()
            self.put(node_id, key, b"a")
            response = self.cluster.nodes[node_id].kv().Append(
                kv_pb2.AppendRequest(key=key, value=b"b"), timeout=TIMEOUT_S
            )
            self.assertEqual(response.value, b"ab")
            for reader in self.cluster.nodes:
                self.assertEqual(self.get(reader, key), b"ab")
            deleted = self.cluster.nodes[node_id].kv().Delete(
                kv_pb2.DeleteRequest(key=key), timeout=TIMEOUT_S
            )
            self.assertTrue(deleted.deleted)
            self.assertIsNone(self.get(node_id, key))

    def cli(self, *argv):
        out, err = io.BytesIO(), io.BytesIO()
        status = cli_main(list(argv), stdout=out, stderr=err)
        return status, out.getvalue().decode()

    def test_cli(self):
        """The CLI puts, appends, gets, deletes and reports status, in both flag styles."""
        endpoints = ",".join(n.endpoint for n in self.cluster.nodes.values())
        self.assertEqual(self.cli("--endpoints", endpoints, "put", "colour", "blue")[0], 0)
        self.assertEqual(self.cli("--endpoints", endpoints, "append", "colour", "!")[0], 0)
        status, out = self.cli("--endpoints", endpoints, "get", "colour")
        self.assertEqual((status, out), (0, "blue!\n"))
        status, out = self.cli(
            f"--endpoints={endpoints}", "--action=get", "--key=colour"
        )
        self.assertEqual((status, out), (0, "blue!\n"))
        status, out = self.cli("--endpoints", endpoints, "--json", "status")
        self.assertEqual(status, 0)
        members = json.loads(out)["members"]
        self.assertEqual(len(members), 3)
        self.assertEqual({m["leader_id"] for m in members}, {self.leader})
        self.assertEqual(self.cli("--endpoints", endpoints, "delete", "colour")[0], 0)
        self.assertEqual(self.cli("--endpoints", endpoints, "get", "colour")[0], 1)

    def test_console_script(self):
        """The installed kvpaxos console script talks to the cluster."""
        node = self.cluster.nodes[self.followers()[0]]
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", node.endpoint, "put", "k", "v"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.get(self.leader, b"k"), b"v")


class FaultTests(ClusterTestCase):
    """Crashes and restarts lose nothing that was acknowledged."""

    def write_while(self, node_ids, stop: threading.Event, acked: dict, errors: list):
        """Write k0, k1, ... round-robin through node_ids until stopped."""
        n = 0
        while not stop.is_set():
            key = f"w{n}".encode()
            node_id = node_ids[n % len(node_ids)]
            try:
                self.put(node_id, key, key, timeout_s=2)
            except grpc.RpcError as error:
                errors.append(error.code())
            else:
                acked[key] = key
            n += 1

    def test_kill_leader_while_writing(self):
        """After kill -9 of the leader, a new leader serves within seconds and keeps every acknowledged write."""
        stop = threading.Event()
        acked, errors = {}, []
        writer = threading.Thread(
            target=self.write_while, args=(self.followers(), stop, acked, errors)
        )
        writer.start()
        try:
            self.cluster.wait_for(lambda: len(acked) >= 20, 20, "writes before the kill")
            killed_at = time.monotonic()
            self.cluster.kill(self.leader, signal.SIGKILL)
            count = len(acked)
            self.cluster.wait_for(lambda: len(acked) >= count + 20, 20, "writes after the kill")
            recovery_s = time.monotonic() - killed_at
        finally:
            stop.set()
            writer.join(30)
        survivors = self.followers()
        new_leader = self.cluster.wait_for_leader(among=survivors)
        self.assertIn(new_leader, survivors)
        self.assertLess(recovery_s, 10.0)
        for key, value in acked.items():
            self.assertEqual(self.get(survivors[0], key), value)

    def test_follower_catches_up(self):
        """A follower killed with -9 and restarted catches up with what was written meanwhile."""
        follower = self.followers()[0]
        self.kill_write_restart(follower, {f"c{n}".encode(): b"x" for n in range(50)})
        self.assertEqual(self.get(follower, b"c49"), b"x")

    def test_full_restart_keeps_data(self):
        """Stopping all three nodes and starting them again keeps every acknowledged write."""
        written = {f"r{n}".encode(): f"v{n}".encode() for n in range(30)}
        for n, (key, value) in enumerate(written.items()):
            self.put(1 + n % 3, key, value)
        for node_id in self.cluster.nodes:
            self.cluster.kill(node_id, signal.SIGTERM)
        self.cluster.start()
        self.cluster.wait_for_leader(timeout_s=20)
        for key, value in written.items():
            self.assertEqual(self.get(2, key), value)

    def test_sigterm_with_request_pending(self):
        """SIGTERM ends a node promptly even while a request waits for a quorum it cannot get."""
        lonely = self.followers()[0]
        for node_id in self.cluster.nodes:
            if node_id != lonely:
                self.cluster.kill(node_id, signal.SIGKILL)
        future = self.cluster.nodes[lonely].kv().Put.future(
            kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=30
        )
        time.sleep(0.5)  # let the request reach the node (real process; bounded)
        process = self.cluster.nodes[lonely].process
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        self.assertLess(time.monotonic() - started, 10)
        self.assertRaises(grpc.RpcError, future.result, 5)


class ExactlyOnceTests(ClusterTestCase):
    """A write carried by a session is applied once, however it is repeated."""

    def test_duplicate_across_leader_change(self):
        """
        The same (client_id, sequence) append sent through a follower, then
        again through the other follower after the leader is killed, is
        applied once and both sends get the same answer.
        """
        first, second = self.followers()
        opened = self.cluster.nodes[first].kv().OpenSession(
            kv_pb2.OpenSessionRequest(), timeout=TIMEOUT_S
        )
        request = kv_pb2.AppendRequest(
            key=b"once", value=b"<x>", client_id=opened.client_id, sequence=1
        )
        answer = self.cluster.nodes[first].kv().Append(request, timeout=TIMEOUT_S)
        self.cluster.kill(self.leader, signal.SIGKILL)
        self.cluster.wait_for_leader(timeout_s=20, among=[first, second])
        again = self.cluster.wait_for(
            lambda: self.cluster.nodes[second].kv().Append(request, timeout=TIMEOUT_S),
            20, "the retried append",
        )
        self.assertEqual((again.value, again.existed), (answer.value, answer.existed))
        self.assertEqual(self.get(second, b"once"), b"<x>")

    def test_stale_and_unknown_sessions(self):
        """A lower sequence and an unknown session are refused and change nothing."""
        node = self.cluster.nodes[self.leader].kv()
        opened = node.OpenSession(kv_pb2.OpenSessionRequest(), timeout=TIMEOUT_S)
        node.Put(kv_pb2.PutRequest(key=b"s", value=b"2", client_id=opened.client_id, sequence=2),
                 timeout=TIMEOUT_S)
        for request, words in (
            (kv_pb2.PutRequest(key=b"s", value=b"1", client_id=opened.client_id, sequence=1),
             "stale sequence"),
            (kv_pb2.PutRequest(key=b"s", value=b"9", client_id=opened.client_id + 999, sequence=1),
             "session expired"),
        ):
            with self.assertRaises(grpc.RpcError) as caught:
                node.Put(request, timeout=TIMEOUT_S)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn(words, caught.exception.details())
        self.assertEqual(self.get(self.leader, b"s"), b"2")


class BadInputTests(ClusterTestCase):
    """Bad input gets a clear error; the node keeps serving and loses nothing."""

    def test_grpc_invalid_arguments(self):
        """Empty and oversized keys and oversized values are INVALID_ARGUMENT and change nothing."""
        self.put(self.leader, b"keep", b"me")
        cases = [
            (b"", b"v", "key"),
            (b"k" * 512, b"v", "key"),
            (b"k", b"v" * ((1 << 20) + 1), "value"),
        ]
        for key, value, word in cases:
            with self.assertRaises(grpc.RpcError) as caught:
                self.put(self.followers()[0], key, value)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(word, caught.exception.details())
        self.assertEqual(self.get(self.leader, b"keep"), b"me")
        self.put(self.leader, b"k" * 511, b"v" * (1 << 20))
        self.assertEqual(self.get(self.followers()[1], b"k" * 511), b"v" * (1 << 20))

    def test_garbage_on_amp_ports(self):
        """Garbage bytes, unknown AMP commands and corrupt Paxos messages on the peer and admin ports harm nothing."""
        self.put(self.leader, b"before", b"1")
        victim = self.cluster.nodes[self.followers()[0]]

        def box(pairs):
            data = b""
            for k, v in pairs:
                data += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
            return data + b"\x00\x00"

        payloads = [
            b"\xff" * 4096,
            box([(b"_command", b"NoSuchCommand"), (b"_ask", b"1")]),
            box([(b"_command", b"PaxosMessage"), (b"data", b"\x01\x02garbage")]),
            box([(b"_command", b"Forward"), (b"_ask", b"2"), (b"commands", b"\x00\x05junk!")]),
        ]
        for port in (victim.peer_port, victim.admin_port):
            for payload in payloads:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(payload)
                    s.settimeout(1)
                    try:
                        s.recv(4096)
                    except (socket.timeout, ConnectionError):
                        pass
        self.assertIsNone(victim.process.poll())
        self.put(victim.id, b"after", b"2")
        self.assertEqual(self.get(victim.id, b"before"), b"1")
        self.assertEqual(self.get(self.leader, b"after"), b"2")


class TwistdTests(SynchronousTestCase):
    """twistd finds the plugin; with no arguments it runs a working one-node cluster."""

    def test_help(self):
        """twistd -n kvpaxos --help lists the node's options."""
        done = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "kvpaxos", "--help"],
            capture_output=True, text=True, timeout=60, env=plugin_environment(ROOT),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("--peers", done.stdout)

    def test_plugin_in_wheel(self):
        """
        A non-editable install (pip install .) ships the dropin, so twistd
        lists the plugin from site-packages, outside the checkout.
        """
        import os

        target = os.path.abspath(self.mktemp())
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", target, ROOT],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(os.path.exists(os.path.join(target, "twisted", "plugins", "kvpaxos_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        env = dict(os.environ, PYTHONPATH=target)
        done = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
            capture_output=True, text=True, timeout=60, env=env, cwd=target,
        )
        self.assertIn("kvpaxos", done.stdout)
        self.assertIn(os.path.join(target, "kvpaxos"), subprocess.run(
            [sys.executable, "-c", "import kvpaxos; print(kvpaxos.__file__)"],
            capture_output=True, text=True, timeout=60, env=env, cwd=target,
        ).stdout)

    def test_usage_error(self):
        """A bad flag prints a one-line usage error, not a traceback."""
        done = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "kvpaxos", "--id=zero"],
            capture_output=True, text=True, timeout=60, env=plugin_environment(ROOT),
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("id must be a positive integer", done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)

    def test_no_arguments(self):
        """With no arguments a node serves clients with data in ./kvpaxos-data."""
        import os

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port, peer, admin = free_port(), free_port(), free_port()
        # The defaults' ports may be taken on a shared machine: keep every
        # default but the ports.
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "kvpaxos", f"--client=127.0.0.1:{port}",
             f"--addr=127.0.0.1:{peer}", f"--admin=127.0.0.1:{admin}"],
            cwd=directory, env=plugin_environment(ROOT),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            from kvpaxos.v1 import kv_pb2_grpc

            stub = kv_pb2_grpc.KVStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=2)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            self.assertTrue(stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=5).found)
            self.assertTrue(os.path.isdir(os.path.join(directory, "kvpaxos-data")))
            channel.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class FatalExitTests(SynchronousTestCase):
    """A node that stops on a fatal error exits non-zero, so systemd restarts it."""

    def test_failed_commit_exits_1(self):
        """A node whose store fails a commit exits with status 1 and says why in one line on stderr."""
        import os

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # A real twistd node on the memory store, with its commit made to
        # fail: the node's own fatal path (a failed commit) stops it.
        planted = (
            "import kvpaxos.storage.memory as m\n"
            "def commit(self, *a, **kw):\n"
            "    raise OSError(28, 'planted: no space left on device')\n"
            "m.MemoryStore.commit = commit\n"
            "from twisted.scripts.twistd import run; run()\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", planted, "-n", "--pidfile=", "kvpaxos", "--storage=memory",
             f"--client=127.0.0.1:{free_port()}", f"--addr=127.0.0.1:{free_port()}",
             f"--admin=127.0.0.1:{free_port()}"],
            cwd=directory, env=plugin_environment(ROOT), capture_output=True, text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 1, done.stdout[-3000:] + done.stderr)
        fatal = [line for line in done.stderr.splitlines() if line.startswith("kvpaxos: fatal:")]
        self.assertEqual(len(fatal), 1, done.stderr)
        self.assertIn("no space left on device", fatal[0])


class ClusterTokenTests(SynchronousTestCase):
    """Members refuse a node started with another cluster_token, and it them."""

    def test_other_token_refused(self):
        """Node 3 with another cluster_token gets no link to nodes 1 and 2, who serve without it."""
        cluster = ProcessCluster(self.mktemp(), size=3, node_settings={3: {"cluster_token": "other"}})
        self.addCleanup(cluster.stop)
        cluster.start()
        leader = cluster.wait_for(lambda: cluster.leader(among=[1, 2]), 20, "a leader of 1 and 2")
        outsider = cluster.nodes[3]
        cluster.wait_for(
            lambda: outsider.log().count("refused the link") >= 2
            and "refused a peer link" in outsider.log(),
            20, "node 3 to be refused by, and to refuse, the others",
        )
        for node_id in (1, 2):
            self.assertIn("refused a peer link", cluster.nodes[node_id].log())
        self.assertEqual(outsider.status().leader_id, 0)
        cluster.nodes[leader].kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=TIMEOUT_S)


class SnapshotCatchUpTests(ClusterTestCase):
    """Nodes that compact their log every 10 slots."""

    settings = {"snapshot_interval": 10}

    def test_follower_behind_compaction_catches_up(self):
        """
        A follower killed with -9 while the others compacted past it catches
        up from the state they send, then from the log, over real links.
        """
        follower = self.followers()[0]
        self.kill_write_restart(follower, {f"s{n}".encode(): f"v{n}".encode() for n in range(40)})
        for n in (0, 17, 39):
            self.assertEqual(self.get(follower, f"s{n}".encode()), f"v{n}".encode())
        self.put(follower, b"after", b"1")
        self.assertEqual(self.get(self.leader, b"after"), b"1")


class HarnessTests(SynchronousTestCase):
    """The process harness itself: what its waits may hide."""

    def test_ports_never_repeat(self):
        """free_port hands out no port twice, even when the kernel offers one again."""
        ports = [free_port() for _ in range(300)]
        self.assertEqual(len(set(ports)), len(ports))

    def test_wait_fails_when_a_node_exits(self):
        """
        A node that exits on its own fails the wait at once, with its log,
        rather than leaving the others to elect a leader without it.
        """
        cluster = ProcessCluster(self.mktemp(), size=3, node_settings={1: {"no_such_key": 1}})
        self.addCleanup(cluster.stop)
        cluster.start()
        with self.assertRaises(AssertionError) as raised:
            cluster.wait_for_leader(timeout_s=60)
        # Not "timed out": the wait noticed the exit.
        self.assertIn("nodes exited (node 1: ", str(raised.exception))
        self.assertIn("no_such_key", str(raised.exception))
