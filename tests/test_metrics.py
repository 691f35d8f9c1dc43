"""
Tests for the node's metrics and health (L{kvpaxos.node.metrics},
L{kvpaxos.api.http}; issue 13, part 3): what a scrape shows of the node's
view, the counters the replica service and the gRPC edge keep, the
C{/health} answer, and a real cluster serving both over HTTP.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from kvpaxos.api.http import metrics_site
from kvpaxos.node.interfaces import NodeStatus
from kvpaxos.node.metrics import NodeMetrics, commit_timer
from kvpaxos.testing.processes import ProcessCluster, free_port
from kvpaxos.v1 import kv_pb2
from tests.test_api import RunningServer
from tests.test_service import leader_of, make_cluster, run


def samples(metrics: NodeMetrics) -> dict:
    """Every sample of a scrape: C{{(name, ((label, value), ...)): value}}."""
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def status(**changes) -> NodeStatus:
    values = dict(member_id=2, role="follower", leader=1, voters=(1, 2, 3), learners=(4,),
                  chosen_index=50, applied_index=48, ballot_round=3)
    values.update(changes)
    return NodeStatus(**values)


class ScrapeTests(SynchronousTestCase):
    """A scrape reads the node's view when it is taken."""

    def test_view_of_the_cluster(self):
        """Leader, ballot round, indexes, lag, member counts and peer links appear under the member's id."""
        metrics = NodeMetrics()
        metrics.update(status(), {1: True, 3: False})
        found = samples(metrics)
        member = (("member", "2"),)
        self.assertEqual(
            [found[name, member] for name in ("kvpaxos_is_leader", "kvpaxos_has_leader", "kvpaxos_leader_id",
                                              "kvpaxos_ballot_round", "kvpaxos_chosen_index",
                                              "kvpaxos_applied_index", "kvpaxos_apply_lag_slots",
                                              "kvpaxos_voters", "kvpaxos_learners")],
            [0.0, 1.0, 1.0, 3.0, 50.0, 48.0, 2.0, 3.0, 1.0])
        self.assertEqual(found["kvpaxos_peer_connected", (("member", "2"), ("peer", "1"))], 1.0)
        self.assertEqual(found["kvpaxos_peer_connected", (("member", "2"), ("peer", "3"))], 0.0)
        metrics.update(status(role="leader", leader=2, ballot_round=4))
        found = samples(metrics)
        self.assertEqual((found["kvpaxos_is_leader", member], found["kvpaxos_ballot_round", member]), (1.0, 4.0))

    def test_not_started(self):
        """A node with no status yet shows only its counters, and is not healthy."""
        metrics = NodeMetrics()
        self.assertNotIn("kvpaxos_is_leader", {name for name, _ in samples(metrics)})
        self.assertEqual(metrics.health(), (False, "the node has not started"))

    def test_counters(self):
        """Leader changes, gRPC answers by method and code, and timed commits are counted."""
        metrics = NodeMetrics()
        metrics.leader_changed()
        metrics.leader_changed()
        for code in ("OK", "OK", "UNAVAILABLE"):
            metrics.grpc_request("Put", code)
        timed = commit_timer(metrics, lambda work: work * 2)
        self.assertEqual(timed(21), 42)
        found = samples(metrics)
        self.assertEqual(found["kvpaxos_leader_changes_total", ()], 2.0)
        self.assertEqual(found["kvpaxos_grpc_requests_total", (("code", "OK"), ("method", "Put"))], 2.0)
        self.assertEqual(found["kvpaxos_grpc_requests_total", (("code", "UNAVAILABLE"), ("method", "Put"))], 1.0)
        self.assertEqual(found["kvpaxos_commit_seconds_count", ()], 1.0)
        self.assertIs(commit_timer(None, len), len)

    def test_running_totals_and_fsync(self):
        """The node's totals handed over with its view are counters; a store that times its sync feeds the fsync histogram."""
        metrics = NodeMetrics()
        metrics.update(status(), None, {"proposals": 7, "proposals_failed": 1, "snapshot_sent_bytes": 4096,
                                        "snapshot_received_bytes": 0})
        found = samples(metrics)
        member = (("member", "2"),)
        self.assertEqual([found[f"kvpaxos_{name}_total", member] for name in
                          ("proposals", "proposals_failed", "snapshot_sent_bytes", "snapshot_received_bytes")],
                         [7.0, 1.0, 4096.0, 0.0])

        class Store:
            last_sync_s = None

            def commit(self, work):
                self.last_sync_s = 0.003
                return work

        store = Store()
        timed = commit_timer(metrics, store.commit, store)
        self.assertEqual(timed("w"), "w")
        found = samples(metrics)
        self.assertEqual(found["kvpaxos_fsync_seconds_count", ()], 1.0)
        self.assertAlmostEqual(found["kvpaxos_fsync_seconds_sum", ()], 0.003)


class DashboardTests(SynchronousTestCase):
    """The Grafana dashboard shipped in etc/ asks only for metrics a node serves."""

    def test_every_metric_exists(self):
        import os
        import re

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "etc", "grafana", "kvpaxos-dashboard.json")) as f:
            dashboard = json.load(f)
        asked = {name for panel in dashboard["panels"] for target in panel["targets"]
                 for name in re.findall(r"\b((?:kvpaxos|process)_[a-z_]+)", target["expr"])}
        metrics = NodeMetrics()
        metrics.update(status(), {1: True})
        metrics.leader_changed()
        metrics.grpc_request("Put", "OK")
        metrics.commit_seconds.observe(0.001)
        served = {name for name, _ in samples(metrics)}
        self.assertGreater(len(asked), 5)
        self.assertEqual(sorted(asked - served), [])


class HealthTests(SynchronousTestCase):
    """Healthy only with a leader and the applied index close to the chosen one."""

    def health(self, **changes):
        metrics = NodeMetrics()
        metrics.update(status(**changes))
        return metrics.health()

    def test_reasons(self):
        """Each reason to be unhealthy is said; a node with a leader and no lag is healthy."""
        self.assertEqual(self.health(), (True, ""))
        self.assertEqual(self.health(leader=None), (False, "no leader"))
        self.assertEqual(self.health(voters=()), (False, "no member set yet (joining)"))
        healthy, reason = self.health(chosen_index=5000, applied_index=10)
        self.assertFalse(healthy)
        self.assertIn("4990 slots behind", reason)
        # Cut off from a leader it still names (a learner never campaigns):
        self.assertEqual(self.health(election_timeout_s=0.5, leader_silent_s=0.9), (True, ""))
        self.assertEqual(self.health(election_timeout_s=0.5, leader_silent_s=1.5),
                         (False, "no word from leader 1 for 1.5s"))

    def render(self, metrics, path: bytes):
        site = metrics_site(metrics)
        request = DummyRequest([path])
        resource = site.resource.getChildWithDefault(path, request)
        body = resource.render(request)
        return request.responseCode or 200, dict(request.responseHeaders.getAllRawHeaders()), body

    def test_http(self):
        """/health answers etcd's JSON, 200 or 503 (/metrics is scraped from a real node below)."""
        metrics = NodeMetrics()
        metrics.update(status())
        code, headers, body = self.render(metrics, b"health")
        self.assertEqual((code, json.loads(body)), (200, {"health": "true", "reason": ""}))
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        metrics.update(status(leader=None))
        code, _, body = self.render(metrics, b"health")
        self.assertEqual((code, json.loads(body)), (503, {"health": "false", "reason": "no leader"}))


class ServiceCountsTests(SynchronousTestCase):
    """The replica service counts the leader changes it logs, and hands its view over on ticks."""

    def test_leader_changes(self):
        reactor, wire = make_cluster(3)
        counted = {}
        for i, service in wire.services.items():
            counted[i] = service.metrics = NodeMetrics()
        run(reactor, 2)
        old = leader_of(wire)
        first = {i: samples(m)["kvpaxos_leader_changes_total", ()] for i, m in counted.items()}
        self.assertEqual(set(first.values()), {1.0})  # each learned of the one leader once
        wire.down = {old}
        run(reactor, 4)
        self.assertNotIn(leader_of(wire), (None, old))
        for i, m in counted.items():
            if i != old:
                self.assertEqual(samples(m)["kvpaxos_leader_changes_total", ()], 2.0)  # two leaders heard of
                self.assertEqual(m.view[0], wire.services[i].status())  # as of the last tick


class EdgeCountsTests(RunningServer, SynchronousTestCase):
    """The gRPC edge counts each answer, unary and streamed, by method and code."""

    def test_unary_and_streamed(self):
        metrics = NodeMetrics()
        self.server._calls.metrics = metrics
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v")).result()
        self.assertRaises(Exception, self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"", value=b"v")).result)
        batch = kv_pb2.StreamRequests(requests=[
            kv_pb2.StreamRequest(id=1, get=kv_pb2.GetRequest(key=b"k")),
            kv_pb2.StreamRequest(id=2, get=kv_pb2.GetRequest(key=b"")),
        ])
        done = []

        def consume():
            try:
                list(self.kv.Stream(iter([batch]), timeout=5))
            finally:
                done.append(True)
                self.reactor.wake()

        threading.Thread(target=consume, daemon=True).start()
        self.reactor.pump_until(lambda: done)
        found = samples(metrics)
        requests = {labels: value for (name, labels), value in found.items() if name == "kvpaxos_grpc_requests_total"}
        self.assertEqual(requests, {
            (("code", "OK"), ("method", "Put")): 1.0,
            (("code", "INVALID_ARGUMENT"), ("method", "Put")): 1.0,
            (("code", "OK"), ("method", "Get")): 1.0,
            (("code", "INVALID_ARGUMENT"), ("method", "Get")): 1.0,
        })


class ClusterMetricsTests(SynchronousTestCase):
    """Real nodes serve /metrics and /health on their metrics_addr (127.0.0.1, ephemeral ports)."""

    def test_scrape_a_cluster(self):
        ports = {i: free_port() for i in (1, 2, 3)}
        cluster = ProcessCluster(self.mktemp(), size=3, node_settings={
            i: {"metrics_addr": f"127.0.0.1:{port}"} for i, port in ports.items()})
        self.addCleanup(cluster.stop)
        cluster.start()
        leader = cluster.wait_for_leader(timeout_s=20)
        cluster.nodes[leader].kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)

        def fetch(node_id: int, path: str):
            url = f"http://127.0.0.1:{ports[node_id]}/{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        def scraped(node_id: int) -> dict:
            code, body = fetch(node_id, "metrics")
            self.assertEqual(code, 200)
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(body.decode()) for s in f.samples}

        cluster.wait_for(lambda: fetch(leader, "health")[0] == 200, 10, "the leader to report healthy")
        found = scraped(leader)
        member = (("member", str(leader)),)
        self.assertEqual(found["kvpaxos_is_leader", member], 1.0)
        self.assertGreaterEqual(found["kvpaxos_grpc_requests_total", (("code", "OK"), ("method", "Put"))], 1.0)
        self.assertGreater(found["kvpaxos_commit_seconds_count", ()], 0.0)
        self.assertGreater(found["kvpaxos_fsync_seconds_count", ()], 0.0)
        cluster.wait_for(lambda: scraped(leader).get(("kvpaxos_proposals_total", member), 0) >= 1, 10,
                         "the proposal counted")
        self.assertGreaterEqual(found["kvpaxos_leader_changes_total", ()], 1.0)
        self.assertEqual(sum(v for (name, _), v in found.items() if name == "kvpaxos_peer_connected"), 2.0)
        self.assertGreater(found["process_cpu_seconds_total", ()], 0.0)
        follower = next(i for i in ports if i != leader)
        code, body = fetch(follower, "health")
        self.assertEqual((code, json.loads(body)["health"]), (200, "true"))
        self.assertEqual(fetch(follower, "nothing-here")[0], 404)
