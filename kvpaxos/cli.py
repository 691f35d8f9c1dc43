"""
The C{kvpaxos} command: reads and writes a kvpaxos cluster over gRPC, with
the client library (L{kvpaxos.client}).

    kvpaxos [--endpoints HOST:PORT,...] [--json] [--timeout SECONDS] [--session] COMMAND
    kvpaxos put KEY VALUE        prints OK
    kvpaxos get KEY              prints the value (exit 1: key not found)
    kvpaxos delete KEY           prints OK
    kvpaxos append KEY VALUE     prints the new value
    kvpaxos range START [END]    prints each key and value on lines of their own
    kvpaxos cas KEY VALUE --expect OLD | --expect-version N | --expect-absent
                                 prints OK (exit 1: not swapped)
    kvpaxos txn --compare C ... --then OP ... --else OP ...
                                 prints SUCCESS or FAILURE, then each op's result
    kvpaxos status               one row per endpoint

C{get} and C{range} take C{--consistency linearizable|serializable|lease};
C{range} also C{--prefix}, C{--limit N}, C{--keys-only}, C{--count-only}.
The seed's form works too: C{kvpaxos --action=put --key=k --value=v}.

A request goes to the leader when the client knows it, else to the
endpoints in the order given; an endpoint that is unreachable or answers
UNAVAILABLE is skipped, and the request is retried with backoff until
C{--timeout} (the deadline of the whole command).  A read that timed out
is retried too; a write that timed out is not (it may have been applied),
unless C{--session} makes it exactly-once.  C{--session} costs one more
round trip (OpenSession) and a slot in the cluster's session table, so it
is off by default: without it a write retried after UNAVAILABLE may apply
twice (harmless for put and delete, not for append, cas or txn).  Keys and
values given on the command line are encoded as UTF-8.

Exit status: 0 success, 1 the request failed (or the key was not found, a
cas did not swap, a txn ran its else branch), 2 bad usage.  Errors are one
line on stderr: C{kvpaxos: error: ...}.

Nothing here knows how the cluster works beyond the gRPC API
(C{proto/kvpaxos/v1/kv.proto}).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Sequence

from kvpaxos import client as kvclient
from kvpaxos.client import Client, ClientError
from kvpaxos.client_endpoints import DEFAULT_ENDPOINT, BadEndpoint, open_channel, parse_endpoints
from kvpaxos.kv.commands import InvalidArgument, Op, validate
from kvpaxos.v1 import kv_pb2

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The actions of the seed's C{--action=} form.
ACTIONS = ("put", "get", "delete", "append", "status")
COMMANDS = ACTIONS + ("range", "cas", "txn")
#: Actions that take a key, and those that take a value too.
_KEYED = {"put", "get", "delete", "append"}
_VALUED = {"put", "append"}

CONSISTENCIES = ("linearizable", "serializable", "lease")

TXN_HELP = """\
Compare (all must hold for the --then branch to run; else --else runs):
  value(KEY) OP VALUE      OP is ==, !=, < or > (bytewise)
  version(KEY) OP N        writes since the key was created; 0 if missing
  create(KEY) OP N         revision that created the key; 0 if missing
  mod(KEY) OP N            revision of the key's latest write; 0 if missing
  exists(KEY) [== true|false]
Operations (--then, --else):
  put KEY VALUE | delete KEY | get KEY | range START [END]
Quote words with spaces shell-style inside the expression:
  kvpaxos txn --compare "value(k) == 'a b'" --then 'put k c' --else 'get k'
Prints SUCCESS or FAILURE, then one result per operation: OK for put, the
number deleted for delete, key and value lines for get and range.  Exits 0
when the --then branch ran, 1 when the --else branch ran."""


class _Exit(Exception):
    """argparse wants to exit with C{status}."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that writes to the given streams and never calls
    C{sys.exit}."""

    def __init__(self, *args, streams: tuple[BinaryIO, BinaryIO], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._streams = streams

    def _print_message(self, message: str, file=None) -> None:
        if message:
            out, err = self._streams
            (err if file is sys.stderr else out).write(message.encode("utf-8", "replace"))

    def error(self, message: str):
        """Print one line (no usage block) and exit with status 2."""
        command = self.prog.removeprefix("kvpaxos").strip()
        where = f"{command}: " if command else ""
        self._print_message(f"kvpaxos: error: {where}{message} (see {self.prog} --help)\n", sys.stderr)
        raise _Exit(EXIT_USAGE)

    def exit(self, status: int = 0, message: Optional[str] = None):
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


def build_parser(stdout: BinaryIO, stderr: BinaryIO) -> argparse.ArgumentParser:
    """Return the argument parser, writing help and errors to the streams."""
    streams = (stdout, stderr)

    def global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
        # The same options after a command too (kvpaxos get k --json); there
        # they default to "not given" so they don't override the ones before.
        def default(value):
            return value if defaults else argparse.SUPPRESS

        parser.add_argument(
            "--endpoints", default=default(DEFAULT_ENDPOINT), metavar="HOST:PORT,...",
            help=f"nodes to try, leader first once known, else in order (default {DEFAULT_ENDPOINT})",
        )
        parser.add_argument(
            "--json", action="store_true", default=default(False),
            help="print one JSON object",
        )
        parser.add_argument(
            "--timeout", type=_timeout, default=default(5.0), metavar="SECONDS",
            help="deadline of the command, retries included (default 5)",
        )
        parser.add_argument(
            "--session", action="store_true", default=default(False),
            help="send the write in an exactly-once session (one more round trip)",
        )

    def consistency(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--consistency", choices=CONSISTENCIES, default="linearizable",
            help="linearizable (default), serializable (the answering node's state, maybe stale) "
                 "or lease (the leader's read lease)",
        )

    parser = _Parser(
        prog="kvpaxos", streams=streams,
        description="Read and write a kvpaxos cluster.",
        epilog="Also: kvpaxos --action=put --key=K --value=V (and get, delete, append, status).",
    )
    global_options(parser, defaults=True)
    parser.add_argument("--action", choices=ACTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--key", dest="seed_key", help=argparse.SUPPRESS)
    parser.add_argument("--value", dest="seed_value", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, arguments, help_text in (
        ("put", ("key", "value"), "set KEY to VALUE"),
        ("get", ("key",), "print the value of KEY"),
        ("delete", ("key",), "delete KEY"),
        ("append", ("key", "value"), "append VALUE to KEY's value and print the result"),
        ("status", (), "print each endpoint's view of the cluster"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text, streams=streams)
        for argument in arguments:
            command.add_argument(argument, metavar=argument.upper())
        if name == "get":
            consistency(command)
        global_options(command, defaults=False)

    help_text = "print the keys in [START, END) (every key from START on without END) and their values"
    command = commands.add_parser("range", help=help_text, description=help_text, streams=streams)
    command.add_argument("key", metavar="START")
    command.add_argument("end", metavar="END", nargs="?")
    command.add_argument("--prefix", action="store_true", help="every key starting with START (no END)")
    command.add_argument("--limit", type=_count, default=0, metavar="N", help="at most N keys (default: all)")
    command.add_argument("--keys-only", action="store_true", help="print keys without values")
    command.add_argument("--count-only", action="store_true", help="print how many keys there are")
    consistency(command)
    global_options(command, defaults=False)

    help_text = "set KEY to VALUE if it holds OLD, has version N, or does not exist"
    command = commands.add_parser("cas", help=help_text, description=help_text, streams=streams)
    command.add_argument("key", metavar="KEY")
    command.add_argument("value", metavar="VALUE")
    expectation = command.add_mutually_exclusive_group(required=True)
    expectation.add_argument("--expect", metavar="OLD", help="swap if the value is OLD")
    expectation.add_argument("--expect-version", type=_count, metavar="N", help="swap if the key's version is N")
    expectation.add_argument("--expect-absent", action="store_true", help="swap if the key does not exist")
    global_options(command, defaults=False)

    help_text = "apply the --then operations if every --compare holds, else the --else ones, atomically"
    command = commands.add_parser(
        "txn", help=help_text, description=help_text, epilog=TXN_HELP, streams=streams,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--compare", action="append", default=[], metavar="EXPR", help="a condition (repeatable)")
    command.add_argument("--then", action="append", default=[], metavar="OP", help="run if all hold (repeatable)")
    command.add_argument("--else", dest="otherwise", action="append", default=[], metavar="OP",
                         help="run otherwise (repeatable)")
    global_options(command, defaults=False)
    return parser


@dataclass(frozen=True)
class Expectation:
    """What C{cas} expects: exactly one of the three."""

    value: Optional[bytes] = None
    version: Optional[int] = None
    absent: bool = False


@dataclass(frozen=True)
class TxnSpec:
    """The parsed C{txn} flags, as protobuf messages."""

    compares: tuple
    success: tuple
    failure: tuple


@dataclass(frozen=True)
class Invocation:
    """What the command line asks for."""

    action: str
    key: Optional[bytes]
    value: Optional[bytes]
    key_text: Optional[str]
    endpoints: list[str]
    json: bool
    timeout_s: float
    session: bool = False
    consistency: str = "linearizable"
    #: range: END (None: every key from START on), --prefix, --limit, ...
    end: Optional[bytes] = None
    prefix: bool = False
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    expect: Optional[Expectation] = None
    txn: Optional[TxnSpec] = None


def _utf8(text: Optional[str]) -> Optional[bytes]:
    # surrogateescape gives back the exact bytes of an argument that was not
    # valid UTF-8 in the first place.
    return None if text is None else text.encode("utf-8", "surrogateescape")


class TxnSyntaxError(ValueError):
    """A C{--compare}, C{--then} or C{--else} expression does not parse (the user's fault)."""


_CALL = re.compile(r"^(\w+)\((.*)\)$", re.DOTALL)
_NUMERIC_TARGETS = {
    "version": kvclient.compare_version,
    "create": kvclient.compare_create_revision, "create_revision": kvclient.compare_create_revision,
    "mod": kvclient.compare_mod_revision, "mod_revision": kvclient.compare_mod_revision,
}


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise TxnSyntaxError(f"{text!r}: {error}") from None


def parse_compare(text: str) -> kv_pb2.Compare:
    """
    Return the C{Compare} that C{text} (C{"value(k) == v"}, ...; see
    L{TXN_HELP}) describes.

    @raise TxnSyntaxError: it does not parse.
    """
    words = _words(text)
    match = _CALL.match(words[0]) if words else None
    if match is None or len(words) not in (1, 3):
        raise TxnSyntaxError(f"{text!r} is not TARGET(KEY) OP OPERAND")
    target, key = match.group(1), _utf8(match.group(2))
    if target == "exists":
        if len(words) == 1:
            return kvclient.compare_exists(key)
        op, operand = words[1], words[2].lower()
        if op not in ("==", "!=") or operand not in ("true", "false"):
            raise TxnSyntaxError(f"{text!r}: exists(KEY) compares with == or != to true or false")
        return kvclient.compare_exists(key, (operand == "true") == (op == "=="))
    if len(words) != 3:
        raise TxnSyntaxError(f"{text!r} needs an operator and an operand")
    op, operand = words[1], words[2]
    try:
        if target == "value":
            return kvclient.compare_value(key, op, _utf8(operand))
        if target in _NUMERIC_TARGETS:
            if not operand.isdigit():
                raise TxnSyntaxError(f"{text!r}: {target} compares with a whole number")
            return _NUMERIC_TARGETS[target](key, op, int(operand))
    except kvclient.InvalidArgument as error:
        raise TxnSyntaxError(f"{text!r}: {error}") from None
    raise TxnSyntaxError(f"{text!r}: unknown target {target!r} (value, version, create, mod, exists)")


def parse_op(text: str) -> kv_pb2.RequestOp:
    """
    Return the C{RequestOp} that C{text} (C{"put k v"}, C{"delete k"},
    C{"get k"}, C{"range a [b]"}) describes.

    @raise TxnSyntaxError: it does not parse.
    """
    words = _words(text)
    name, args = (words[0], [_utf8(word) for word in words[1:]]) if words else ("", [])
    if name == "put" and len(args) == 2:
        return kvclient.put_op(*args)
    if name == "delete" and len(args) == 1:
        return kvclient.delete_op(args[0])
    if name == "get" and len(args) == 1:
        return kvclient.get_op(args[0])
    if name == "range" and len(args) in (1, 2):
        return kvclient.range_op(args[0], args[1] if len(args) == 2 else kvclient.TO_THE_END)
    raise TxnSyntaxError(f"{text!r} is not put KEY VALUE, delete KEY, get KEY or range START [END]")


def _parse_txn(args) -> TxnSpec:
    return TxnSpec(
        tuple(map(parse_compare, args.compare)), tuple(map(parse_op, args.then)), tuple(map(parse_op, args.otherwise)))


def parse(argv: Sequence[str], stdout: BinaryIO, stderr: BinaryIO) -> Invocation:
    """
    Return the L{Invocation} C{argv} asks for.

    @raise _Exit: usage error (after printing it) or --help.
    """
    parser = build_parser(stdout, stderr)
    args = parser.parse_args(argv)
    seed_form = any(option is not None for option in (args.action, args.seed_key, args.seed_value))
    if args.command and seed_form:
        parser.error(f"give the command {args.command!r} or --action/--key/--value, not both")
    if args.command:
        action = args.command
        key, value = getattr(args, "key", None), getattr(args, "value", None)
    elif args.action:
        action, key, value = args.action, args.seed_key, args.seed_value
        if action in _KEYED and key is None:
            parser.error(f"--action={action} needs --key")
        if action in _VALUED and value is None:
            parser.error(f"--action={action} needs --value")
        if action not in _KEYED and key is not None:
            parser.error(f"--action={action} takes no --key")
        if action not in _VALUED and value is not None:
            parser.error(f"--action={action} takes no --value")
    else:
        parser.error("a command is required: " + ", ".join(COMMANDS))
    try:
        endpoints = parse_endpoints(args.endpoints)
    except BadEndpoint as error:
        parser.error(f"--endpoints: {error}")
    extra: dict[str, Any] = {}
    if action in ("get", "range"):
        extra["consistency"] = getattr(args, "consistency", "linearizable")
    if action == "range":
        if args.prefix and args.end is not None:
            parser.error("give END or --prefix, not both")
        extra.update(end=_utf8(args.end), prefix=args.prefix, limit=args.limit, keys_only=args.keys_only,
                     count_only=args.count_only)
    elif action == "cas":
        extra["expect"] = Expectation(_utf8(args.expect), args.expect_version, args.expect_absent)
    elif action == "txn":
        try:
            extra["txn"] = _parse_txn(args)
        except TxnSyntaxError as error:
            parser.error(str(error))
    return Invocation(action, _utf8(key), _utf8(value), key, endpoints, args.json, args.timeout,
                      session=args.session, **extra)


def _bytes_fields(name: str, value: bytes) -> dict[str, str]:
    """C{value} for JSON under C{name}: as text when it is UTF-8, else in base64 under C{name_base64}."""
    try:
        return {name: value.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(value).decode("ascii")}


def _value_fields(value: bytes) -> dict[str, str]:
    """A value for JSON: as text when it is UTF-8, else in base64."""
    return _bytes_fields("value", value)


def _kv_fields(kv: kv_pb2.KeyValue, keys_only: bool = False) -> dict[str, Any]:
    fields = {**_bytes_fields("key", kv.key), "version": kv.version,
              "create_revision": kv.create_revision, "mod_revision": kv.mod_revision}
    if not keys_only:
        fields.update(_value_fields(kv.value))
    return fields


def _header_fields(endpoint: str, header: kv_pb2.ResponseHeader) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "member_id": header.member_id,
        "leader_id": header.leader_id or None,
    }


class _Run:
    """Carries out one L{Invocation} with a L{Client}; each action returns an exit status."""

    def __init__(self, invocation: Invocation, client: Client, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.invocation = invocation
        self.client = client
        self.stdout = stdout
        self.stderr = stderr

    def error(self, message: str) -> None:
        self.stderr.write(f"kvpaxos: error: {message}\n".encode("utf-8", "replace"))

    def json(self, obj: dict) -> None:
        self.stdout.write(json.dumps(obj, sort_keys=True).encode("utf-8") + b"\n")

    def text(self, line: str) -> None:
        self.stdout.write(line.encode("utf-8") + b"\n")

    def run(self) -> int:
        try:
            action = {
                "put": self.do_put, "get": self.do_get, "delete": self.do_delete,
                "append": self.do_append, "status": self.do_status, "range": self.do_range,
                "cas": self.do_cas, "txn": self.do_txn,
            }[self.invocation.action]
            return action()
        except ClientError as failure:
            self.error(str(failure))
            return EXIT_FAILED

    def do_put(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.put_operation(i.key, i.value))
        if i.json:
            self.json({"key": i.key_text, "existed": response.existed, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_get(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.get_operation(i.key, i.consistency))
        if i.json:
            fields = _value_fields(response.value) if response.found else {}
            self.json({"key": i.key_text, "found": response.found, **fields, **_header_fields(endpoint, response.header)})
        elif response.found:
            self.stdout.write(response.value + b"\n")
        else:
            self.error("key not found")
        return EXIT_OK if response.found else EXIT_FAILED

    def do_delete(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.delete_operation(i.key))
        if i.json:
            self.json({"key": i.key_text, "deleted": response.deleted, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_append(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.append_operation(i.key, i.value))
        if i.json:
            self.json({
                "key": i.key_text, "existed": response.existed,
                **_value_fields(response.value), **_header_fields(endpoint, response.header),
            })
        else:
            self.stdout.write(response.value + b"\n")
        return EXIT_OK

    def _print_kvs(self, kvs, keys_only: bool) -> None:
        for kv in kvs:
            self.stdout.write(kv.key + b"\n")
            if not keys_only:
                self.stdout.write(kv.value + b"\n")

    def do_range(self) -> int:
        i = self.invocation
        end = kvclient.TO_THE_END if i.end is None and not i.prefix else i.end
        result = self.client.range(i.key, end, prefix=i.prefix, limit=i.limit, keys_only=i.keys_only,
                                   count_only=i.count_only, consistency=i.consistency)
        if i.json:
            obj = {"count": result.count, "more": result.more, "revision": result.revision}
            if not i.count_only:
                obj["kvs"] = [_kv_fields(kv, i.keys_only) for kv in result.kvs]
            self.json(obj)
        elif i.count_only:
            self.text(str(result.count))
        else:
            self._print_kvs(result.kvs, i.keys_only)
        return EXIT_OK

    def do_cas(self) -> int:
        i = self.invocation
        operation = kvclient.cas_operation(
            i.key, i.value, expected_value=i.expect.value, expected_version=i.expect.version,
            expected_absent=i.expect.absent)
        endpoint, response = self.client.call(operation)
        succeeded, current = kvclient.cas_result(response)
        if i.json:
            self.json({
                "key": i.key_text, "succeeded": succeeded,
                "current": None if current is None else _kv_fields(current),
                **_header_fields(endpoint, response.header),
            })
        elif succeeded:
            self.text("OK")
        elif current is None:
            self.error("not swapped: the key does not exist")
        else:
            self.error(f"not swapped: the key has version {current.version}")
        return EXIT_OK if succeeded else EXIT_FAILED

    def do_txn(self) -> int:
        i = self.invocation
        spec = i.txn
        operation = kvclient.txn_operation(spec.compares, spec.success, spec.failure)
        endpoint, response = self.client.call(operation)
        branch = spec.success if response.succeeded else spec.failure
        if i.json:
            results = []
            for op in response.responses:
                kind = op.WhichOneof("response")
                if kind == "response_put":
                    results.append({"put": {"existed": op.response_put.existed}})
                elif kind == "response_delete_range":
                    results.append({"delete": {"deleted": op.response_delete_range.deleted}})
                else:
                    found = op.response_range
                    results.append({"range": {"count": found.count, "more": found.more,
                                              "kvs": [_kv_fields(kv) for kv in found.kvs]}})
            self.json({"succeeded": response.succeeded, "responses": results,
                       **_header_fields(endpoint, response.header)})
        else:
            self.text("SUCCESS" if response.succeeded else "FAILURE")
            for request, op in zip(branch, response.responses):
                kind = op.WhichOneof("response")
                if kind == "response_put":
                    self.text("OK")
                elif kind == "response_delete_range":
                    self.text(str(op.response_delete_range.deleted))
                else:
                    self._print_kvs(op.response_range.kvs, request.request_range.keys_only)
        return EXIT_OK if response.succeeded else EXIT_FAILED

    def do_status(self) -> int:
        """Ask every endpoint (not just the first that answers), once each."""
        i = self.invocation
        members: list[dict[str, Any]] = []
        failed = False
        for endpoint in i.endpoints:
            try:
                response = self.client.member_status(endpoint)
            except ClientError as failure:
                failed = True
                members.append({"endpoint": endpoint, "error": str(failure)})
                continue
            members.append({
                "endpoint": endpoint,
                "member_id": response.member_id,
                "role": response.role,
                "leader_id": response.leader_id or None,
                "voters": list(response.voters),
                "learners": list(response.learners),
                "chosen_index": response.chosen_index,
                "applied_index": response.applied_index,
            })
        if i.json:
            self.json({"members": members})
        else:
            self._status_table(members)
        return EXIT_FAILED if failed else EXIT_OK

    def _status_table(self, members: list[dict[str, Any]]) -> None:
        def ids(values) -> str:
            return ",".join(map(str, values)) or "-"

        rows = [("ENDPOINT", "ID", "ROLE", "LEADER", "VOTERS", "LEARNERS", "CHOSEN", "APPLIED")]
        for member in members:
            if "error" in member:
                self.error(member["error"])
                continue
            rows.append((
                member["endpoint"], str(member["member_id"]), member["role"],
                str(member["leader_id"] or "-"), ids(member["voters"]), ids(member["learners"]),
                str(member["chosen_index"]), str(member["applied_index"]),
            ))
        if len(rows) == 1:
            return
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            self.text("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    channel_factory: Callable[[str], Any] = open_channel,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Optional[random.Random] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[BinaryIO] = None,
) -> int:
    """
    Run the C{kvpaxos} command; return its exit status.

    @param argv: the arguments (default C{sys.argv[1:]}).
    @param channel_factory: makes the gRPC channel to an endpoint; with
        C{sleep}, C{clock} and C{rng}, passed to the L{Client} (tests pass
        fakes).
    @param stdout: binary stream for output (default C{sys.stdout.buffer}).
    @param stderr: binary stream for errors (default C{sys.stderr.buffer}).
    """
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr.buffer if stderr is None else stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            invocation = parse(argv, stdout, stderr)
        except _Exit as exit:
            return exit.status
        try:
            if invocation.key is not None:
                validate(Op.PUT, invocation.key, invocation.value or b"")
        except InvalidArgument as error:
            stderr.write(f"kvpaxos: error: {error}\n".encode("utf-8"))
            return EXIT_USAGE
        client = Client(
            invocation.endpoints, timeout_s=invocation.timeout_s, session=invocation.session,
            channel_factory=channel_factory, sleep=sleep, clock=clock, rng=rng,
        )
        with client:
            return _Run(invocation, client, stdout, stderr).run()
    finally:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass


if __name__ == "__main__":
    sys.exit(main())
