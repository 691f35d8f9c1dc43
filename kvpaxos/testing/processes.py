"""
A harness for tests with real processes: a cluster of twistd nodes on
127.0.0.1 with ephemeral ports, in a directory of its own, that can be
killed, restarted and stopped, and talked to over gRPC.

Every wait is bounded; L{ProcessCluster.stop} ends every process the harness
started (by pid, SIGTERM then SIGKILL).  Tests must call it (addCleanup).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

import grpc

from kvpaxos.client import open_channel
from kvpaxos.cluster import plugin_environment, stop_all, twistd_command
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc
from kvpaxos.tls import grpc_channel_credentials

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: Every port L{free_port} has handed out in this process: the kernel may
#: offer a port again as soon as its probe socket closes, before the node it
#: was meant for binds it, and two of a node's addresses on one port stop
#: that node at start.
_handed_out: set[int] = set()
#: Which ports to try: random (not seeded) so that two test processes at
#: once do not walk the same sequence.
_random = random.SystemRandom()


def _below_ephemeral() -> range:
    """
    Ports below the kernel's ephemeral range: the kernel never gives one of
    these to an outgoing connection as its local port, so one found free
    stays free until the node binds it (a port the kernel picked was taken
    by some client's connection in between, now and then: a node then
    failed to start with "Address already in use").
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 2048)
    return range(max(1024, low - 12000), low)


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1, picked at random below the ephemeral
    range, that was free a moment ago and that this process has not handed
    out before.
    """
    ports = _below_ephemeral()
    for _ in range(1000):
        port = _random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {ports.start}-{ports.stop - 1} after 1000 tries")


class LinkProxy:
    """
    A TCP relay for one directed peer link (node i's connections to node j),
    on 127.0.0.1, that the test can cut and mend: a cut closes the open
    connections and refuses new ones, so the two nodes cannot talk while
    both keep running.  Threads are daemons; L{close} ends them.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.enabled = True
        self._sockets: set = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.enabled:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)

    def cut(self) -> None:
        """Drop the link: close its connections and refuse new ones."""
        self.enabled = False
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def mend(self) -> None:
        self.enabled = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class Node:
    """One node of a L{ProcessCluster}."""

    def __init__(self, node_id: int, directory: str, client_tls: Optional[tuple] = None) -> None:
        self.id = node_id
        #: (cacert, cert, key) the harness's own clients use, or None: plaintext.
        self.client_tls = client_tls
        self.directory = directory
        self.peer_port = free_port()
        self.client_port = free_port()
        self.admin_port = free_port()
        self.config_path = os.path.join(directory, f"node{node_id}.toml")
        self.log_path = os.path.join(directory, f"node{node_id}.log")
        self.process: Optional[subprocess.Popen] = None
        #: Started by the harness and not since stopped by it: a node that
        #: exits while this holds exited on its own.
        self.expected = False
        self._channel: Optional[grpc.Channel] = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            credentials = grpc_channel_credentials(*self.client_tls) if self.client_tls else None
            self._channel = open_channel(self.endpoint, credentials)
        return self._channel

    def kv(self) -> kv_pb2_grpc.KVStub:
        return kv_pb2_grpc.KVStub(self.channel())

    def cluster(self) -> kv_pb2_grpc.ClusterStub:
        return kv_pb2_grpc.ClusterStub(self.channel())

    def status(self, timeout_s: float = 1.0):
        return self.cluster().Status(kv_pb2.StatusRequest(), timeout=timeout_s)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class ProcessCluster:
    """
    C{size} twistd kvpaxos nodes on 127.0.0.1 under C{directory}.

    @param storage: the storage provider name for every node.
    @param settings: more TOML keys for every node (C{{"snapshot_interval": 10}}).
    @param node_settings: more TOML keys for some nodes, by node id; they
        override C{settings} (C{{3: {"cluster_token": "other"}}}).
    @param client_tls: C{(cacert, cert, key)} for the harness's own gRPC
        and admin clients of nodes that serve TLS, or None.
    """

    def __init__(
        self, directory: str, size: int = 3, storage: str = "lmdb", proxied: bool = False,
        settings: Optional[dict] = None, node_settings: Optional[dict] = None,
        client_tls: Optional[tuple] = None,
    ) -> None:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.client_tls = client_tls
        self.nodes = {i: Node(i, directory, client_tls) for i in range(1, size + 1)}
        #: With C{proxied}, every directed peer link (i, j) runs through a
        #: L{LinkProxy}, so that tests can partition running nodes.
        self.links: dict[tuple[int, int], LinkProxy] = {}
        if proxied:
            for i in self.nodes:
                for j, other in self.nodes.items():
                    if i != j:
                        self.links[i, j] = LinkProxy(other.peer_port)
        self._env = plugin_environment(ROOT)
        self._storage = storage
        self._settings = dict(settings or {})
        for node in self.nodes.values():
            keys = dict(settings or {}, **(node_settings or {}).get(node.id, {}))
            peers = "\n".join(
                f'{o.id} = "127.0.0.1:{self._peer_port(node.id, o)}"'
                for o in self.nodes.values() if o.id != node.id
            )
            self._write_config(node, keys, peers)

    def add_node(self, node_id: int, join: Optional[list] = None, settings: Optional[dict] = None) -> "Node":
        """
        Make (not start) node C{node_id} for a running cluster (a node
        that exists keeps its addresses, as a replaced disk would): its
        configuration names no peers, and C{join} (by default every other
        node's client address) is what its C{join} key lists.  It learns
        the cluster from those members (issue 11).
        """
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node(node_id, self.directory, self.client_tls)
        # A node made again (a replaced disk) keeps its addresses.
        if join is None:
            join = [o.endpoint for o in self.nodes.values() if o.id != node_id]
        keys = dict(self._settings, **(settings or {}))
        keys["join"] = ",".join(join)
        self._write_config(node, keys, peers="")
        return node

    def _write_config(self, node: "Node", keys: dict, peers: str) -> None:
        with open(node.config_path, "w") as f:
            f.write(
                f"id = {node.id}\n"
                f'addr = "127.0.0.1:{node.peer_port}"\n'
                f'client = "127.0.0.1:{node.client_port}"\n'
                f'admin = "127.0.0.1:{node.admin_port}"\n'
                f'data = "{self.data_directory(node.id)}"\n'
                f'storage = "{self._storage}"\n'
                + "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
                + (f"[peers]\n{peers}\n" if peers else "")
            )

    def data_directory(self, node_id: int) -> str:
        """Where node C{node_id} keeps its data."""
        return os.path.join(self.directory, f"data{node_id}")

    def wipe(self, node_id: int) -> None:
        """Delete a stopped node's data directory (a replaced disk)."""
        node = self.nodes[node_id]
        assert node.process is None or node.process.poll() is not None, "wipe a stopped node"
        shutil.rmtree(self.data_directory(node_id), ignore_errors=True)

    def admin(self, node_id: int, *arguments: str, timeout_s: float = 60.0):
        """
        Run C{kvpaxos --admin <node's admin address> --json ARGUMENTS} (the
        operator's CLI) and return C{(exit status, parsed JSON or None,
        stderr)}.  Bounded by C{timeout_s}.
        """
        node = self.nodes[node_id]
        tls = []
        if self.client_tls is not None:
            cacert, cert, key = self.client_tls
            tls = ["--cacert", cacert] + (["--cert", cert, "--key", key] if cert else [])
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", *tls, "--admin",
             f"127.0.0.1:{node.admin_port}", "--json", *arguments],
            env=self._env, capture_output=True, timeout=timeout_s, cwd=self.directory,
        )
        try:
            parsed = json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            parsed = None
        return done.returncode, parsed, done.stderr.decode("utf-8", "replace")

    def _peer_port(self, src: int, dst: "Node") -> int:
        link = self.links.get((src, dst.id))
        return dst.peer_port if link is None else link.port

    def isolate(self, node_id: int) -> None:
        """Cut every peer link to and from a node (it keeps running)."""
        for (i, j), link in self.links.items():
            if node_id in (i, j):
                link.cut()

    def reconnect(self, node_id: int) -> None:
        """Mend every peer link to and from a node."""
        for (i, j), link in self.links.items():
            if node_id in (i, j):
                link.mend()

    # --- processes -------------------------------------------------------------

    def start(self, node_id: Optional[int] = None, flags: tuple = ()) -> None:
        """Start one node (or all that are not running), with C{flags} after its --config."""
        ids = [node_id] if node_id is not None else sorted(self.nodes)
        for i in ids:
            node = self.nodes[i]
            if node.process is not None and node.process.poll() is None:
                continue
            log = open(node.log_path, "ab")
            node.process = subprocess.Popen(
                twistd_command(node.config_path) + list(flags),
                env=self._env,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            node.expected = True

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send C{sig} to a node and, for SIGKILL/SIGTERM, reap it (bounded)."""
        node = self.nodes[node_id]
        node.close_channel()
        node.expected = False
        if node.process is None or node.process.poll() is not None:
            return
        node.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                node.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=5)

    def stop(self) -> None:
        """End every process this cluster started, and every link proxy."""
        for node in self.nodes.values():
            node.close_channel()
            node.expected = False
        stop_all([n.process for n in self.nodes.values() if n.process is not None], wait_s=10)
        for link in self.links.values():
            link.close()

    def running(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.process is not None and n.process.poll() is None]

    # --- waiting ---------------------------------------------------------------

    def exited(self) -> list[int]:
        """The nodes the harness started that have since exited on their own."""
        return [
            i for i, n in self.nodes.items()
            if n.expected and n.process is not None and n.process.poll() is not None
        ]

    def _logs(self) -> str:
        return "\n".join(f"--- node {n.id}\n{n.log()[-3000:]}" for n in self.nodes.values())

    def wait_for(self, predicate, timeout_s: float, what: str, interval_s: float = 0.05,
                 exits_allowed: bool = False):
        """
        Poll C{predicate} until it returns a true value; fail after
        C{timeout_s}, or at once if a node the harness started exits on its
        own (unless C{exits_allowed}).
        """
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            gone = [] if exits_allowed else self.exited()
            if gone:
                codes = ", ".join(f"node {i}: {self.nodes[i].process.returncode}" for i in gone)
                raise AssertionError(f"waiting for {what}, nodes exited ({codes})\n{self._logs()}")
            try:
                value = predicate()
            except grpc.RpcError as error:
                last = error
                value = None
            if value:
                return value
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what} ({last})\n{self._logs()}")

    def leader(self, among=None) -> Optional[int]:
        """Return the leader that the running nodes agree on, or None."""
        ids = among or self.running()
        seen = set()
        for i in ids:
            try:
                status = self.nodes[i].status(timeout_s=0.5)
            except grpc.RpcError:
                return None
            if not status.leader_id:
                return None
            seen.add(status.leader_id)
        if len(seen) == 1:
            (leader,) = seen
            if leader in ids:
                return leader
        return None

    def wait_for_leader(self, timeout_s: float = 15.0, among=None) -> int:
        return self.wait_for(lambda: self.leader(among), timeout_s, "a leader")


class SharedPerClass:
    """
    Mixed into a TestCase: the tests of a class share one set of processes,
    made by the first test that runs (L{make_shared}) and stopped (their
    C{stop()}) after the last test method of the class, or at exit when
    only some of them run.  Starting processes once per class rather than
    once per test is most of what keeps the real-process tests short.
    """

    _shared = None
    _left = 0

    def make_shared(self):
        """Return the processes to share, started (stopped by their C{stop()} even if this raises after)."""
        raise NotImplementedError

    def shared(self):
        """Return the class's shared processes, made now if this is the first test."""
        cls = type(self)
        if cls._shared is None:
            cls._left = len([name for name in dir(cls) if name.startswith("test_")])
            atexit.register(cls._stop_shared)
            cls._shared = self.make_shared()
        self.addCleanup(cls._one_done)
        return cls._shared

    @classmethod
    def _one_done(cls) -> None:
        cls._left -= 1
        if cls._left <= 0:
            cls._stop_shared()

    @classmethod
    def _stop_shared(cls) -> None:
        shared, cls._shared = cls._shared, None
        if shared is not None:
            shared.stop()
