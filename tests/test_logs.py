"""
Tests for structured logs (L{kvpaxos.logs}; issue 13, part 7): the JSON
observer twistd is given, the option that chooses it, and a real node
writing JSON lines with its member id.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos import logs
from kvpaxos.tap import Options
from kvpaxos.testing.processes import ProcessCluster


class ObserverTests(SynchronousTestCase):
    """What the JSON observer writes."""

    def test_one_json_object_per_line_with_the_member_id(self):
        path = self.mktemp()
        logs.configure(7, path)
        self.addCleanup(logs.configure, None, None)
        observer = logs.json_observer()
        log = Logger(namespace="kvpaxos.test", observer=observer)
        log.info("node {node_id} is the leader (ballot round {round})", node_id=7, round=3)
        log.warn("second record")
        with open(path) as f:
            records = [json.loads(line) for line in f.read().splitlines()]
        self.assertEqual([r["member_id"] for r in records], [7, 7])
        self.assertEqual(records[0]["log_format"], "node {node_id} is the leader (ballot round {round})")
        self.assertEqual((records[0]["node_id"], records[0]["round"]), (7, 3))
        self.assertEqual(records[1]["log_level"]["name"], "warn")

    def test_sigusr1_rotates(self):
        """A JSON log file is rotated on SIGUSR1 (in the reactor thread), as twistd rotates its own."""
        import os
        import signal

        from twisted.internet import reactor

        before = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        path = self.mktemp()
        logs.configure(7, path)
        self.addCleanup(logs.configure, None, None)
        observer = logs.json_observer()
        Logger(observer=observer).info("before")
        handler = signal.getsignal(signal.SIGUSR1)
        self.assertTrue(callable(handler))
        called = []
        self.patch(reactor, "callFromThread", lambda f, *a: called.append(f) or f(*a))
        handler(signal.SIGUSR1, None)
        Logger(observer=observer).info("after")
        self.assertTrue(os.path.exists(path + ".1"))
        with open(path + ".1") as f:
            self.assertIn("before", f.read())
        with open(path) as f:
            text = f.read()
        self.assertIn("after", text)
        self.assertNotIn("before", text)
        self.assertEqual(len(called), 1)


class OptionTests(SynchronousTestCase):
    """--log-format / log_format choose twistd's observer."""

    def parse(self, *argv, parent=None):
        options = Options()
        options.parent = parent
        options.parseOptions(list(argv))
        return options

    def test_json_names_the_observer(self):
        parent = {"logfile": "-", "nodaemon": True, "logger": None}
        options = self.parse("--log-format=json", "--id=3", parent=parent)
        self.addCleanup(logs.configure, None, None)
        self.assertEqual(options.node.log_format, "json")
        self.assertEqual(parent["logger"], logs.OBSERVER)
        self.assertEqual(logs._settings, {"member_id": 3, "logfile": "-"})

    def test_twistds_rules_for_where_logs_go(self):
        """A daemon logs to twistd.log or the --logfile given, never to stdout; --logger and --syslog conflict."""
        self.addCleanup(logs.configure, None, None)
        self.parse("--log-format=json", parent={"logfile": None, "nodaemon": False, "logger": None})
        self.assertEqual(logs._settings["logfile"], "twistd.log")
        self.parse("--log-format=json", parent={"logfile": "/var/log/x.log", "nodaemon": False, "logger": None})
        self.assertEqual(logs._settings["logfile"], "/var/log/x.log")
        for parent, said in (
            ({"logfile": "-", "nodaemon": False, "logger": None}, "cannot log to standard output"),
            ({"logfile": "-", "nodaemon": True, "logger": "my.observer"}, "give one or the other"),
            ({"logfile": None, "nodaemon": True, "logger": None, "syslog": True}, "not to syslog"),
        ):
            error = self.assertRaises(usage.UsageError, self.parse, "--log-format=json", parent=parent)
            self.assertIn(said, str(error))

    def test_text_leaves_twistd_alone(self):
        parent = {"logfile": "-", "logger": None}
        self.assertEqual(self.parse(parent=parent).node.log_format, "text")
        self.assertIsNone(parent["logger"])

    def test_bad_format(self):
        error = self.assertRaises(usage.UsageError, self.parse, "--log-format=xml")
        self.assertIn("log_format must be text or json", str(error))


class NodeTests(SynchronousTestCase):
    """A real node (twistd, 127.0.0.1, ephemeral ports) with log_format = "json"."""

    def test_node_logs_json(self):
        cluster = ProcessCluster(self.mktemp(), size=1, settings={"log_format": "json"})
        self.addCleanup(cluster.stop)
        cluster.start()
        cluster.wait_for_leader(timeout_s=20)
        cluster.wait_for(lambda: "is the leader" in cluster.nodes[1].log(), 10, "the leader's log line")
        records = [json.loads(line) for line in cluster.nodes[1].log().splitlines() if line.strip()]
        self.assertEqual({r["member_id"] for r in records}, {1})
        self.assertIn("node {node_id} is the leader (ballot round {round})", [r["log_format"] for r in records])
