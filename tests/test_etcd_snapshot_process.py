"""
C{etcdctl snapshot save FILE} against a real twistd kvpaxos node's etcd
port (C{Maintenance.Snapshot}) and against a real etcd that the test
starts (L{tests.test_etcd_process.Processes}): both exit 0 and print the
same (paths aside, the log lines' messages in the same order); kvpaxos's
file is a kvpaxos backup in etcd's envelope, which C{kvpaxos snapshot
restore} makes a data directory of, and a node started from it serves
every key as it was, revisions included.  etcdctl's own C{snapshot status}
refuses it (it is no bbolt file), as README.md says.

Processes: one etcd and one kvpaxos node, then the node again from the
restored directory, every one by pid, on 127.0.0.1 ports below the
ephemeral range; every wait bounded.
"""

from __future__ import annotations

import json
import os
import subprocess

from twisted.trial.unittest import TestCase

from kvpaxos.api.backup import ETCD_SECTOR_BYTES
from tests.test_backup import cli
from tests.test_etcd_process import COMMAND_S, START_S, Processes, etcdctl, wait_for_status

#: Values big enough that the state takes several of a file's chunks.
KEYS = {f"snap/{i}": f"{i}-" + "v" * 40_000 for i in range(5)} | {"snap/small": "s", "other": "o"}


def save(endpoint: str, path: str) -> tuple[int, str, list]:
    """
    Run C{etcdctl snapshot save PATH}: its status, its output and the
    messages of its log lines (zap's JSON on stderr, in order), with PATH
    written FILE.
    """
    done = subprocess.run(["etcdctl", "--endpoints", endpoint, "snapshot", "save", path], capture_output=True,
                          timeout=COMMAND_S, env=dict(os.environ, ETCDCTL_API="3"))
    messages = []
    for line in done.stderr.decode("utf-8", "replace").splitlines():
        try:
            messages.append(json.loads(line)["msg"])
        except (ValueError, KeyError, TypeError):
            messages.append(line)  # not a log line: kept whole, so that it shows in a failure
    return done.returncode, done.stdout.decode("utf-8", "replace").replace(path, "FILE"), messages


class EtcdctlSnapshotTests(TestCase):
    """etcdctl snapshot save on the etcd port, and kvpaxos snapshot restore of what it saved."""

    def test_save_and_restore(self) -> None:
        """Saved as etcd's is saved; restored by kvpaxos snapshot restore, a node from it has every key and revision."""
        processes = Processes(1)
        self.addCleanup(processes.stop)
        etcd, kvpaxos = processes.etcd.endpoint, processes.kvpaxos[0]
        for endpoint in (etcd, kvpaxos):
            for key, value in KEYS.items():
                self.assertEqual(etcdctl(endpoint, "put", key, value)[:2], (0, "OK\n"))
        before = etcdctl(kvpaxos, "get", "", "--prefix")
        before_json = json.loads(etcdctl(kvpaxos, "get", "", "--prefix", "-w", "json")[1])
        self.assertEqual(len(before_json["kvs"]), len(KEYS))

        answers = {}
        for name, endpoint in (("etcd", etcd), ("kvpaxos", kvpaxos)):
            path = os.path.join(processes.directory, f"{name}.db")
            answers[name] = save(endpoint, path)
            self.assertEqual(os.path.getsize(path) % ETCD_SECTOR_BYTES, 32)  # etcdctl's own check
            self.assertFalse(os.path.exists(path + ".part"))
        self.assertEqual(answers["kvpaxos"], answers["etcd"])
        self.assertEqual(answers["etcd"][:2], (0, "Snapshot saved at FILE\n"))

        path = os.path.join(processes.directory, "kvpaxos.db")
        cluster = processes.cluster
        status, out, err = cli(cluster, "snapshot", "status", path)
        self.assertEqual(status, 0, err)
        self.assertIn("intact", out)
        # Not a bbolt file: etcdctl cannot read it (README.md says so; kvpaxos snapshot restore can).
        status, _, error = etcdctl(kvpaxos, "snapshot", "status", path)
        self.assertEqual((status, error), (1, "Error: invalid database"))

        cluster.kill(1)
        restored = os.path.join(processes.directory, "restored")
        status, out, err = cli(cluster, "snapshot", "restore", path, "--config", cluster.nodes[1].config_path,
                               "--data", restored, "--id", "1")
        self.assertEqual(status, 0, err)
        self.assertIn("restored slot", out)
        cluster.start(1, flags=("--data", restored))
        cluster.wait_for_leader(timeout_s=START_S)
        wait_for_status(kvpaxos, START_S, "the restored node's etcd port")
        self.assertEqual(etcdctl(kvpaxos, "get", "", "--prefix"), before)
        after_json = json.loads(etcdctl(kvpaxos, "get", "", "--prefix", "-w", "json")[1])
        self.assertEqual(after_json["kvs"], before_json["kvs"])  # create, mod revisions and versions as they were
        self.assertEqual(after_json["header"]["revision"], before_json["header"]["revision"])
        # The node runs from the restored directory: a new cluster's id, not the old one's.
        self.assertNotEqual(after_json["header"]["cluster_id"], before_json["header"]["cluster_id"])

