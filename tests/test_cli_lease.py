"""
Tests for C{kvpaxos lease ...} and C{kvpaxos put --lease} (L{kvpaxos.client.lease_cli},
L{kvpaxos.client.cli}): parsing (ids in hex, as etcdctl takes them),
etcdctl's lines, C{--json}, error lines and exit statuses, and the
keep-alive loop paced by fake time.  No network:
L{tests.test_cli.FakeCluster} with a lease table.
"""

from __future__ import annotations

import io
import json

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.api.endpoints import DEFAULT_ENDPOINT
from kvpaxos.client import cli
from kvpaxos.client.lease_cli import LeaseCommand
from kvpaxos.v1 import lease_pb2
from tests.fake_grpc import FakeRpcError
from tests.test_cli import CliTestCase, FakeChannel, FakeCluster, unavailable

ID = 0x694D5765FC71500B


class LeaseChannel(FakeChannel):
    """A CLI L{FakeChannel} that serves C{Lease.KeepAlive} streams (each request as the cluster's C{KeepAlive})."""

    def stream_stream(self, path: str, **_):
        if not path.endswith("/KeepAlive"):
            return super().stream_stream(path)
        return lambda requests, timeout=None: iter(
            [self._cluster.answer(self._endpoint, "KeepAlive", request, timeout) for request in requests])


class LeaseCluster(FakeCluster):
    """
    A L{FakeCluster} with C{leases} (id -> TTL) and C{attached} keys;
    C{keep_alives}: how many keep-alives answer before the lease is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.leases: dict[int, int] = {}
        self.attached: dict[bytes, int] = {}
        self.keep_alives = None

    def channel(self, endpoint: str) -> FakeChannel:
        return LeaseChannel(self, endpoint)

    @staticmethod
    def not_found(lease_id: int) -> FakeRpcError:
        return FakeRpcError(grpc.StatusCode.NOT_FOUND, f"requested lease not found: lease {lease_id} ({lease_id:016x})"
                            " does not exist (never granted, revoked, or expired); nothing was applied",
                            errors.LEASE_NOT_FOUND, {errors.LEASE_ID: lease_id})

    def Grant(self, request):
        self.leases[request.id] = request.ttl
        return lease_pb2.LeaseGrantResponse(header=self.HEADER, id=request.id, ttl=request.ttl)

    def Revoke(self, request):
        if self.leases.pop(request.id, None) is None:
            raise self.not_found(request.id)
        return lease_pb2.LeaseRevokeResponse(header=self.HEADER)

    def KeepAlive(self, request):
        if self.keep_alives is not None:
            if self.keep_alives == 0:
                self.leases.pop(request.id, None)
            self.keep_alives -= 1
        return lease_pb2.LeaseKeepAliveResponse(header=self.HEADER, id=request.id, ttl=self.leases.get(request.id, 0))

    def TimeToLive(self, request):
        ttl = self.leases.get(request.id)
        if ttl is None:
            return lease_pb2.LeaseTimeToLiveResponse(header=self.HEADER, id=request.id, ttl=-1)
        keys = sorted(k for k, lease in self.attached.items() if lease == request.id) if request.keys else []
        return lease_pb2.LeaseTimeToLiveResponse(header=self.HEADER, id=request.id, ttl=ttl - 1, granted_ttl=ttl,
                                                 keys=keys)

    def Leases(self, request):
        return lease_pb2.LeasesResponse(header=self.HEADER, ids=sorted(self.leases))

    def Put(self, request):
        if request.lease and request.lease not in self.leases:
            raise self.not_found(request.lease)
        if request.lease:
            self.attached[request.key] = request.lease
        return super().Put(request)


class LeaseParseTests(SynchronousTestCase):
    """The command lines of the lease commands."""

    def parse(self, *argv: str) -> cli.Invocation:
        return cli.parse(list(argv), io.BytesIO(), io.BytesIO())

    def test_parse(self) -> None:
        """Each lease command, its id in hex (a 0x prefix too), its flags."""
        cases = [
            (("lease", "grant", "60"), LeaseCommand("lease grant", ttl=60)),
            (("lease", "revoke", "694d5765fc71500b"), LeaseCommand("lease revoke", ID)),
            (("lease", "keep-alive", "0x1F", "--once"), LeaseCommand("lease keep-alive", 0x1F, once=True)),
            (("lease", "timetolive", "1f", "--keys", "--json"), LeaseCommand("lease timetolive", 0x1F, keys=True)),
            (("lease", "list"), LeaseCommand("lease list")),
        ]
        for argv, expected in cases:
            invocation = self.parse(*argv)
            self.assertEqual((invocation.action, invocation.lease_command), (expected.action, expected))

    def test_put_lease(self) -> None:
        """put --lease ID names the lease in hex; without it, none."""
        self.assertEqual(self.parse("put", "k", "v", "--lease", "1f").lease, 0x1F)
        self.assertEqual(self.parse("put", "k", "v").lease, 0)


class LeaseCliTests(CliTestCase):
    """etcdctl's lines, --json, errors and exit statuses."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster = LeaseCluster()

    def test_grant(self) -> None:
        """grant prints etcdctl's line with the id in 16 hex digits; it sends the id the client picked."""
        self.assertEqual(self.run_cli("lease", "grant", "60"), cli.EXIT_OK)
        (request,) = [r[2] for r in self.cluster.requests if r[1] == "Grant"]
        self.assertEqual((self.stdout.decode(), self.stderr),
                         (f"lease {request.id:016x} granted with TTL(60s)\n", b""))
        self.assertEqual(self.run_cli("--json", "lease", "grant", "5"), cli.EXIT_OK)
        answer = json.loads(self.stdout)
        self.assertEqual((answer["ttl"], answer["id_hex"]), (5, f"{answer['id']:016x}"))

    def test_revoke(self) -> None:
        """revoke prints etcdctl's line; no such lease is the member's error line and exit 1."""
        self.cluster.leases[ID] = 60
        self.assertEqual(self.run_cli("lease", "revoke", f"{ID:x}"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"lease 694d5765fc71500b revoked\n")
        self.assertEqual(self.run_cli("lease", "revoke", f"{ID:x}"), cli.EXIT_FAILED)
        self.assertEqual(self.stdout, b"")
        self.assertEqual(self.stderr.decode(), f"kvpaxos: error: {DEFAULT_ENDPOINT}: NOT_FOUND: requested lease not "
                         f"found: lease {ID} (694d5765fc71500b) does not exist (never granted, revoked, or expired); "
                         "nothing was applied\n")

    def test_keep_alive_once(self) -> None:
        """keep-alive --once prints one etcdctl line; no such lease is an error line and exit 1."""
        self.cluster.leases[ID] = 60
        self.assertEqual(self.run_cli("lease", "keep-alive", "694d5765fc71500b", "--once"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"lease 694d5765fc71500b keepalived with TTL(60)\n")
        self.assertEqual(self.run_cli("lease", "keep-alive", "1f", "--once"), cli.EXIT_FAILED)
        self.assertIn(b"requested lease not found: lease 000000000000001f", self.stderr)

    def test_keep_alive_loop(self) -> None:
        """keep-alive renews every third of the TTL until the lease is gone, then prints etcdctl's last line."""
        self.cluster.leases[ID] = 30
        self.cluster.keep_alives = 3
        self.assertEqual(self.run_cli("lease", "keep-alive", f"{ID:x}"), cli.EXIT_OK)
        line = "lease 694d5765fc71500b keepalived with TTL(30)\n"
        self.assertEqual(self.stdout.decode(), line * 3 + "lease 694d5765fc71500b expired or revoked.\n")
        self.assertEqual(self.time.sleeps, [10.0, 10.0, 10.0])

    def test_keep_alive_retries(self) -> None:
        """A renewal that fails is an error line, and the loop goes on."""
        self.cluster.leases[ID] = 30
        self.cluster.keep_alives = 1
        failing = iter([unavailable()] * 40)
        answer = self.cluster.answer

        def flaky(endpoint, method, request, timeout):
            if method == "KeepAlive" and self.time.now < 3.0:
                raise next(failing)
            return answer(endpoint, method, request, timeout)

        self.cluster.answer = flaky
        self.assertEqual(self.run_cli("--timeout", "1", "lease", "keep-alive", f"{ID:x}"), cli.EXIT_OK)
        self.assertIn(b"kvpaxos: error: ", self.stderr)
        self.assertTrue(self.stdout.endswith(b"expired or revoked.\n"), self.stdout)

    def test_timetolive(self) -> None:
        """timetolive prints etcdctl's line, with --keys its keys as Go prints a list; none: already expired."""
        self.cluster.leases[ID] = 60
        self.assertEqual(self.run_cli("put", "a", "1", "--lease", f"{ID:x}"), cli.EXIT_OK)
        self.assertEqual(self.run_cli("put", "b", "2", "--lease", f"{ID:x}"), cli.EXIT_OK)
        self.assertEqual(self.run_cli("lease", "timetolive", f"{ID:x}"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"lease 694d5765fc71500b granted with TTL(60s), remaining(59s)\n")
        self.assertEqual(self.run_cli("lease", "timetolive", f"{ID:x}", "--keys"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"lease 694d5765fc71500b granted with TTL(60s), remaining(59s), "
                                      b"attached keys([a b])\n")
        self.assertEqual(self.run_cli("lease", "timetolive", "1f"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"lease 000000000000001f already expired\n")
        self.assertEqual(self.run_cli("--json", "lease", "timetolive", f"{ID:x}", "--keys"), cli.EXIT_OK)
        self.assertEqual(json.loads(self.stdout)["keys"], [{"key": "a"}, {"key": "b"}])

    def test_list(self) -> None:
        """list prints etcdctl's count line, then one id a line."""
        self.cluster.leases.update({ID: 60, 0x1F: 10})
        self.assertEqual(self.run_cli("lease", "list"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"found 2 leases\n000000000000001f\n694d5765fc71500b\n")

    def test_put_lease(self) -> None:
        """put --lease sends the lease; no such lease is an error line and exit 1."""
        self.cluster.leases[0x1F] = 60
        self.assertEqual(self.run_cli("put", "k", "v", "--lease", "1f"), cli.EXIT_OK)
        self.assertEqual(self.cluster.requests[-1][2].lease, 0x1F)
        self.assertEqual(self.run_cli("put", "k", "v", "--lease", "20"), cli.EXIT_FAILED)
        self.assertIn(b"NOT_FOUND: requested lease not found", self.stderr)

    def test_usage(self) -> None:
        """A bad id or TTL, or a missing action, is a usage error; nothing is sent."""
        for argv, says in ((("lease", "revoke", "xyz"), "bad lease ID"), (("lease", "revoke", "-1"), "bad lease ID"),
                           (("lease", "revoke", "0"), "bad lease ID"), (("lease", "grant", "0"), "bad TTL"),
                           (("lease", "grant", "ten"), "bad TTL"), (("lease",), "required"),
                           (("put", "k", "v", "--lease", "g"), "bad lease ID")):
            self.assertUsageError(*argv, says=says)
