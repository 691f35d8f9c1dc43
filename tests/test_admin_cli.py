"""
Tests for the admin commands of the C{kvpaxos} CLI
(L{kvpaxos.client.admin_cli}, L{kvpaxos.client.admin_client}): each
command's table and C{--json}, each error path, usage errors, against
L{FakeAdmin}, an AMP server with the admin contract's responders
(L{kvpaxos.api.admin}).  Most tests connect in memory
(C{twisted.test.iosim}) with a fake clock; L{EndToEndTests} run the CLI's
own reactor loop over TCP on 127.0.0.1, every wait bounded by C{--timeout}.
"""

from __future__ import annotations

import io
import json
import socket

from twisted.internet import defer, error as neterror, task
from twisted.internet.protocol import Factory
from twisted.internet.selectreactor import SelectReactor
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.admin import (
    DEFAULT_ADMIN, MemberAdd, MemberList, MemberPromote, MemberRemove, NotLeader, Rejected, Status,
    TransferLeadership, Unavailable,
)
from kvpaxos.client import cli
from kvpaxos.client.admin_cli import AdminActions, AdminInvocation
from kvpaxos.client.admin_client import AdminCalls


class AdminState:
    """What L{FakeAdmin}s serve: member 1 leads voters 1, 2, 3; learner 4 has no client address yet."""

    def __init__(self) -> None:
        self.cluster_id = 77
        self.leader = 1
        self.members = {
            1: ("voter", "127.0.0.1:12380", "127.0.0.1:2379"),
            2: ("voter", "127.0.0.1:22380", "127.0.0.1:22379"),
            3: ("voter", "127.0.0.1:32380", "127.0.0.1:32379"),
            4: ("learner", "127.0.0.1:42380", ""),
        }
        #: The error the next change raises, if any.
        self.error = None
        self.calls: list[tuple] = []

    def member_list(self) -> dict:
        return {"cluster_id": self.cluster_id, "leader": self.leader,
                "members": [{"id": i, "role": r, "peer": p, "client": c} for i, (r, p, c) in sorted(self.members.items())]}

    def change(self, *call):
        self.calls.append(call)
        if self.error is not None:
            raise self.error


class FakeAdmin(amp.AMP):
    """An admin port: the contract's responders over L{AdminState}; member 1 answers."""

    def __init__(self, state: AdminState, member_id: int = 1) -> None:
        super().__init__()
        self.cluster, self.member_id = state, member_id

    @Status.responder
    def status(self):
        s = self.cluster
        return {"member_id": self.member_id, "role": "leader" if s.leader == self.member_id else "follower",
                "leader": s.leader, "voters": [i for i, m in s.members.items() if m[0] == "voter"],
                "learners": [i for i, m in s.members.items() if m[0] == "learner"],
                "chosen_index": 17, "applied_index": 16}

    @MemberList.responder
    def member_list(self):
        return self.cluster.member_list()

    @MemberAdd.responder
    def member_add(self, id, peer, client):
        self.cluster.change("add", id, peer, client)
        if id in self.cluster.members:
            raise Rejected(f"member {id} already exists")
        self.cluster.members[id] = ("learner", peer, client)
        return self.cluster.member_list()

    @MemberPromote.responder
    def member_promote(self, id):
        self.cluster.change("promote", id)
        role, peer, client = self.cluster.members[id]
        self.cluster.members[id] = ("voter", peer, client)
        return self.cluster.member_list()

    @MemberRemove.responder
    def member_remove(self, id, force=None):
        self.cluster.change("remove", id, force)
        del self.cluster.members[id]
        return self.cluster.member_list()

    @TransferLeadership.responder
    def transfer_leadership(self, target):
        self.cluster.change("transfer", target)
        self.cluster.leader = target
        return {}


class AdminTestCase(SynchronousTestCase):
    """Parses a command line with L{cli.parse} and runs it over in-memory AMP connections."""

    def setUp(self) -> None:
        self.state = AdminState()
        self.clock = task.Clock()
        self.pumps: list = []
        self.connected: list[str] = []
        #: address -> a Deferred (or failure) instead of a connection.
        self.refuse: dict[str, object] = {}
        self.stdout = self.stderr = b""

    def connect(self, address: str) -> defer.Deferred:
        self.connected.append(address)
        if address in self.refuse:
            outcome = self.refuse[address]
            return outcome if isinstance(outcome, defer.Deferred) else defer.fail(outcome)
        member_id = int(address.rsplit(":", 1)[1]) // 10000 or 1
        client, _, pump = connectedServerAndClient(lambda: FakeAdmin(self.state, member_id), amp.AMP)
        self.pumps.append(pump)
        return defer.succeed(client)

    def run_admin(self, *argv: str) -> int:
        out, err = io.BytesIO(), io.BytesIO()
        invocation = cli.parse(list(argv), out, err)
        self.assertIsInstance(invocation, AdminInvocation)
        calls = AdminCalls(self.connect, self.clock, invocation.timeout_s)
        d = defer.ensureDeferred(AdminActions(invocation, calls, out, err).run())
        for _ in range(100):
            if d.called:
                break
            for pump in self.pumps:
                pump.flush()
            self.clock.advance(0)
        status = self.successResultOf(d)
        self.stdout, self.stderr = out.getvalue(), err.getvalue()
        return status

    def lines(self) -> list[str]:
        return self.stdout.decode().splitlines()

    def assertFailed(self, *argv: str, says: str) -> None:
        """C{argv} fails: exit 1, one error line saying C{says}, nothing on stdout."""
        self.assertEqual(self.run_admin(*argv), cli.EXIT_FAILED)
        errors = self.stderr.decode().splitlines()
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith("kvpaxos: error: "), errors[0])
        self.assertIn(says, errors[0])
        self.assertEqual(self.stdout, b"")


class MemberTests(AdminTestCase):
    """member list, add, promote, remove and leader transfer."""

    def test_list_table(self) -> None:
        """member list prints a table of every member, marking the leader."""
        self.assertEqual(self.run_admin("member", "list"), cli.EXIT_OK)
        self.assertEqual(self.lines(), [
            "ID  ROLE     PEER             CLIENT           LEADER",
            "1   voter    127.0.0.1:12380  127.0.0.1:2379   *",
            "2   voter    127.0.0.1:22380  127.0.0.1:22379",
            "3   voter    127.0.0.1:32380  127.0.0.1:32379",
            "4   learner  127.0.0.1:42380  -",
        ])
        self.assertEqual((self.connected, self.stderr), ([DEFAULT_ADMIN], b""))

    def test_list_json(self) -> None:
        """member list --json prints one object: the cluster, its leader and the members with their addresses."""
        self.assertEqual(self.run_admin("--admin", "127.0.0.1:22381", "member", "list", "--json"), cli.EXIT_OK)
        obj = json.loads(self.stdout)
        self.assertEqual((obj["admin"], obj["cluster_id"], obj["leader_id"]), ("127.0.0.1:22381", 77, 1))
        self.assertEqual(obj["members"][3], {"member_id": 4, "role": "learner", "peer_address": "127.0.0.1:42380",
                                             "client_address": ""})

    def test_add(self) -> None:
        """member add sends the id and addresses and prints what changed, then the members."""
        status = self.run_admin("member", "add", "5", "--peer", "10.0.0.5:2380", "--client", "10.0.0.5:2379")
        self.assertEqual(status, cli.EXIT_OK)
        self.assertEqual(self.state.calls, [("add", 5, "10.0.0.5:2380", "10.0.0.5:2379")])
        self.assertEqual(self.lines()[0], "added member 5 as a learner")
        self.assertEqual(self.lines()[-1].split(), ["5", "learner", "10.0.0.5:2380", "10.0.0.5:2379"])

    def test_add_without_client(self) -> None:
        """member add without --client sends an empty client address."""
        self.run_admin("member", "add", "5", "--peer", "10.0.0.5:2380", "--json")
        self.assertEqual(self.state.calls, [("add", 5, "10.0.0.5:2380", "")])
        self.assertEqual(json.loads(self.stdout)["members"][-1]["member_id"], 5)

    def test_add_rejected(self) -> None:
        """A REJECTED answer is one line naming the address and the reason, and exit 1."""
        self.assertFailed("member", "add", "2", "--peer", "10.0.0.2:2380", says="127.0.0.1:12381: rejected: member 2 already exists")

    def test_promote(self) -> None:
        """member promote makes the learner a voter."""
        self.assertEqual(self.run_admin("member", "promote", "4"), cli.EXIT_OK)
        self.assertEqual(self.lines()[0], "promoted member 4 to voter")
        self.assertEqual(self.state.calls, [("promote", 4)])

    def test_remove(self) -> None:
        """member remove sends force=False unless --force, and prints the members left."""
        self.assertEqual(self.run_admin("member", "remove", "3"), cli.EXIT_OK)
        self.run_admin("member", "remove", "2", "--force", "--json")
        self.assertEqual(self.state.calls, [("remove", 3, False), ("remove", 2, True)])
        self.assertEqual([m["member_id"] for m in json.loads(self.stdout)["members"]], [1, 4])

    def test_unavailable(self) -> None:
        """UNAVAILABLE is one line, exit 1."""
        self.state.error = Unavailable("no leader reached within 5s")
        self.assertFailed("member", "promote", "4", says="unavailable: no leader reached within 5s")

    def test_transfer(self) -> None:
        """leader transfer asks for the target and says it was done."""
        self.assertEqual(self.run_admin("leader", "transfer", "3"), cli.EXIT_OK)
        self.assertEqual((self.state.calls, self.lines()), ([("transfer", 3)], ["transferred leadership to member 3"]))
        self.run_admin("leader", "transfer", "2", "--json")
        self.assertEqual(json.loads(self.stdout), {"admin": DEFAULT_ADMIN, "target": 2})

    def test_transfer_not_leader(self) -> None:
        """NOT_LEADER (from an older node) is one line, exit 1."""
        self.state.error = NotLeader("node 2 does not lead; leader is 1")
        self.assertFailed("leader", "transfer", "3", says="not the leader: node 2 does not lead; leader is 1")

    def test_connection_refused(self) -> None:
        """An admin port that refuses the connection is one line, exit 1."""
        self.refuse[DEFAULT_ADMIN] = neterror.ConnectionRefusedError()
        self.assertFailed("member", "list", says=f"{DEFAULT_ADMIN}: cannot connect: connection refused")

    def test_next_address_after_refusal(self) -> None:
        """A change goes to the next admin address when one refuses the connection (nothing was sent)."""
        self.refuse["127.0.0.1:12381"] = neterror.ConnectionRefusedError()
        self.assertEqual(self.run_admin("--admin", "127.0.0.1:12381,127.0.0.1:22381", "member", "promote", "4"),
                         cli.EXIT_OK)
        self.assertEqual((self.connected, len(self.state.calls)), (["127.0.0.1:12381", "127.0.0.1:22381"], 1))

    def test_no_next_address_after_sending(self) -> None:
        """A change that was sent and failed is not sent to another address."""
        self.state.error = Rejected("a change is already in flight")
        self.run_admin("--admin", "127.0.0.1:12381,127.0.0.1:22381", "member", "promote", "4")
        self.assertEqual(self.connected, ["127.0.0.1:12381"])

    def test_timeout(self) -> None:
        """No answer within --timeout is one line saying the change may still happen, exit 1."""
        self.refuse[DEFAULT_ADMIN] = defer.Deferred()
        out, err = io.BytesIO(), io.BytesIO()
        invocation = cli.parse(["member", "promote", "4", "--timeout", "2"], out, err)
        d = defer.ensureDeferred(AdminActions(invocation, AdminCalls(self.connect, self.clock, 2.0), out, err).run())
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), cli.EXIT_FAILED)
        self.assertEqual(err.getvalue().decode(),
                         f"kvpaxos: error: {DEFAULT_ADMIN}: no answer to MemberPromote within 2s; "
                         "the change may still be carried out\n")

    def test_unhandled_command(self) -> None:
        """A node without the command (an older one) is one line, exit 1."""
        def connect(address):
            client, _, pump = connectedServerAndClient(amp.AMP, amp.AMP)
            self.pumps.append(pump)
            return defer.succeed(client)
        self.connect = connect
        self.assertFailed("member", "list", says="the node does not offer MemberList")


class EndpointTests(AdminTestCase):
    """endpoint status and endpoint health, over one or several admin addresses."""

    ADMINS = "127.0.0.1:12381,127.0.0.1:22381"

    def test_status_table(self) -> None:
        """endpoint status prints one row per address: id, role, membership, leader, chosen, applied."""
        self.assertEqual(self.run_admin("--admin", self.ADMINS, "endpoint", "status"), cli.EXIT_OK)
        self.assertEqual(self.lines(), [
            "ENDPOINT         ID  ROLE      MEMBER  LEADER  CHOSEN  APPLIED",
            "127.0.0.1:12381  1   leader    voter   1       17      16",
            "127.0.0.1:22381  2   follower  voter   1       17      16",
        ])

    def test_status_json(self) -> None:
        """endpoint status --json prints one object with a row per address."""
        self.run_admin("--admin", self.ADMINS, "endpoint", "status", "--json")
        rows = json.loads(self.stdout)["endpoints"]
        self.assertEqual(rows[1], {
            "admin": "127.0.0.1:22381", "member_id": 2, "role": "follower", "membership": "voter", "leader_id": 1,
            "voters": [1, 2, 3], "learners": [4], "chosen_index": 17, "applied_index": 16, "cluster_id": 77,
        })

    def test_status_one_fails(self) -> None:
        """An address that fails is an error line and exit 1; the others still print."""
        self.refuse["127.0.0.1:22381"] = neterror.ConnectionRefusedError()
        self.assertEqual(self.run_admin("--admin", self.ADMINS, "endpoint", "status"), cli.EXIT_FAILED)
        self.assertEqual(len(self.lines()), 2)
        self.assertEqual(self.stderr, b"kvpaxos: error: 127.0.0.1:22381: cannot connect: connection refused\n")

    def test_health_table(self) -> None:
        """endpoint health prints healthy, the round trip and no reason for every address that answers and knows a leader."""
        self.assertEqual(self.run_admin("--admin", self.ADMINS, "endpoint", "health"), cli.EXIT_OK)
        self.assertEqual(self.lines(), [
            "ENDPOINT         HEALTH   TOOK   REASON",
            "127.0.0.1:12381  healthy  0.0ms",
            "127.0.0.1:22381  healthy  0.0ms",
        ])
        self.assertEqual(self.stderr, b"")

    def test_unhealthy(self) -> None:
        """An address that cannot be reached, or knows no leader, is unhealthy with the reason; exit 1."""
        self.refuse["127.0.0.1:22381"] = neterror.ConnectionRefusedError()
        self.state.leader = None
        self.assertEqual(self.run_admin("--admin", self.ADMINS + ",127.0.0.1:32381", "endpoint", "health", "--json"),
                         cli.EXIT_FAILED)
        rows = json.loads(self.stdout)["endpoints"]
        self.assertEqual([(r["admin"], r["healthy"], r["reason"]) for r in rows], [
            ("127.0.0.1:12381", False, "knows no leader"),
            ("127.0.0.1:22381", False, "cannot connect: connection refused"),
            ("127.0.0.1:32381", False, "knows no leader"),
        ])
        self.assertEqual((rows[0]["took_ms"], rows[1]["took_ms"]), (0.0, None))
        self.assertEqual(self.stderr, b"kvpaxos: error: 3 of 3 endpoints unhealthy\n")

    def test_health_timeout(self) -> None:
        """An address that does not answer within --timeout is unhealthy."""
        self.refuse[DEFAULT_ADMIN] = defer.Deferred()
        out, err = io.BytesIO(), io.BytesIO()
        invocation = cli.parse(["endpoint", "health", "--timeout", "1.5"], out, err)
        d = defer.ensureDeferred(AdminActions(invocation, AdminCalls(self.connect, self.clock, 1.5), out, err).run())
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d), cli.EXIT_FAILED)
        self.assertIn("unhealthy  -     no answer to Status within 1.5s", out.getvalue().decode())


class UsageTests(SynchronousTestCase):
    """Bad admin command lines: one line, exit 2, nothing sent (no reactor is even started)."""

    def assertUsage(self, *argv: str, says: str) -> None:
        out, err = io.BytesIO(), io.BytesIO()
        status = cli.main(list(argv), stdout=out, stderr=err, admin_reactor=object())
        self.assertEqual(status, cli.EXIT_USAGE)
        lines = err.getvalue().decode().splitlines()
        self.assertEqual((len(lines), out.getvalue()), (1, b""), lines)
        self.assertTrue(lines[0].startswith("kvpaxos: error: "), lines[0])
        self.assertIn(says, lines[0])

    def test_bad_admin_address(self) -> None:
        """--admin must be host:port with a host and a port in 1..65535."""
        self.assertUsage("--admin", "localhost", "member", "list", says="--admin: endpoint 'localhost' is not host:port")
        self.assertUsage("--admin", ":12381", "member", "list", says="needs a host")
        self.assertUsage("member", "list", "--admin", "a:99999", says="port must be 0..65535")

    def test_non_numeric_id(self) -> None:
        """A member id is a whole number above 0."""
        self.assertUsage("member", "promote", "four", says="not a member id")
        self.assertUsage("leader", "transfer", "0", says="not a member id")

    def test_bad_peer(self) -> None:
        """member add needs --peer host:port; --client, if given, is host:port too."""
        self.assertUsage("member", "add", "5", says="--peer")
        self.assertUsage("member", "add", "5", "--peer", "x", says="'x' is not host:port")
        self.assertUsage("member", "add", "5", "--peer", "a:1", "--client", "a:0", says="needs a host and a port")

    def test_unknown_subcommand(self) -> None:
        """An unknown action, or none, is a usage error."""
        self.assertUsage("member", "frob", says="invalid choice: 'frob'")
        self.assertUsage("endpoint", says="required: ACTION")
        self.assertUsage("leader", "transfer", says="required: ID")


class EndToEndTests(SynchronousTestCase):
    """The CLI's own reactor loop and TCP, against a L{FakeAdmin} on 127.0.0.1 (fresh reactor per run)."""

    def run_cli(self, reactor, *argv: str) -> tuple[int, str, str]:
        out, err = io.BytesIO(), io.BytesIO()
        status = cli.main(["--timeout", "5", *argv], stdout=out, stderr=err, admin_reactor=reactor)
        return status, out.getvalue().decode(), err.getvalue().decode()

    def test_member_list_over_tcp(self) -> None:
        """member list over a real connection prints the table and exits 0."""
        reactor = SelectReactor()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: FakeAdmin(AdminState())), interface="127.0.0.1")
        status, out, err = self.run_cli(reactor, "--admin", f"127.0.0.1:{port.getHost().port}", "member", "list")
        self.assertEqual((status, err), (cli.EXIT_OK, ""))
        self.assertEqual(out.splitlines()[1].split(), ["1", "voter", "127.0.0.1:12380", "127.0.0.1:2379", "*"])

    def test_connection_refused_over_tcp(self) -> None:
        """A port nobody listens on: one line, exit 1."""
        unused = socket.socket()
        self.addCleanup(unused.close)
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        status, out, err = self.run_cli(SelectReactor(), "--admin", address, "endpoint", "health")
        self.assertEqual(status, cli.EXIT_FAILED)
        self.assertIn("cannot connect: connection refused", out)
        self.assertEqual(err, "kvpaxos: error: 1 of 1 endpoints unhealthy\n")
