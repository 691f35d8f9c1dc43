"""
The C{kvpaxos} command: reads and writes a kvpaxos cluster over gRPC.

    kvpaxos [--endpoints HOST:PORT,...] [--json] [--timeout SECONDS] COMMAND
    kvpaxos put KEY VALUE        prints OK
    kvpaxos get KEY              prints the value (exit 1: key not found)
    kvpaxos delete KEY           prints OK
    kvpaxos append KEY VALUE     prints the new value
    kvpaxos status               one row per endpoint

The seed's form works too: C{kvpaxos --action=put --key=k --value=v}.

A request goes to the endpoints in the order given until one answers; an
endpoint that is unreachable or answers UNAVAILABLE is skipped (so are
endpoints that time out, for get and status only: a write that timed out
may still be applied, and is not sent again).  Keys and values given on the
command line are encoded as UTF-8.

Exit status: 0 success, 1 the request failed (or the key was not found),
2 bad usage.  Errors are one line on stderr: C{kvpaxos: error: ...}.

Nothing here knows how the cluster works beyond the gRPC API
(C{proto/kvpaxos/v1/kv.proto}).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Sequence

import grpc

from kvpaxos.client_endpoints import DEFAULT_ENDPOINT, BadEndpoint, open_channel, parse_endpoints
from kvpaxos.kv.commands import InvalidArgument, Op, validate
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

ACTIONS = ("put", "get", "delete", "append", "status")
#: Actions that take a key, and those that take a value too.
_KEYED = {"put", "get", "delete", "append"}
_VALUED = {"put", "append"}

#: Status codes after which the next endpoint is tried: it may be served
#: there.  DEADLINE_EXCEEDED only for requests that are safe to repeat.
_RETRY_ALWAYS = frozenset({grpc.StatusCode.UNAVAILABLE})
_RETRY_READS = _RETRY_ALWAYS | {grpc.StatusCode.DEADLINE_EXCEEDED}


class GrpcConnection:
    """The stubs for one endpoint, over one channel."""

    def __init__(self, endpoint: str) -> None:
        self._channel = open_channel(endpoint)
        self.kv = kv_pb2_grpc.KVStub(self._channel)
        self.cluster = kv_pb2_grpc.ClusterStub(self._channel)

    def close(self) -> None:
        self._channel.close()


#: Makes the connection to one endpoint: an object with C{kv} (a KVStub),
#: C{cluster} (a ClusterStub) and C{close()}.
Connect = Callable[[str], Any]


class _Exit(Exception):
    """argparse wants to exit with C{status}."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RequestFailed(Exception):
    """The request failed on every endpoint tried; the message says why."""


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
            help=f"nodes to try, in order (default {DEFAULT_ENDPOINT})",
        )
        parser.add_argument(
            "--json", action="store_true", default=default(False),
            help="print one JSON object",
        )
        parser.add_argument(
            "--timeout", type=_timeout, default=default(5.0), metavar="SECONDS",
            help="deadline for each endpoint tried (default 5)",
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
        global_options(command, defaults=False)
    return parser


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


def _utf8(text: Optional[str]) -> Optional[bytes]:
    # surrogateescape gives back the exact bytes of an argument that was not
    # valid UTF-8 in the first place.
    return None if text is None else text.encode("utf-8", "surrogateescape")


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
        parser.error("a command is required: " + ", ".join(ACTIONS))
    try:
        endpoints = parse_endpoints(args.endpoints)
    except BadEndpoint as error:
        parser.error(f"--endpoints: {error}")
    return Invocation(action, _utf8(key), _utf8(value), key, endpoints, args.json, args.timeout)


def _describe(endpoint: str, error: grpc.RpcError) -> str:
    code = error.code()
    name = code.name if code is not None else "ERROR"
    return f"{endpoint}: {name}: {error.details() or 'no details'}"


def _request(
    invocation: Invocation, connect: Connect, call: Callable[[Any, float], Any], retry: frozenset
) -> tuple[str, Any]:
    """
    Return C{(endpoint, call(connection, timeout_s))} from the first endpoint
    that answers.

    @raise RequestFailed: an endpoint failed with a status not in C{retry},
        or every endpoint failed.
    """
    failures = []
    for endpoint in invocation.endpoints:
        connection = connect(endpoint)
        try:
            return endpoint, call(connection, invocation.timeout_s)
        except grpc.RpcError as error:
            if error.code() not in retry:
                raise RequestFailed(_describe(endpoint, error)) from None
            failures.append(_describe(endpoint, error))
        finally:
            connection.close()
    if len(failures) == 1:
        raise RequestFailed(failures[0])
    raise RequestFailed("no endpoint answered: " + "; ".join(failures))


def _value_fields(value: bytes) -> dict[str, str]:
    """A value for JSON: as text when it is UTF-8, else in base64."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def _header_fields(endpoint: str, header: kv_pb2.ResponseHeader) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "member_id": header.member_id,
        "leader_id": header.leader_id or None,
    }


class _Run:
    """Carries out one L{Invocation}; each action returns an exit status."""

    def __init__(self, invocation: Invocation, connect: Connect, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.invocation = invocation
        self.connect = connect
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
                "append": self.do_append, "status": self.do_status,
            }[self.invocation.action]
            return action()
        except RequestFailed as failure:
            self.error(str(failure))
            return EXIT_FAILED

    def do_put(self) -> int:
        i = self.invocation
        request = kv_pb2.PutRequest(key=i.key, value=i.value)
        endpoint, response = _request(i, self.connect, lambda c, t: c.kv.Put(request, timeout=t), _RETRY_ALWAYS)
        if i.json:
            self.json({"key": i.key_text, "existed": response.existed, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_get(self) -> int:
        i = self.invocation
        request = kv_pb2.GetRequest(key=i.key)
        endpoint, response = _request(i, self.connect, lambda c, t: c.kv.Get(request, timeout=t), _RETRY_READS)
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
        request = kv_pb2.DeleteRequest(key=i.key)
        endpoint, response = _request(i, self.connect, lambda c, t: c.kv.Delete(request, timeout=t), _RETRY_ALWAYS)
        if i.json:
            self.json({"key": i.key_text, "deleted": response.deleted, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_append(self) -> int:
        i = self.invocation
        request = kv_pb2.AppendRequest(key=i.key, value=i.value)
        endpoint, response = _request(i, self.connect, lambda c, t: c.kv.Append(request, timeout=t), _RETRY_ALWAYS)
        if i.json:
            self.json({
                "key": i.key_text, "existed": response.existed,
                **_value_fields(response.value), **_header_fields(endpoint, response.header),
            })
        else:
            self.stdout.write(response.value + b"\n")
        return EXIT_OK

    def do_status(self) -> int:
        """Ask every endpoint (not just the first that answers)."""
        i = self.invocation
        members: list[dict[str, Any]] = []
        failed = False
        for endpoint in i.endpoints:
            one = Invocation(i.action, None, None, None, [endpoint], i.json, i.timeout_s)
            try:
                _, response = _request(
                    one, self.connect, lambda c, t: c.cluster.Status(kv_pb2.StatusRequest(), timeout=t), frozenset()
                )
            except RequestFailed as failure:
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
    connect: Connect = GrpcConnection,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[BinaryIO] = None,
) -> int:
    """
    Run the C{kvpaxos} command; return its exit status.

    @param argv: the arguments (default C{sys.argv[1:]}).
    @param connect: makes the connection to an endpoint (tests pass a fake).
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
        return _Run(invocation, connect, stdout, stderr).run()
    finally:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass


if __name__ == "__main__":
    sys.exit(main())
