"""
Debian's etcdctl (ETCDCTL_API=3) drives real twistd kvpaxos nodes through
their etcd port (C{etcd_addr}), and the same commands run against a real
etcd (Debian's etcd-server) that the test starts: the text of put, get,
del and txn must be the same, byte for byte; member list and endpoint
status must have etcd's shape and agree on the columns that must agree
(not ids, versions or sizes).  etcdctl 3.4 has no C{--count-only}:
count_only is checked with the generated stubs (L{tests.test_etcd_wire}).

Processes: one three-node kvpaxos cluster and one etcd per test class,
started by its first test and stopped after its last (L{SharedProcesses};
at exit too, if a run selects only some tests), every one by pid, on
127.0.0.1 ports below the ephemeral range; every wait bounded.  Without
etcd and etcdctl the tests fail saying so (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Optional

import grpc
from twisted.trial.unittest import TestCase

from kvpaxos.api.endpoints import CHANNEL_OPTIONS
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.testing.processes import ProcessCluster, SharedPerClass, free_port

#: The longest one etcdctl command, or a process's start, may take.
COMMAND_S = 20.0
START_S = 30.0


def require_etcd() -> None:
    """Fail (never skip) unless etcd and etcdctl are installed."""
    missing = [name for name in ("etcd", "etcdctl") if shutil.which(name) is None]
    if missing:
        raise AssertionError(
            f"{' and '.join(missing)} not installed: these tests compare kvpaxos with a real etcd; install "
            "Debian's etcd-server and etcd-client (apt-get install etcd-server etcd-client; .ci/run does)")


def wait_for_status(endpoint: str, deadline_s: float, what: str, alive=lambda: True) -> None:
    """Wait until C{endpoint} answers etcd's Maintenance.Status (bounded)."""
    deadline = time.monotonic() + deadline_s
    channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    try:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        last = None
        while time.monotonic() < deadline:
            if not alive():
                raise AssertionError(f"{what} exited while starting")
            try:
                if stub.Status(pb.StatusRequest(), timeout=1.0).leader:
                    return
            except grpc.RpcError as error:
                last = error
            time.sleep(0.1)
        raise AssertionError(f"{what} did not answer Status within {deadline_s}s ({last})")
    finally:
        channel.close()


class EtcdServer:
    """One real single-member etcd on 127.0.0.1, its data in C{directory}; L{stop} kills it by pid."""

    def __init__(self, directory: str) -> None:
        self.client_port, self.peer_port = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.directory = directory
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        client, peer = f"http://{self.endpoint}", f"http://127.0.0.1:{self.peer_port}"
        with open(os.path.join(self.directory, "etcd.log"), "ab") as log:
            self.process = subprocess.Popen(
                ["etcd", "--data-dir", os.path.join(self.directory, "etcd-data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        wait_for_status(self.endpoint, START_S, "etcd", lambda: self.process.poll() is None)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


class Processes:
    """A kvpaxos cluster with etcd ports, and a real etcd, in a directory of their own."""

    def __init__(self, size: int) -> None:
        require_etcd()
        self.directory = tempfile.mkdtemp(prefix="etcd-compare-", dir=os.getcwd())
        self.etcd = EtcdServer(self.directory)
        ports = {i: free_port() for i in range(1, size + 1)}
        self.cluster = ProcessCluster(os.path.join(self.directory, "kvpaxos"), size=size, node_settings={
            i: {"etcd_addr": f"127.0.0.1:{port}"} for i, port in ports.items()})
        self.kvpaxos = [f"127.0.0.1:{ports[i]}" for i in sorted(ports)]
        try:
            self.etcd.start()
            self.cluster.start()
            self.cluster.wait_for_leader(timeout_s=START_S)
            for endpoint in self.kvpaxos:
                wait_for_status(endpoint, START_S, "a kvpaxos node's etcd port")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            self.etcd.stop()
            shutil.rmtree(self.directory, ignore_errors=True)


class SharedProcesses(SharedPerClass):
    """
    Mixed into a TestCase: its tests share one L{Processes} (C{size}
    kvpaxos nodes), started by the first and stopped after the last test
    method of the class (or at exit when only some of them run).
    """

    size = 1

    def setUp(self) -> None:
        super().setUp()
        self.processes = self.shared()

    def make_shared(self) -> "Processes":
        return Processes(type(self).size)


def etcdctl(endpoint: str, *arguments: str, stdin: str = "") -> tuple[int, str, str]:
    """Run C{etcdctl --endpoints ENDPOINT ARGUMENTS} (API 3): its status, its output, its error line."""
    done = subprocess.run(["etcdctl", "--endpoints", endpoint, *arguments], input=stdin.encode(),
                          capture_output=True, timeout=COMMAND_S,
                          env=dict(os.environ, ETCDCTL_API="3"))
    errors = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.startswith("Error")]
    return done.returncode, done.stdout.decode("utf-8", "replace"), "\n".join(errors)


class EtcdctlTests(SharedProcesses, TestCase):
    """etcdctl's answers from kvpaxos are etcd's."""

    size = 3

    def both(self, *arguments: str, stdin: str = "") -> tuple:
        """Run one etcdctl command against etcd and against kvpaxos (node 1); assert the same answer."""
        etcd = etcdctl(self.processes.etcd.endpoint, *arguments, stdin=stdin)
        kvpaxos = etcdctl(self.processes.kvpaxos[0], *arguments, stdin=stdin)
        self.assertEqual(kvpaxos, etcd, f"etcdctl {' '.join(arguments)}")
        return etcd

    def test_put_and_get(self) -> None:
        """put (and --prev-kv), get of a key, a prefix, a range, from a key, limited, keys or values only."""
        for key, value in (("pg/a", "1"), ("pg/b", "two words"), ("pg/c", "3"), ("ph", "other")):
            self.assertEqual(self.both("put", key, value)[:2], (0, "OK\n"))
        self.assertEqual(self.both("put", "pg/c", "three", "--prev-kv")[1], "OK\npg/c\n3\n")
        self.both("get", "pg/a")
        self.both("get", "pg/nothing")
        self.both("get", "pg/", "--prefix")
        self.both("get", "pg/a", "pg/c")
        self.both("get", "pg/b", "--from-key", "--keys-only")
        self.both("get", "pg/", "--prefix", "--limit", "2")
        self.both("get", "pg/", "--prefix", "--keys-only")
        self.both("get", "pg/", "--prefix", "--consistency=s", "--print-value-only")
        self.both("get", "pg/", "--prefix", "--sort-by=VALUE", "--order=DESCEND")
        self.both("get", "pg/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit", "2")
        self.both("get", "pg/", "--prefix", "--hex")

    def test_del(self) -> None:
        """del of a key, a missing key, a range, a prefix with --prev-kv."""
        for key in ("dl/a", "dl/b", "dl/c", "dl/d", "dl/e"):
            self.both("put", key, "v-" + key)
        self.assertEqual(self.both("del", "dl/a")[1], "1\n")
        self.assertEqual(self.both("del", "dl/a")[1], "0\n")
        self.both("del", "dl/b", "dl/d")
        self.both("del", "dl/", "--prefix", "--prev-kv")
        self.both("get", "dl/", "--prefix")

    def test_txn(self) -> None:
        """Non-interactive txn from stdin: compares of each kind, both branches, puts, gets and dels."""
        self.both("put", "tx/a", "1")
        self.both("put", "tx/b", "2")
        scripts = [
            'value("tx/a") = "1"\n\nput tx/a "one"\nget tx/b\n\nput tx/a "no"\n\n',
            'mod("tx/a") > "1"\nversion("tx/b") = "1"\n\ndel tx/b --prev-kv\nget tx/ --prefix\n\n\n',
            'create("tx/new") = "0"\n\nput tx/new "made"\n\nget tx/new\n\n',
            'create("tx/new") = "0"\n\nput tx/new "again"\n\nget tx/new\n\n',
            'value("tx/missing") != "x"\n\nput tx/q 1\n\nput tx/q 2\n\n',
            'version("tx/a") < "2"\n\n\ndel tx/ --prefix\n\n',
        ]
        for script in scripts:
            self.both("txn", stdin=script)
        self.both("get", "tx/", "--prefix")

    def test_revisions(self) -> None:
        """get -w json: the same revisions as etcd's (counted from the test's first write), header included."""
        answers = []
        for endpoint in (self.processes.etcd.endpoint, self.processes.kvpaxos[0]):
            base = json.loads(etcdctl(endpoint, "put", "rv/a", "1", "-w", "json")[1])["header"]["revision"]
            etcdctl(endpoint, "put", "rv/b", "2")
            etcdctl(endpoint, "put", "rv/a", "3")
            etcdctl(endpoint, "del", "rv/zz")
            answer = json.loads(etcdctl(endpoint, "get", "rv/", "--prefix", "-w", "json")[1])
            header = answer.pop("header")
            answer["revision"] = header["revision"] - base
            for kv in answer["kvs"]:
                kv["create_revision"] -= base
                kv["mod_revision"] -= base
            answers.append(answer)
        self.assertEqual(answers[1], answers[0])
        self.assertEqual(answers[0]["revision"], 2)

    def test_errors(self) -> None:
        """etcd's errors, word for word: an empty key, a future revision, a lease, a duplicate txn key."""
        self.both("put", "er/a", "1")
        for arguments in (("put", "", "x"), ("get", "er/a", "--rev", "100000"), ("put", "er/a", "x", "--lease=1f")):
            self.assertEqual(self.both(*arguments)[0], 1, arguments)
        self.assertEqual(self.both("txn", stdin='\nput er/d 1\nput er/d 2\n\n\n')[0], 1)

    def test_compact(self) -> None:
        """compact: a compaction, the same again and one below it (compacted), one past the newest (future)."""
        answers = []
        for endpoint in (self.processes.etcd.endpoint, self.processes.kvpaxos[0]):
            base = json.loads(etcdctl(endpoint, "put", "cp/a", "1", "-w", "json")[1])["header"]["revision"]
            etcdctl(endpoint, "put", "cp/a", "2")
            etcdctl(endpoint, "put", "cp/b", "3")  # the newest revision is base + 2
            runs = []
            for offset, *flags in ((1,), (1,), (0,), (3,), (2, "--physical"), (2, "-w", "json")):
                status, out, error = etcdctl(endpoint, "compact", str(base + offset), *flags)
                runs.append((offset, status, out.replace(str(base + offset), "REV"), error))
            # A compaction leaves the keys as they are.
            runs.append(etcdctl(endpoint, "get", "cp/", "--prefix"))
            answers.append(runs)
        self.assertEqual(answers[1], answers[0])
        self.assertEqual([run[1:3] for run in answers[0][:5]],
                         [(0, "compacted revision REV\n"), (1, ""), (1, ""), (1, ""), (0, "compacted revision REV\n")])

    def test_member_list(self) -> None:
        """member list: etcd's columns; every member started, a voter, at its peer URL; this one at its etcd URL."""
        rows = {}
        for name, endpoint in (("etcd", self.processes.etcd.endpoint), ("kvpaxos", self.processes.kvpaxos[0])):
            status, out, error = etcdctl(endpoint, "member", "list")
            self.assertEqual((status, error), (0, ""), name)
            rows[name] = [line.split(", ") for line in out.splitlines()]
        (etcd_row,) = rows["etcd"]
        self.assertEqual(len(rows["kvpaxos"]), 3)
        ids = []
        for row in rows["kvpaxos"]:
            self.assertEqual(len(row), len(etcd_row))
            self.assertEqual((row[1], row[5]), (etcd_row[1], etcd_row[5]))  # started, not a learner
            self.assertTrue(row[3].startswith("http://127.0.0.1:"), row)
            ids.append(row[0])
        self.assertEqual(ids, ["1", "2", "3"])
        own = [row for row in rows["kvpaxos"] if row[4]]
        self.assertEqual([row[4] for row in own], [f"http://{self.processes.kvpaxos[0]}"])
        self.assertEqual(etcd_row[4], f"http://{self.processes.etcd.endpoint}")

    def test_endpoint_status(self) -> None:
        """endpoint status: etcd's ten columns; one leader among the three; no learner, no error."""
        status, out, error = etcdctl(self.processes.etcd.endpoint, "endpoint", "status")
        self.assertEqual((status, error), (0, ""))
        (etcd_row,) = [line.split(", ") for line in out.splitlines()]
        status, out, error = etcdctl(",".join(self.processes.kvpaxos), "endpoint", "status")
        self.assertEqual((status, error), (0, ""))
        rows = [line.split(", ") for line in out.splitlines()]
        self.assertEqual([row[0] for row in rows], self.processes.kvpaxos)
        for row in rows:
            self.assertEqual(len(row), len(etcd_row))
            self.assertEqual((row[5], row[9]), (etcd_row[5], etcd_row[9]))  # not a learner, no errors
        self.assertEqual(sorted(row[4] for row in rows), ["false", "false", "true"])
        self.assertEqual(etcd_row[4], "true")

    def test_unimplemented(self) -> None:
        """What kvpaxos does not serve fails with UNIMPLEMENTED and a sentence (etcd serves it: not compared)."""
        endpoint = self.processes.kvpaxos[0]
        self.assertEqual(etcdctl(endpoint, "put", "un/a", "1")[0], 0)  # so that revision 1 is past
        for arguments in (("put", "un/a", "2", "--ignore-lease"), ("get", "un/a", "--rev", "1"),
                          ("member", "add", "x", "--peer-urls=http://127.0.0.1:1")):
            status, _, error = etcdctl(endpoint, *arguments)
            self.assertNotEqual(status, 0, arguments)
            self.assertIn("Unimplemented", error, arguments)
