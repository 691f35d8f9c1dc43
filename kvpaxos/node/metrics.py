"""
L{NodeMetrics}: a node's Prometheus metrics (issue 13, part 3), in the
project's vocabulary, in a registry of the node's own (several nodes may
share a process in tests), and L{NodeMetrics.health}: whether the node is
fit to serve, as etcd's C{/health} says it.

What is counted where:
  - the node's view (role, leader, ballot round, chosen and applied index,
    the apply lag, voters and learners, connected peers) is handed over by
    the replica service on every tick, in the reactor thread (L{update}),
    and read from that copy when scraped: C{MetricsResource} runs in the
    reactor's thread pool, and the node is only ever touched in the
    reactor thread;
  - leader changes, by the replica service as it logs them
    (L{leader_changed});
  - the duration of each durable transaction on the writer thread
    (L{commit_seconds}: persisting and applying a Ready, the fsync
    included);
  - gRPC requests by method and status code (L{grpc_request}, by the edge;
    a request carried on C{KV.Stream} counts as its unary method).

The metric objects are prometheus_client's, so they are safe to update
from any thread.  Nothing here does I/O; the C{/metrics} and C{/health}
resources are L{kvpaxos.api.http}'s.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["HEALTH_LAG_SLOTS", "NodeMetrics"]

#: A node whose applied index trails its chosen index by more than this is
#: not healthy (it serves stale serializable reads, and linearizable ones
#: late).
HEALTH_LAG_SLOTS = 1000

#: The node's running totals the view carries, as counters (kvpaxos_<name>_total).
COUNTS = {
    "proposals": "Requests this member took to propose (here, or forwarded to the leader)",
    "proposals_failed": "Requests taken that got no quorum before their deadline",
    "snapshot_sent_bytes": "Bytes of state sent to peers in snapshot transfers",
    "snapshot_received_bytes": "Bytes of state received from peers in snapshot transfers",
}

#: Seconds, for the durable transactions of the writer thread.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048)


class _StatusCollector:
    """The node's view of the cluster, as last handed over, read when scraped."""

    def __init__(self, metrics: "NodeMetrics") -> None:
        self._metrics = metrics

    def describe(self):
        return []  # read at scrape time: nothing to check at registration

    def collect(self):
        status, connected, counts = self._metrics.view
        if status is None:  # not started yet
            return
        member = str(status.member_id)
        for name, doc in COUNTS.items():
            if name in counts:
                family = CounterMetricFamily(f"kvpaxos_{name}", doc, labels=["member"])
                family.add_metric([member], float(counts[name]))
                yield family
        leading = GaugeMetricFamily("kvpaxos_is_leader", "1 when this member is the leader", labels=["member"])
        leading.add_metric([member], 1.0 if status.leader == status.member_id else 0.0)
        yield leading
        known = GaugeMetricFamily("kvpaxos_has_leader", "1 when this member knows of a leader", labels=["member"])
        known.add_metric([member], 0.0 if status.leader is None else 1.0)
        yield known
        leader = GaugeMetricFamily("kvpaxos_leader_id", "The leader this member knows of (0: none)",
                                   labels=["member"])
        leader.add_metric([member], float(status.leader or 0))
        yield leader
        for name, doc, value in (
            ("kvpaxos_ballot_round", "The round of the leader's ballot (every election raises it)",
             status.ballot_round),
            ("kvpaxos_chosen_index", "The highest slot this member knows chosen", status.chosen_index),
            ("kvpaxos_applied_index", "The highest slot this member applied", status.applied_index),
            ("kvpaxos_apply_lag_slots", "Slots chosen and not yet applied here",
             max(0, status.chosen_index - status.applied_index)),
            ("kvpaxos_voters", "Voters in this member's member set", len(status.voters)),
            ("kvpaxos_learners", "Learners in this member's member set", len(status.learners)),
            ("kvpaxos_used_bytes", "Bytes of the store's pages in use (free pages not counted)", status.used_bytes),
            ("kvpaxos_quota_bytes", "The space quota (0: none)", status.quota_bytes),
            ("kvpaxos_space_alarm", "1 while writes that grow the store are refused", int(status.space_alarm)),
        ):
            family = GaugeMetricFamily(name, doc, labels=["member"])
            family.add_metric([member], float(value))
            yield family
        if connected is not None:
            links = GaugeMetricFamily("kvpaxos_peer_connected", "1 while a link to this peer is up",
                                      labels=["member", "peer"])
            for peer, up in sorted(connected.items()):
                links.add_metric([member, str(peer)], 1.0 if up else 0.0)
            yield links


class NodeMetrics:
    """
    One node's metrics, in C{registry} (its own).  The node's view is what
    L{update} was last given (none before).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        #: (the last L{kvpaxos.node.interfaces.NodeStatus}, {peer id:
        #: connected} or None): replaced whole, so any thread reads a
        #: consistent pair.
        self.view: tuple = (None, None, {})
        self.leader_changes = Counter(
            "kvpaxos_leader_changes", "Changes of the leader this member knows of (or of its ballot)",
            registry=self.registry)
        self.commit_seconds = Histogram(
            "kvpaxos_commit_seconds", "Durable transactions of the writer thread (persist and apply, fsync included)",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.fsync_seconds = Histogram(
            "kvpaxos_fsync_seconds", "The durable commit of each writer transaction alone (its page writes and"
            " fsyncs), for stores that time it", buckets=COMMIT_BUCKETS, registry=self.registry)
        self._requests = Counter(
            "kvpaxos_grpc_requests", "gRPC requests answered, by method and status code (a streamed request "
            "counts as its unary method)", ["method", "code"], registry=self.registry)
        self._children: dict = {}
        self._lock = threading.Lock()
        self.registry.register(_StatusCollector(self))
        # The process's own (CPU, memory, open files; the Python version).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def update(self, status, links: Optional[dict] = None, counts: Optional[dict] = None) -> None:
        """
        The node's view now (called in the reactor thread): C{status},
        C{{peer id: link up}}, and the node's running totals (C{COUNTS}'s
        names: C{{"proposals": n, ...}}).
        """
        self.view = (status, None if links is None else dict(links), dict(counts or {}))

    def leader_changed(self) -> None:
        self.leader_changes.inc()

    def grpc_request(self, method: str, code: str) -> None:
        """One gRPC request of C{method} answered with status C{code} (a name: C{"OK"}, C{"UNAVAILABLE"}, ...)."""
        child = self._children.get((method, code))
        if child is None:
            with self._lock:
                child = self._children.get((method, code))
                if child is None:
                    child = self._children[method, code] = self._requests.labels(method, code)
        child.inc()

    def health(self, lag_slots: int = HEALTH_LAG_SLOTS) -> tuple[bool, str]:
        """
        C{(healthy, reason)}: healthy only with a leader known and heard
        from within two election timeouts, and the applied index within
        C{lag_slots} of the chosen one; the reason says what is missing
        (empty when healthy).
        """
        status = self.view[0]
        if status is None:
            return False, "the node has not started"
        if not status.voters:
            return False, "no member set yet (joining)"
        if status.leader is None:
            return False, "no leader"
        if status.election_timeout_s and status.leader_silent_s > 2 * status.election_timeout_s:
            return False, f"no word from leader {status.leader} for {status.leader_silent_s:.1f}s"
        lag = status.chosen_index - status.applied_index
        if lag > lag_slots:
            return False, f"applied index {status.applied_index} is {lag} slots behind chosen {status.chosen_index}"
        return True, ""


def commit_timer(metrics: Optional[NodeMetrics], commit: Callable, store=None) -> Callable:
    """
    C{commit}, its duration observed in C{metrics.commit_seconds}, and the
    durable commit's alone (C{store.last_sync_s}, for a store that times it)
    in C{metrics.fsync_seconds}; C{commit} itself when there are no metrics.
    """
    if metrics is None:
        return commit
    import time

    histogram = metrics.commit_seconds
    fsyncs = metrics.fsync_seconds

    def timed(*args):
        start = time.monotonic()
        try:
            return commit(*args)
        finally:
            histogram.observe(time.monotonic() - start)
            synced = getattr(store, "last_sync_s", None)
            if synced is not None:
                fsyncs.observe(synced)

    return timed
