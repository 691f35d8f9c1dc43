"""
Tests for C{kvpaxos compact REV} (L{kvpaxos.client.cli},
L{kvpaxos.client.actions}): parsing, etcdctl's output, the refusals as
error lines.  No network: L{tests.test_cli.FakeCluster} with a Compact.
"""

from __future__ import annotations

import io
import json

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.api.endpoints import DEFAULT_ENDPOINT
from kvpaxos.client import cli
from kvpaxos.v1 import kv_pb2
from tests.fake_grpc import FakeRpcError
from tests.test_cli import CliTestCase, FakeCluster


class CompactingCluster(FakeCluster):
    """A L{FakeCluster} whose store is at revision 10 and refuses compactions above it."""

    def Compact(self, request):
        if request.revision > 10:
            raise FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "required revision is a future revision: cannot "
                               "compact at revision 11, the store is at revision 10 (its history is compacted at "
                               "revision 0)", errors.FUTURE_REVISION, {errors.REVISION: 10})
        return kv_pb2.CompactResponse(header=self.HEADER, compact_revision=request.revision)


class CompactParseTests(SynchronousTestCase):
    """The command line of compact."""

    def parse(self, *argv: str) -> cli.Invocation:
        return cli.parse(list(argv), io.BytesIO(), io.BytesIO())

    def test_parse(self) -> None:
        """compact REV asks for a compaction at REV; --physical is accepted, after the revision or before."""
        self.assertEqual((self.parse("compact", "7").action, self.parse("compact", "7").revision), ("compact", 7))
        self.assertEqual(self.parse("compact", "7", "--physical").revision, 7)
        self.assertEqual(self.parse("compact", "--physical", "0", "--json").revision, 0)


class CompactCliTests(CliTestCase):
    """compact's output, exit statuses and error lines."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster = CompactingCluster()

    def test_output(self) -> None:
        """It prints etcdctl's line, and sends one Compact at the revision."""
        self.assertEqual(self.run_cli("compact", "7", "--physical"), cli.EXIT_OK)
        self.assertEqual((self.stdout, self.stderr), (b"compacted revision 7\n", b""))
        (request,) = self.cluster.requests
        self.assertEqual((request[1], request[2].revision), ("Compact", 7))

    def test_json(self) -> None:
        """--json prints the compacted revision."""
        self.assertEqual(self.run_cli("--json", "compact", "3"), cli.EXIT_OK)
        self.assertEqual(json.loads(self.stdout), {"compact_revision": 3})

    def test_refused(self) -> None:
        """A refusal is one error line with the member's sentence, and exit 1."""
        self.assertEqual(self.run_cli("compact", "11"), cli.EXIT_FAILED)
        self.assertEqual(self.stdout, b"")
        self.assertEqual(self.stderr.decode(), f"kvpaxos: error: {DEFAULT_ENDPOINT}: OUT_OF_RANGE: required "
                         "revision is a future revision: cannot compact at revision 11, the store is at revision 10 "
                         "(its history is compacted at revision 0)\n")

    def test_bad_revision(self) -> None:
        """A revision that is not a whole number >= 0, or none, is a usage error; nothing is sent."""
        for argv in (("compact", "-1"), ("compact", "x"), ("compact",)):
            self.assertUsageError(*argv, says="compact")
