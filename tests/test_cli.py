"""
Tests for the C{kvpaxos} command (L{kvpaxos.client.cli}): argument parsing in both
forms, output formats, exit statuses and error lines.  No network: the
connection factory is replaced by L{FakeCluster}, whose endpoints keep one
shared dict and can be told to fail with a gRPC status.
"""

from __future__ import annotations

import io
import json
import random

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos import client as kvclient
from kvpaxos.api import errors
from kvpaxos.api.endpoints import DEFAULT_ENDPOINT
from kvpaxos.api.limits import MAX_KEY_BYTES
from kvpaxos.client import cli
from kvpaxos.v1 import kv_pb2
from tests.fake_grpc import FakeRpcError
from tests.fake_grpc import unavailable as fake_unavailable


class FakeChannel:
    """A gRPC channel to one endpoint of a L{FakeCluster}: each RPC is answered by the cluster method of its name."""

    def __init__(self, cluster: "FakeCluster", endpoint: str) -> None:
        self._cluster = cluster
        self._endpoint = endpoint
        cluster.open.add(endpoint)

    def unary_unary(self, path: str, **_):
        method = path.rsplit("/", 1)[1]
        return lambda request, timeout: self._cluster.answer(self._endpoint, method, request, timeout)

    def stream_stream(self, path: str, **_):
        def call(*args, **kwargs):
            raise AssertionError(f"{path}: the CLI does not stream")

        return call

    def close(self) -> None:
        self._cluster.open.discard(self._endpoint)


class FakeCluster:
    """
    Every endpoint serves one dict.  C{errors[endpoint]} makes that endpoint
    fail every request with the error.  Txn and CompareAndSwap answer with
    C{txn_response} and C{cas_response}.
    """

    HEADER = kv_pb2.ResponseHeader(member_id=1, leader_id=2)

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.errors: dict[str, Exception] = {}
        self.requests: list[tuple] = []
        self.open: set[str] = set()
        self.txn_response = kv_pb2.TxnResponse(header=self.HEADER, succeeded=True)
        self.cas_response = kv_pb2.CompareAndSwapResponse(header=self.HEADER, succeeded=True)

    def channel(self, endpoint: str) -> FakeChannel:
        return FakeChannel(self, endpoint)

    def answer(self, endpoint: str, method: str, request, timeout: float):
        if method == "MemberList":  # the client's own business; these answer as an older server
            raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.requests.append((endpoint, method, request, timeout))
        error = self.errors.get(endpoint)
        if error is not None:
            raise error
        return getattr(self, method)(request)

    def OpenSession(self, request):
        return kv_pb2.OpenSessionResponse(header=self.HEADER, client_id=5)

    def Get(self, request):
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(header=self.HEADER, found=value is not None, value=value or b"")

    def Put(self, request):
        existed = request.key in self.data
        self.data[request.key] = request.value
        return kv_pb2.PutResponse(header=self.HEADER, existed=existed)

    def Delete(self, request):
        existed = self.data.pop(request.key, None) is not None
        return kv_pb2.DeleteResponse(header=self.HEADER, deleted=existed)

    def Append(self, request):
        existed = request.key in self.data
        self.data[request.key] = self.data.get(request.key, b"") + request.value
        return kv_pb2.AppendResponse(header=self.HEADER, value=self.data[request.key], existed=existed)

    def Range(self, request):
        keys = sorted(k for k in self.data if k >= request.key and (request.range_end == b"\0" or k < request.range_end))
        if request.limit:
            keys, more = keys[:request.limit], len(keys) > request.limit
        else:
            more = False
        kvs = [] if request.count_only else [
            kv_pb2.KeyValue(key=k, value=b"" if request.keys_only else self.data[k], version=1) for k in keys]
        return kv_pb2.RangeResponse(header=self.HEADER, kvs=kvs, more=more, count=len(self.data))

    def Txn(self, request):
        return self.txn_response

    def CompareAndSwap(self, request):
        return self.cas_response

    def Status(self, request):
        return kv_pb2.StatusResponse(
            header=self.HEADER, member_id=1, role="follower", leader_id=2,
            voters=[1, 2, 3], learners=[], chosen_index=9, applied_index=8, ballot_round=4,
            used_bytes=20480, quota_bytes=8 << 30,
        )


def unavailable(details: str = "no quorum before deadline; leader is 2") -> FakeRpcError:
    """An UNAVAILABLE as a node would raise it, naming leader 2."""
    return fake_unavailable(details, 2)


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class CliTestCase(SynchronousTestCase):
    """Runs L{cli.main} against a L{FakeCluster} with fake time, capturing its output."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.time = FakeTime()
        self.stdout = b""
        self.stderr = b""

    def run_cli(self, *argv: str) -> int:
        """Run the command with C{argv}; keep its output in stdout/stderr."""
        out, err = io.BytesIO(), io.BytesIO()
        status = cli.main(
            list(argv), channel_factory=self.cluster.channel, sleep=self.time.sleep, clock=self.time.clock,
            rng=random.Random(1), stdout=out, stderr=err,
        )
        self.stdout, self.stderr = out.getvalue(), err.getvalue()
        return status

    def assertUsageError(self, *argv: str, says: str) -> None:
        """Assert that C{argv} is a usage error: status 2, one error line, no request."""
        self.assertEqual(self.run_cli(*argv), cli.EXIT_USAGE)
        self.assertEqual(self.stdout, b"")
        lines = self.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("kvpaxos: error: "), lines[0])
        self.assertIn(says, lines[0])
        self.assertEqual(self.cluster.requests, [])


class ParseTests(SynchronousTestCase):
    """The command line, in the subcommand form and in the seed's form."""

    def parse(self, *argv: str) -> cli.Invocation:
        """Parse C{argv}, discarding any output."""
        return cli.parse(list(argv), io.BytesIO(), io.BytesIO())

    def test_command_form(self) -> None:
        """C{put KEY VALUE} asks for a put with the defaults."""
        self.assertEqual(
            self.parse("put", "k", "v"),
            cli.Invocation("put", b"k", b"v", "k", [DEFAULT_ENDPOINT], False, 5.0),
        )

    def test_seed_form(self) -> None:
        """C{--action=put --key=k --value=v} asks for the same put."""
        self.assertEqual(self.parse("--action=put", "--key=k", "--value=v"), self.parse("put", "k", "v"))

    def test_seed_form_status(self) -> None:
        """C{--action=status} needs neither key nor value."""
        self.assertEqual(self.parse("--action=status").action, "status")

    def test_options_before_command(self) -> None:
        """Global options before the command are taken."""
        invocation = self.parse("--endpoints", "a:1,b:2", "--json", "--timeout", "2.5", "get", "k")
        self.assertEqual((invocation.endpoints, invocation.json, invocation.timeout_s), (["a:1", "b:2"], True, 2.5))

    def test_options_after_command(self) -> None:
        """Global options after the command are taken too."""
        invocation = self.parse("get", "k", "--endpoints=a:1", "--json", "--timeout=3")
        self.assertEqual((invocation.endpoints, invocation.json, invocation.timeout_s), (["a:1"], True, 3.0))

    def test_utf8(self) -> None:
        """Keys and values from the command line are encoded as UTF-8."""
        invocation = self.parse("append", "clé", "naïve")
        self.assertEqual((invocation.key, invocation.value), ("clé".encode(), "naïve".encode()))

    def test_empty_value(self) -> None:
        """An empty value is a value."""
        self.assertEqual(self.parse("put", "k", "").value, b"")


class UsageTests(CliTestCase):
    """Bad command lines: exit status 2 and one error line on stderr."""

    def test_no_command(self) -> None:
        """No command at all is a usage error."""
        self.assertUsageError(says="a command is required")

    def test_unknown_command(self) -> None:
        """An unknown command is a usage error."""
        self.assertUsageError("frob", says="invalid choice")

    def test_missing_value(self) -> None:
        """C{put} without a value is a usage error."""
        self.assertUsageError("put", "k", says="VALUE")

    def test_both_forms(self) -> None:
        """A command and --action together are a usage error."""
        self.assertUsageError("--action=get", "get", "k", says="not both")

    def test_seed_form_missing_key(self) -> None:
        """C{--action=get} without --key is a usage error."""
        self.assertUsageError("--action=get", says="needs --key")

    def test_seed_form_missing_value(self) -> None:
        """C{--action=append} without --value is a usage error."""
        self.assertUsageError("--action=append", "--key=k", says="needs --value")

    def test_seed_form_extra_value(self) -> None:
        """C{--action=delete} with --value is a usage error."""
        self.assertUsageError("--action=delete", "--key=k", "--value=v", says="takes no --value")

    def test_bad_endpoint(self) -> None:
        """An endpoint without a port is a usage error."""
        self.assertUsageError("--endpoints", "a:1,nope", "get", "k", says="not host:port")

    def test_bad_timeout(self) -> None:
        """A timeout that is not a positive number is a usage error."""
        self.assertUsageError("--timeout", "0", "get", "k", says="--timeout")

    def test_empty_key(self) -> None:
        """An empty key is refused before anything is sent."""
        self.assertUsageError("get", "", says="empty key")

    def test_long_key(self) -> None:
        """A key over 511 bytes is refused before anything is sent."""
        self.assertUsageError("put", "k" * (MAX_KEY_BYTES + 1), "v", says="511")

    def test_help(self) -> None:
        """--help prints usage on stdout and exits 0."""
        self.assertEqual(self.run_cli("--help"), cli.EXIT_OK)
        self.assertIn(b"usage: kvpaxos", self.stdout)
        self.assertEqual(self.stderr, b"")


class OutputTests(CliTestCase):
    """What each command prints, as text and as JSON."""

    def test_put(self) -> None:
        """put sends the key and value, prints OK and exits 0."""
        self.assertEqual(self.run_cli("--timeout=2", "put", "k", "v"), cli.EXIT_OK)
        self.assertEqual((self.stdout, self.stderr), (b"OK\n", b""))
        endpoint, method, request, timeout = self.cluster.requests[0]
        self.assertEqual((endpoint, method, request.key, request.value, timeout), (DEFAULT_ENDPOINT, "Put", b"k", b"v", 2.0))

    def test_get(self) -> None:
        """get prints the raw value with a newline."""
        self.cluster.data[b"k"] = b"\x00\xffbytes"
        self.assertEqual(self.run_cli("get", "k"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"\x00\xffbytes\n")

    def test_get_missing(self) -> None:
        """get of a missing key prints nothing on stdout, says so on stderr and exits 1."""
        self.assertEqual(self.run_cli("get", "k"), cli.EXIT_FAILED)
        self.assertEqual((self.stdout, self.stderr), (b"", b"kvpaxos: error: key not found\n"))

    def test_delete(self) -> None:
        """delete prints OK whether or not the key existed."""
        self.cluster.data[b"k"] = b"v"
        self.assertEqual(self.run_cli("delete", "k"), cli.EXIT_OK)
        self.assertEqual(self.run_cli("--action=delete", "--key=k"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"OK\n")
        self.assertEqual(self.cluster.data, {})

    def test_append(self) -> None:
        """append prints the new value."""
        self.cluster.data[b"k"] = b"ab"
        self.assertEqual(self.run_cli("append", "k", "cd"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"abcd\n")

    def test_json_put(self) -> None:
        """put --json prints one object with the answering member."""
        self.assertEqual(self.run_cli("--json", "put", "k", "v"), cli.EXIT_OK)
        self.assertEqual(
            json.loads(self.stdout),
            {"key": "k", "existed": False, "endpoint": DEFAULT_ENDPOINT, "member_id": 1, "leader_id": 2},
        )

    def test_json_get(self) -> None:
        """get --json prints the value as text when it is UTF-8."""
        self.cluster.data[b"k"] = "é".encode()
        self.assertEqual(self.run_cli("--json", "get", "k"), cli.EXIT_OK)
        self.assertEqual(self.stdout.count(b"\n"), 1)
        result = json.loads(self.stdout)
        self.assertEqual((result["found"], result["value"]), (True, "é"))

    def test_json_get_binary(self) -> None:
        """get --json prints a value that is not UTF-8 in base64."""
        self.cluster.data[b"k"] = b"\xff"
        self.run_cli("--json", "get", "k")
        self.assertEqual(json.loads(self.stdout)["value_base64"], "/w==")

    def test_json_get_missing(self) -> None:
        """get --json of a missing key prints found=false and exits 1."""
        self.assertEqual(self.run_cli("get", "--json", "k"), cli.EXIT_FAILED)
        result = json.loads(self.stdout)
        self.assertEqual((result["found"], "value" in result), (False, False))

    def test_json_delete_and_append(self) -> None:
        """delete and append --json report what happened."""
        self.run_cli("--json", "append", "k", "x")
        appended = json.loads(self.stdout)
        self.run_cli("--json", "delete", "k")
        deleted = json.loads(self.stdout)
        self.assertEqual((appended["value"], appended["existed"], deleted["deleted"]), ("x", False, True))

    def test_status_table(self) -> None:
        """status prints a header row and one row per endpoint."""
        self.assertEqual(self.run_cli("status"), cli.EXIT_OK)
        lines = self.stdout.decode().splitlines()
        self.assertEqual(lines[0].split(),
                         ["ENDPOINT", "ID", "ROLE", "LEADER", "ROUND", "VOTERS", "LEARNERS", "CHOSEN", "APPLIED"])
        self.assertEqual(lines[1].split(), [DEFAULT_ENDPOINT, "1", "follower", "2", "4", "1,2,3", "-", "9", "8"])
        self.assertEqual(len(lines), 2)

    def test_status_json(self) -> None:
        """status --json prints one object listing each endpoint's view."""
        self.assertEqual(self.run_cli("--json", "--endpoints=a:1,b:2", "status"), cli.EXIT_OK)
        members = json.loads(self.stdout)["members"]
        self.assertEqual([member["endpoint"] for member in members], ["a:1", "b:2"])
        self.assertEqual(members[0]["voters"], [1, 2, 3])
        self.assertEqual(members[0]["ballot_round"], 4)
        self.assertEqual((members[0]["quota_bytes"], members[0]["space_alarm"]), (8 << 30, False))

    def test_status_endpoint_down(self) -> None:
        """status reports an endpoint that fails on stderr, the others on stdout, and exits 1."""
        self.cluster.errors["a:1"] = fake_unavailable("failed to connect to all addresses", reason=None)
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "status"), cli.EXIT_FAILED)
        self.assertEqual(self.stdout.decode().splitlines()[1].split()[0], "b:2")
        self.assertEqual(
            self.stderr, b"kvpaxos: error: a:1: UNAVAILABLE: failed to connect to all addresses\n"
        )


class EndpointTests(CliTestCase):
    """Trying endpoints in turn."""

    def test_next_endpoint_on_unavailable(self) -> None:
        """A request UNAVAILABLE on one endpoint is sent to the next."""
        self.cluster.errors["a:1"] = unavailable()
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "put", "k", "v"), cli.EXIT_OK)
        self.assertEqual([r[0] for r in self.cluster.requests], ["a:1", "b:2"])
        self.assertEqual((self.stdout, self.stderr), (b"OK\n", b""))

    def test_first_answer_wins(self) -> None:
        """Once an endpoint answers, no other is asked."""
        self.run_cli("--endpoints=a:1,b:2", "get", "k")
        self.assertEqual([r[0] for r in self.cluster.requests], ["a:1"])

    def test_all_unavailable(self) -> None:
        """When every endpoint is UNAVAILABLE, one line names each and the status is 1."""
        self.cluster.errors["a:1"] = unavailable("x")
        self.cluster.errors["b:2"] = unavailable("y")
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "get", "k"), cli.EXIT_FAILED)
        self.assertEqual(
            self.stderr, b"kvpaxos: error: no endpoint answered: a:1: UNAVAILABLE: x; b:2: UNAVAILABLE: y\n"
        )

    def test_invalid_argument_not_retried(self) -> None:
        """INVALID_ARGUMENT from a node fails at once with its message."""
        self.cluster.errors["a:1"] = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad key", errors.INVALID_ARGUMENT)
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "put", "k", "v"), cli.EXIT_FAILED)
        self.assertEqual(self.stderr, b"kvpaxos: error: a:1: INVALID_ARGUMENT: bad key\n")
        self.assertEqual(len(self.cluster.requests), 1)

    def test_write_deadline_not_retried(self) -> None:
        """A write that timed out is not sent again: it may yet be applied."""
        self.cluster.errors["a:1"] = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "append", "k", "v"), cli.EXIT_FAILED)
        self.assertEqual(len(self.cluster.requests), 1)

    def test_read_deadline_retried(self) -> None:
        """A read that timed out is tried on the next endpoint."""
        self.cluster.errors["a:1"] = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.cluster.data[b"k"] = b"v"
        self.assertEqual(self.run_cli("--endpoints=a:1,b:2", "get", "k"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"v\n")

    def test_connections_closed(self) -> None:
        """Every connection opened is closed, after success and after failure."""
        self.cluster.errors["a:1"] = unavailable()
        self.run_cli("--endpoints=a:1,b:2,c:3", "status")
        self.run_cli("--endpoints=a:1,b:2", "put", "k", "v")
        self.assertEqual(self.cluster.open, set())


class RetryTests(CliTestCase):
    """Retries until the command's deadline (new with the client library)."""

    def test_retries_until_deadline(self) -> None:
        """With every endpoint UNAVAILABLE the command retries with backoff and gives up within --timeout."""
        self.cluster.errors["a:1"] = unavailable("x")
        self.assertEqual(self.run_cli("--endpoints=a:1", "--timeout=2", "get", "k"), cli.EXIT_FAILED)
        self.assertGreater(len(self.cluster.requests), 3)
        self.assertLess(self.time.now, 2.0)
        self.assertEqual(self.stderr, b"kvpaxos: error: a:1: UNAVAILABLE: x\n")

    def test_rpc_deadline_is_time_left(self) -> None:
        """Each retry's RPC deadline is what is left of --timeout."""
        self.cluster.errors["a:1"] = unavailable("x")
        self.run_cli("--endpoints=a:1", "--timeout=2", "get", "k")
        timeouts = [request[3] for request in self.cluster.requests]
        self.assertEqual(timeouts[0], 2.0)
        self.assertEqual(timeouts, sorted(timeouts, reverse=True))

    def test_session(self) -> None:
        """--session opens a session and sends the write with client_id and sequence 1."""
        self.assertEqual(self.run_cli("--session", "append", "k", "v"), cli.EXIT_OK)
        self.assertEqual([r[1] for r in self.cluster.requests], ["OpenSession", "Append"])
        append = self.cluster.requests[1][2]
        self.assertEqual((append.client_id, append.sequence), (5, 1))


class RangeTests(CliTestCase):
    """The range command."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster.data.update({b"a": b"1", b"b": b"2", b"b1": b"3", b"c": b"4"})

    def test_from_start(self) -> None:
        """range START prints every key from START on, each key and value on a line of its own."""
        self.assertEqual(self.run_cli("range", "b"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"b\n2\nb1\n3\nc\n4\n")
        self.assertEqual(self.cluster.requests[0][2].range_end, b"\0")

    def test_end_and_keys_only(self) -> None:
        """range START END --keys-only prints the keys in [START, END)."""
        self.assertEqual(self.run_cli("range", "a", "b1", "--keys-only"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"a\nb\n")

    def test_prefix_limit_consistency(self) -> None:
        """--prefix, --limit and --consistency reach the request."""
        self.run_cli("range", "b", "--prefix", "--limit=1", "--consistency=serializable")
        request = self.cluster.requests[0][2]
        self.assertEqual((request.range_end, request.limit, request.consistency), (b"c", 1, kv_pb2.SERIALIZABLE))
        self.assertEqual(self.stdout, b"b\n2\n")

    def test_count_only(self) -> None:
        """--count-only prints the count."""
        self.assertEqual(self.run_cli("range", "a", "--count-only"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"4\n")

    def test_json(self) -> None:
        """range --json prints the records, the count and whether keys were left out."""
        self.run_cli("--json", "range", "b", "c")
        result = json.loads(self.stdout)
        self.assertEqual([(kv["key"], kv["value"]) for kv in result["kvs"]], [("b", "2"), ("b1", "3")])
        self.assertEqual(result["more"], False)

    def test_prefix_and_end(self) -> None:
        """END and --prefix together are a usage error."""
        self.assertUsageError("range", "a", "b", "--prefix", says="not both")

    def test_get_consistency(self) -> None:
        """get --consistency lease asks for a lease read."""
        self.run_cli("get", "k", "--consistency", "lease")
        self.assertEqual(self.cluster.requests[0][2].consistency, kv_pb2.LEASE)


class CasTests(CliTestCase):
    """The cas command."""

    def test_expect_value(self) -> None:
        """cas --expect OLD sends the expected value and prints OK."""
        self.assertEqual(self.run_cli("cas", "k", "new", "--expect", "old"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"OK\n")
        self.assertEqual(self.cluster.requests[0][2].expected_value, b"old")

    def test_expect_version_and_absent(self) -> None:
        """--expect-version and --expect-absent set the matching expectation."""
        self.run_cli("cas", "k", "v", "--expect-version", "3")
        self.run_cli("cas", "k", "v", "--expect-absent")
        kinds = [r[2].WhichOneof("expected") for r in self.cluster.requests]
        self.assertEqual((kinds, self.cluster.requests[0][2].expected_version), (["expected_version", None], 3))

    def test_not_swapped(self) -> None:
        """A cas that did not swap says why on stderr and exits 1."""
        self.cluster.cas_response = kv_pb2.CompareAndSwapResponse(
            header=FakeCluster.HEADER, succeeded=False, current=kv_pb2.KeyValue(key=b"k", value=b"x", version=2))
        self.assertEqual(self.run_cli("cas", "k", "v", "--expect", "y"), cli.EXIT_FAILED)
        self.assertEqual((self.stdout, self.stderr), (b"", b"kvpaxos: error: not swapped: the key has version 2\n"))
        self.run_cli("--json", "cas", "k", "v", "--expect", "y")
        self.assertEqual(json.loads(self.stdout)["current"]["value"], "x")

    def test_one_expectation(self) -> None:
        """cas needs exactly one expectation."""
        self.assertUsageError("cas", "k", "v", says="one of the arguments")
        self.assertUsageError("cas", "k", "v", "--expect", "a", "--expect-absent", says="not allowed with")


class TxnTests(CliTestCase):
    """The txn command and its expression syntax."""

    def test_request(self) -> None:
        """--compare, --then and --else become the Txn's compares and branches."""
        self.assertEqual(self.run_cli(
            "txn", "--compare", "value(k) == 'a b'", "--compare", "version(k) > 2", "--compare", "exists(j)",
            "--then", "put k 'c d'", "--then", "delete j", "--else", "get k", "--else", "range a z",
        ), cli.EXIT_OK)
        request = self.cluster.requests[0][2]
        self.assertEqual(list(request.compare), [
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VALUE, result=kv_pb2.Compare.EQUAL, value=b"a b"),
            kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.VERSION, result=kv_pb2.Compare.GREATER, version=2),
            kv_pb2.Compare(key=b"j", target=kv_pb2.Compare.EXISTS, result=kv_pb2.Compare.EQUAL, exists=True),
        ])
        self.assertEqual([op.WhichOneof("request") for op in request.success], ["request_put", "request_delete_range"])
        self.assertEqual(request.success[0].request_put.value, b"c d")
        self.assertEqual([op.request_range.range_end for op in request.failure], [b"", b"z"])

    def test_output(self) -> None:
        """txn prints SUCCESS or FAILURE and then one result per operation; FAILURE exits 1."""
        self.cluster.txn_response = kv_pb2.TxnResponse(header=FakeCluster.HEADER, succeeded=False, responses=[
            kv_pb2.ResponseOp(response_range=kv_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=b"k", value=b"v")], count=1)),
            kv_pb2.ResponseOp(response_delete_range=kv_pb2.DeleteRangeResponse(deleted=1)),
        ])
        self.assertEqual(self.run_cli("txn", "--compare", "mod(k) < 3", "--else", "get k", "--else", "delete j"),
                         cli.EXIT_FAILED)
        self.assertEqual(self.stdout, b"FAILURE\nk\nv\n1\n")
        self.run_cli("--json", "txn", "--else", "get k", "--else", "delete j")
        self.assertEqual(json.loads(self.stdout)["responses"][1], {"delete": {"deleted": 1}})

    def test_success_output(self) -> None:
        """A txn whose compares held prints SUCCESS and OK for a put, and exits 0."""
        self.cluster.txn_response = kv_pb2.TxnResponse(header=FakeCluster.HEADER, succeeded=True, responses=[
            kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse())])
        self.assertEqual(self.run_cli("txn", "--then", "put k v"), cli.EXIT_OK)
        self.assertEqual(self.stdout, b"SUCCESS\nOK\n")

    def test_exists_false(self) -> None:
        """exists(KEY) == false and != true both ask for absence."""
        self.run_cli("txn", "--compare", "exists(k) == false", "--compare", "exists(k) != true")
        self.assertEqual([c.exists for c in self.cluster.requests[0][2].compare], [False, False])

    def test_bad_compare(self) -> None:
        """A compare that does not parse is a usage error naming it."""
        self.assertUsageError("txn", "--compare", "value k == v", says="value k == v")
        self.assertUsageError("txn", "--compare", "version(k) == x", says="whole number")
        self.assertUsageError("txn", "--compare", "value(k) = v", says="comparison")
        self.assertUsageError("txn", "--compare", "size(k) > 1", says="unknown target")

    def test_bad_op(self) -> None:
        """An operation that does not parse is a usage error."""
        self.assertUsageError("txn", "--then", "put k", says="put KEY VALUE")
        self.assertUsageError("txn", "--else", "frob k", says="put KEY VALUE")

    def test_help_documents_syntax(self) -> None:
        """txn --help documents the expression syntax."""
        self.assertEqual(self.run_cli("txn", "--help"), cli.EXIT_OK)
        self.assertIn(b"value(KEY) OP VALUE", self.stdout)


class DefaultChannelTests(SynchronousTestCase):
    """The real channel factory, without sending anything."""

    def test_grpc_channel(self) -> None:
        """The default channel factory gives a channel the client's stubs work over, and closes it."""
        connection = kvclient.Connection(cli.open_channel("127.0.0.1:1"))
        self.assertTrue(callable(connection.kv.Get) and callable(connection.cluster.Status))
        connection.channel.close()
