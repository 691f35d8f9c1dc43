"""
The node's HTTP edge for operators (issue 13, part 3): C{/metrics} in
Prometheus's text format (C{prometheus_client.twisted.MetricsResource}
over the node's own registry) and C{/health}, answering as etcd's does:
C{{"health": "true", "reason": ""}} with 200 when the node is fit to
serve, C{{"health": "false", "reason": "..."}} with 503 when it is not.
What "fit" means is the node's (L{kvpaxos.node.metrics.NodeMetrics.health});
this module translates and decides nothing.  Served by L{metrics_site} on
C{metrics_addr} (off unless configured; loopback in the examples).
"""

from __future__ import annotations

import json

from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["HealthResource", "metrics_site"]


class HealthResource(Resource):
    """C{GET /health}: the node's C{(healthy, reason)} as JSON; 200 or 503."""

    isLeaf = True

    def __init__(self, health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request) -> bytes:
        healthy, reason = self._health()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"health": "true" if healthy else "false", "reason": reason}).encode("utf-8")


class _QuietSite(Site):
    """A site that writes no access line per request (a probe every second would fill the node's log)."""

    def log(self, request) -> None:
        pass


def metrics_site(metrics) -> Site:
    """The site serving C{/metrics} and C{/health} of C{metrics} (a L{kvpaxos.node.metrics.NodeMetrics})."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"health", HealthResource(metrics.health))
    site = _QuietSite(root)
    site.displayTracebacks = False
    return site
