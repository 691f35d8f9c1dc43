"""
The C{kvpaxos} command: reads and writes a kvpaxos cluster over gRPC, with
the client library (L{kvpaxos.client}).  Parsing lives here; the
txn expressions are L{kvpaxos.client.txn_syntax}'s, carrying out a
command L{kvpaxos.client.actions}', and the auth commands (their parsing
and actions) L{kvpaxos.client.auth_cli}'s.

    kvpaxos [--endpoints HOST:PORT,...] [--json] [--timeout SECONDS] [--session]
            [--user NAME[:PASSWORD]] [--password PASSWORD] COMMAND
    kvpaxos put KEY VALUE [--lease ID]
                                 prints OK (--lease: the key goes with that lease; ID in hex)
    kvpaxos get KEY              prints the value (exit 1: key not found)
    kvpaxos delete KEY           prints OK
    kvpaxos append KEY VALUE     prints the new value
    kvpaxos range START [END]    prints each key and value on lines of their own
    kvpaxos watch KEY [END] [--prefix] [--rev N] [--prev-kv] [--max-events N]
                                 prints each change as etcdctl does: PUT or DELETE, key, value
    kvpaxos cas KEY VALUE --expect OLD | --expect-version N | --expect-absent
                                 prints OK (exit 1: not swapped)
    kvpaxos txn --compare C ... --then OP ... --else OP ...
                                 prints SUCCESS or FAILURE, then each op's result
    kvpaxos compact REV [--physical]
                                 drops the history of writes below revision REV; prints as
                                 etcdctl does: compacted revision REV
    kvpaxos status               one row per endpoint
    kvpaxos lease grant TTL | lease revoke ID | lease keep-alive ID [--once]
        | lease timetolive ID [--keys] | lease list
                                 etcdctl's lease commands and lines: L{kvpaxos.client.lease_cli}
    kvpaxos lock NAME [-- COMMAND...] | elect NAME VALUE | elect NAME --listen
                                 etcdctl's lock and elect: L{kvpaxos.client.lock_cli}
    kvpaxos user add NAME[:PASSWORD] [--new-user-password P] [--no-password]
        | user delete NAME | user get NAME [--detail] | user list | user passwd NAME
        | user grant-role USER ROLE | user revoke-role USER ROLE
    kvpaxos role add NAME | role delete NAME | role get NAME | role list
        | role grant-permission ROLE read|write|readwrite KEY [END] [--prefix|--from-key]
        | role revoke-permission ROLE KEY [END] [--prefix|--from-key]
    kvpaxos auth enable | auth disable | auth status
                                 etcdctl's auth commands: L{kvpaxos.client.auth_cli}
    kvpaxos [--admin HOST:PORT,...] member list | member add ID --peer HOST:PORT [--client HOST:PORT]
        | member promote ID | member remove ID [--force] | leader transfer ID
        | endpoint status | endpoint health
                                 over the admin port: L{kvpaxos.client.admin_cli}

C{get} and C{range} take C{--consistency linearizable|serializable|lease};
C{range} also C{--prefix}, C{--limit N}, C{--keys-only}, C{--count-only}.
The seed's form works too: C{kvpaxos --action=put --key=k --value=v}.
Once auth is enabled, C{--user} names the user every command acts as (its
password is asked for on a terminal when not given).

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
(C{proto/kvpaxos/v1/kv.proto}).  Run it as C{kvpaxos} (the console
script) or C{python -m kvpaxos.client.cli}.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Sequence, Union

from kvpaxos.api.endpoints import DEFAULT_ENDPOINT, BadEndpoint, parse_endpoints
from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import check_key, check_value
from kvpaxos.client import admin_cli, auth_cli, lease_cli, lock_cli
from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Actions
from kvpaxos.client.blocking import Client, open_channel, tls_channel_factory
from kvpaxos.tls import TLSError
from kvpaxos.client.txn_syntax import TXN_HELP, TxnSyntaxError, parse_compare, parse_op
from kvpaxos.client.txn_syntax import utf8_argument as _utf8

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Invocation", "main", "parse"]

#: The actions of the seed's C{--action=} form.
ACTIONS = ("put", "get", "delete", "append", "status")
COMMANDS = (ACTIONS + ("range", "watch", "cas", "txn", "compact") + tuple(lease_cli.LEASE_COMMANDS)
            + tuple(lock_cli.RECIPE_COMMANDS) + tuple(auth_cli.AUTH_COMMANDS) + tuple(admin_cli.ADMIN_COMMANDS))
#: Actions that take a key, and those that take a value too.
_KEYED = {"put", "get", "delete", "append"}
_VALUED = {"put", "append"}

CONSISTENCIES = ("linearizable", "serializable", "lease")

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

    def global_options(parser: argparse.ArgumentParser, defaults: bool, grpc: bool = True) -> None:
        # The same options after a command too (kvpaxos get k --json); there
        # they default to "not given" so they don't override the ones before.
        # An admin command takes --json and --timeout, not the gRPC ones.
        def default(value):
            return value if defaults else argparse.SUPPRESS

        if grpc:
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
        if grpc:
            parser.add_argument(
                "--session", action="store_true", default=default(False),
                help="send the write in an exactly-once session (one more round trip)",
            )
        parser.add_argument(
            "--cacert", default=default(None), metavar="FILE",
            help="TLS: verify the nodes' certificates with this CA (PEM); gives TLS (default plaintext)",
        )
        parser.add_argument("--cert", default=default(None), metavar="FILE",
                            help="TLS: this client's certificate (PEM), for nodes that ask for one")
        if grpc:
            auth_cli.add_user_options(parser, defaults)
        if not defaults:
            # At the top level --key is also the seed form's (--action=put
            # --key=K): there it is the TLS key file only without --action.
            parser.add_argument("--key", dest="key_file", default=argparse.SUPPRESS, metavar="FILE",
                                help="TLS: the private key (PEM) of --cert")

    def consistency(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--consistency", choices=CONSISTENCIES, default="linearizable",
            help="linearizable (default), serializable (the answering node's state, maybe stale) "
                 "or lease (the leader's read lease)",
        )

    parser = _Parser(
        prog="kvpaxos", streams=streams,
        description="Read and write a kvpaxos cluster.",
        epilog="Also: kvpaxos --action=put --key=K --value=V (and get, delete, append, status). Once auth is"
               " enabled, give --user NAME[:PASSWORD] (asked for on a terminal when not given).",
    )
    global_options(parser, defaults=True)
    admin_cli.add_admin_options(parser, defaults=True)
    parser.add_argument("--action", choices=ACTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--key", dest="seed_key", metavar="FILE",
                        help="TLS: the private key (PEM) of --cert (with --action: the key to act on)")
    parser.add_argument("--key-file", dest="key_file", default=None, metavar="FILE",
                        help="TLS: the private key (PEM) of --cert, in any form (--action included)")
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
        if name == "put":
            command.add_argument("--lease", type=lease_cli.lease_id_argument, default=0, metavar="ID",
                                 help="attach KEY to this lease (its id in hex): it is deleted when the lease ends")
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

    help_text = "print the puts and deletes of KEY (or [KEY, END), or every key starting with KEY) as they happen"
    command = commands.add_parser("watch", help=help_text, description=help_text, streams=streams)
    command.add_argument("key", metavar="KEY")
    command.add_argument("end", metavar="END", nargs="?")
    command.add_argument("--prefix", action="store_true", help="every key starting with KEY (no END)")
    command.add_argument("--rev", type=_count, default=0, metavar="N", help="from revision N (default: from now)")
    command.add_argument("--prev-kv", action="store_true", help="print each change's previous key and value too")
    command.add_argument("--max-events", type=_count, default=0, metavar="N", help="stop after N events (default: never)")
    global_options(command, defaults=False)

    help_text = "drop every event of a revision below REV from the history of writes (what a watch replays)"
    command = commands.add_parser("compact", help=help_text, description=help_text, streams=streams)
    command.add_argument("revision", type=_count, metavar="REV")
    command.add_argument("--physical", action="store_true",
                         help="accepted, as etcdctl's: the compaction is done when the command returns")
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

    lease_cli.add_commands(commands, streams, lambda command: global_options(command, defaults=False))
    lock_cli.add_commands(commands, streams, lambda command: global_options(command, defaults=False))
    auth_cli.add_commands(commands, streams, lambda command: global_options(command, defaults=False))
    admin_cli.add_commands(commands, streams, lambda command: global_options(command, defaults=False, grpc=False))
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
    #: (cacert, cert, key) for TLS, or None.
    tls: Optional[tuple] = None
    #: --user and its password (None with a user: to be asked, L{auth_cli.ask_passwords}).
    user: Optional[str] = None
    password: Optional[str] = None
    #: The user, role and auth commands: what they ask for.
    auth: Optional[auth_cli.AuthCommand] = None
    #: watch: --rev, --prev-kv, --max-events.
    watch: Optional["WatchSpec"] = None
    #: compact: REV.
    revision: Optional[int] = None
    #: put --lease: the lease (0: none).
    lease: int = 0
    #: The lease commands: what they ask for.
    lease_command: Optional[lease_cli.LeaseCommand] = None
    #: The lock and elect commands: what they ask for.
    recipe: Optional[lock_cli.RecipeCommand] = None


@dataclass(frozen=True)
class WatchSpec:
    """The parsed C{watch} flags."""

    revision: int = 0
    prev_kv: bool = False
    max_events: int = 0


def _parse_txn(args) -> TxnSpec:
    return TxnSpec(
        tuple(map(parse_compare, args.compare)), tuple(map(parse_op, args.then)), tuple(map(parse_op, args.otherwise)))


def parse(argv: Sequence[str], stdout: BinaryIO, stderr: BinaryIO) -> Union[Invocation, admin_cli.AdminInvocation]:
    """
    Return the L{Invocation} C{argv} asks for (an
    L{admin_cli.AdminInvocation} for the admin port's commands).

    @raise _Exit: usage error (after printing it) or --help.
    """
    parser = build_parser(stdout, stderr)
    args = parser.parse_args(argv)
    if args.action is None and args.seed_key is not None:
        # Without --action, a top-level --key names the TLS key file.
        if getattr(args, "key_file", None) is None:
            args.key_file = args.seed_key
        args.seed_key = None
    if not hasattr(args, "key_file"):
        args.key_file = None
    seed_form = any(option is not None for option in (args.action, args.seed_key, args.seed_value))
    if args.command and seed_form:
        parser.error(f"give the command {args.command!r} or --action/--key/--value, not both")
    if args.command in admin_cli.ADMIN_COMMANDS:
        return admin_cli.invocation(args, parser.error)
    extra: dict[str, Any] = {}
    if args.command in auth_cli.AUTH_COMMANDS:
        extra["auth"] = auth_cli.command(args)
        action, key, value = extra["auth"].action, None, None
    elif args.command in lease_cli.LEASE_COMMANDS:
        extra["lease_command"] = lease_cli.command(args)
        action, key, value = extra["lease_command"].action, None, None
    elif args.command in lock_cli.RECIPE_COMMANDS:
        extra["recipe"] = lock_cli.command(args, parser.error)
        action, key, value = args.command, None, None
    elif args.command:
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
    extra["user"], extra["password"] = auth_cli.user_option(args, parser.error)
    if action in ("get", "range"):
        extra["consistency"] = getattr(args, "consistency", "linearizable")
    if action == "range":
        if args.prefix and args.end is not None:
            parser.error("give END or --prefix, not both")
        extra.update(end=_utf8(args.end), prefix=args.prefix, limit=args.limit, keys_only=args.keys_only,
                     count_only=args.count_only)
    elif action == "watch":
        if args.prefix and args.end is not None:
            parser.error("give END or --prefix, not both")
        extra.update(end=_utf8(args.end), prefix=args.prefix, watch=WatchSpec(args.rev, args.prev_kv, args.max_events))
    elif action == "compact":
        extra["revision"] = args.revision
    elif action == "put" and args.command:
        extra["lease"] = args.lease
    elif action == "cas":
        extra["expect"] = Expectation(_utf8(args.expect), args.expect_version, args.expect_absent)
    elif action == "txn":
        try:
            extra["txn"] = _parse_txn(args)
        except TxnSyntaxError as error:
            parser.error(str(error))
    return Invocation(action, _utf8(key), _utf8(value), key, endpoints, args.json, args.timeout,
                      session=args.session, tls=tls_options(args, parser.error), **extra)


def tls_options(args, error) -> Optional[tuple]:
    """C{(cacert, cert, key)} of C{--cacert --cert --key}, or None (plaintext); C{error} reports a bad mix."""
    tls = (args.cacert, args.cert, args.key_file)
    if tls == (None, None, None):
        return None
    if (args.cert is None) != (args.key_file is None):
        error("--cert and --key go together")
    return tls


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    channel_factory: Callable[[str], Any] = open_channel,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Optional[random.Random] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[BinaryIO] = None,
    admin_reactor=None,
    getpass: Callable[[str], str] = auth_cli.read_password,
    isatty: Callable[[], bool] = auth_cli.stdin_is_a_terminal,
) -> int:
    """
    Run the C{kvpaxos} command; return its exit status.

    @param argv: the arguments (default C{sys.argv[1:]}).
    @param channel_factory: makes the gRPC channel to an endpoint; with
        C{sleep}, C{clock} and C{rng}, passed to the L{Client} (tests pass
        fakes).
    @param stdout: binary stream for output (default C{sys.stdout.buffer}).
    @param stderr: binary stream for errors (default C{sys.stderr.buffer}).
    @param admin_reactor: the reactor the admin commands run (default the
        global one; tests pass a fresh one, run without signal handlers).
    @param getpass: asks for a password not given (prompt -> password),
        when C{isatty()} says stdin is a terminal.
    """
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr.buffer if stderr is None else stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            invocation = parse(argv, stdout, stderr)
        except _Exit as exit:
            return exit.status
        if isinstance(invocation, admin_cli.AdminInvocation):
            return admin_cli.main(invocation, stdout, stderr, reactor=admin_reactor,
                                  install_signal_handlers=admin_reactor is None)
        try:
            if invocation.key is not None:
                check_key(invocation.key)
                check_value(invocation.value or b"")
        except InvalidArgument as error:
            stderr.write(f"kvpaxos: error: {error}\n".encode("utf-8"))
            return EXIT_USAGE
        if invocation.tls is not None and channel_factory is open_channel:
            try:
                channel_factory = tls_channel_factory(open_channel, *invocation.tls)
            except TLSError as error:
                stderr.write(f"kvpaxos: error: {error}\n".encode("utf-8"))
                return EXIT_USAGE
        try:
            invocation = auth_cli.ask_passwords(invocation, getpass, isatty)
        except auth_cli.NoPassword as error:
            stderr.write(f"kvpaxos: error: {error}\n".encode("utf-8", "replace"))
            return EXIT_USAGE
        client = Client(
            invocation.endpoints, timeout_s=invocation.timeout_s, session=invocation.session,
            channel_factory=channel_factory, sleep=sleep, clock=clock, rng=rng,
            stream=False,  # one request per command: a stream would save nothing
            user=invocation.user, password=invocation.password,
        )
        with client:
            if invocation.lease_command is not None:
                return lease_cli.LeaseActions(invocation, client, stdout, stderr, sleep=sleep, clock=clock).run()
            if invocation.recipe is not None:
                return lock_cli.RecipeActions(invocation, client, stdout, stderr).run()
            actions = Actions if invocation.auth is None else auth_cli.AuthActions
            return actions(invocation, client, stdout, stderr).run()
    finally:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass


if __name__ == "__main__":
    sys.exit(main())
