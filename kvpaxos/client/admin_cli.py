"""
The C{kvpaxos} command's admin commands, over a node's AMP admin port
(L{kvpaxos.api.admin}, sent with L{kvpaxos.client.admin_client}):

    kvpaxos [--admin HOST:PORT,...] [--json] [--timeout SECONDS] COMMAND
    kvpaxos member list                      the member set, the leader marked
    kvpaxos member add ID --peer HOST:PORT [--client HOST:PORT]
                                             add ID as a learner
    kvpaxos member promote ID                make learner ID a voter
    kvpaxos member remove ID [--force]       remove member ID
    kvpaxos leader transfer ID               hand leadership to voter ID
    kvpaxos endpoint status                  one row per admin address
    kvpaxos endpoint health                  healthy or not, why, and the round trip

C{--admin} defaults to the first node of the local cluster
(L{kvpaxos.api.admin.DEFAULT_ADMIN}).  C{member} and C{leader} commands go
to the first address that takes a connection (an address that refused one
was sent nothing); C{endpoint} commands ask every address, at once.  A
change answers with the member set after it.  C{--timeout} bounds each
address's exchange, connecting included; a change that timed out may still
be carried out.

Exit status: 0 success, 1 a request was refused or failed (C{endpoint}:
any address failed or is unhealthy), 2 bad usage (nothing sent).  Errors
are one line on stderr: C{kvpaxos: error: ...}.  Parsing the rest of the
command line is L{kvpaxos.client.cli}'s; this module adds its parsers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional

from twisted.internet import defer

from kvpaxos.api.admin import (
    DEFAULT_ADMIN, MemberAdd, MemberList, MemberPromote, MemberRemove, Status, TransferLeadership,
)
from kvpaxos.api.endpoints import BadEndpoint, join_host_port, split_host_port
from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output
from kvpaxos.client.admin_client import AdminCalls, AdminFailed, parse_admin_addresses, tcp_connector
from kvpaxos.client.snapshot_cli import SnapshotActions, add_snapshot_commands, restore_arguments
from kvpaxos.tls import TLSError, TLSFiles, client_files

__all__ = ["ADMIN_COMMANDS", "AdminActions", "AdminInvocation", "DEFAULT_ADMIN", "add_admin_options",
           "add_commands", "invocation", "main"]

#: The top-level commands this module adds, and their actions.
ADMIN_COMMANDS = {
    "member": ("list", "add", "promote", "remove"),
    "leader": ("transfer",),
    "endpoint": ("status", "health"),
    "snapshot": ("save", "status", "restore"),
}


def _member_id(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a member id (a whole number above 0): {text!r}")
    return int(text)


def _member_address(text: str) -> str:
    try:
        host, port = split_host_port(text)
    except BadEndpoint as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not host or port == 0:
        raise argparse.ArgumentTypeError(f"{text!r} needs a host and a port in 1..65535")
    return join_host_port(host, port)


def add_admin_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Add C{--admin} (default: the local cluster's first node; after a command, "not given")."""
    parser.add_argument(
        "--admin", default=DEFAULT_ADMIN if defaults else argparse.SUPPRESS, metavar="HOST:PORT,...",
        help=f"admin addresses for member, leader and endpoint commands (default {DEFAULT_ADMIN})",
    )


def add_commands(commands, streams, global_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """
    Add the C{member}, C{leader} and C{endpoint} parsers to C{commands} (the
    C{kvpaxos} subparsers); C{global_options(parser)} adds the options every
    command takes after its name.
    """
    def group(name: str, help_text: str):
        parser = commands.add_parser(name, help=help_text, description=help_text, streams=streams)
        global_options(parser)
        add_admin_options(parser, defaults=False)
        return parser.add_subparsers(dest="admin_action", metavar="ACTION", required=True)

    def action(actions, name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text, streams=streams)
        global_options(parser)
        add_admin_options(parser, defaults=False)
        return parser

    member = group("member", "list and change the member set (admin port)")
    action(member, "list", "print every member, its role and addresses, and which one leads")
    add = action(member, "add", "add member ID as a learner")
    add.add_argument("member_id", type=_member_id, metavar="ID")
    add.add_argument("--peer", type=_member_address, required=True, metavar="HOST:PORT",
                     help="the address its peers reach it on")
    add.add_argument("--client", type=_member_address, metavar="HOST:PORT",
                     help="the address it serves clients on (default: none yet)")
    action(member, "promote", "make learner ID a voter (refused until it has caught up)").add_argument(
        "member_id", type=_member_id, metavar="ID")
    remove = action(member, "remove", "remove member ID (refused if the voters left would lose their quorum)")
    remove.add_argument("member_id", type=_member_id, metavar="ID")
    remove.add_argument("--force", action="store_true", help="remove it even so")
    leader = group("leader", "hand leadership over (admin port)")
    action(leader, "transfer", "hand leadership to voter ID").add_argument("member_id", type=_member_id, metavar="ID")
    endpoint = group("endpoint", "each admin address's view and health")
    action(endpoint, "status", "print each address's id, role, leader, chosen and applied index")
    action(endpoint, "health", "print whether each address is healthy (answers and knows a leader), and why")
    add_snapshot_commands(group("snapshot", "save, check and restore snapshots of a node's state"), action)


@dataclass(frozen=True)
class AdminInvocation:
    """What an admin command line asks for."""

    #: C{"member list"}, C{"member add"}, ..., C{"endpoint health"}.
    action: str
    addresses: list[str]
    json: bool
    timeout_s: float
    member_id: Optional[int] = None
    peer: str = ""
    client: str = ""
    force: bool = False
    #: The client's TLS files (C{--cacert --cert --key}), or None: plaintext.
    tls: Optional[TLSFiles] = None
    #: snapshot: the file; restore: the flags passed on to kvpaxos.restore.
    path: str = ""
    restore: tuple = ()


def invocation(args: argparse.Namespace, error: Callable[[str], Any]) -> AdminInvocation:
    """Return the L{AdminInvocation} of parsed C{args}; C{error(message)} reports a usage error (and raises)."""
    try:
        addresses = parse_admin_addresses(args.admin)
    except BadEndpoint as failure:
        error(f"--admin: {failure}")
    return AdminInvocation(
        f"{args.command} {args.admin_action}", addresses, args.json, args.timeout,
        member_id=getattr(args, "member_id", None), peer=getattr(args, "peer", ""),
        client=getattr(args, "client", None) or "", force=getattr(args, "force", False),
        tls=_tls(args, error), path=getattr(args, "path", ""),
        restore=restore_arguments(args) if args.command == "snapshot" and args.admin_action == "restore" else (),
    )


def _tls(args, error) -> Optional[TLSFiles]:
    cacert, cert, key = (getattr(args, name, None) for name in ("cacert", "cert", "key_file"))
    if (cert is None) != (key is None):
        error("--cert and --key go together")
    return client_files(cacert, cert, key)


def _member_fields(answer: dict) -> list[dict[str, Any]]:
    return [{"member_id": m["id"], "role": m["role"], "peer_address": m["peer"], "client_address": m["client"]}
            for m in sorted(answer["members"], key=lambda m: m["id"])]


class AdminActions(SnapshotActions, Output):
    """Carries out one L{AdminInvocation} with L{AdminCalls}; each action returns an exit status."""

    def __init__(self, invocation: AdminInvocation, calls: AdminCalls, stdout: BinaryIO, stderr: BinaryIO) -> None:
        super().__init__(stdout, stderr)
        self.invocation = invocation
        self.calls = calls

    def table(self, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            self.text("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

    async def run(self) -> int:
        action = getattr(self, "do_" + self.invocation.action.replace(" ", "_"))
        try:
            return await action()
        except AdminFailed as failure:
            self.error(str(failure))
            return EXIT_FAILED

    async def _first(self, command: type, **arguments: Any) -> tuple[str, dict]:
        """Send C{command} to the first address that takes a connection; return it and the answer."""
        addresses = self.invocation.addresses
        for address in addresses:
            try:
                return address, await self.calls.call(address, command, **arguments)
            except AdminFailed as failure:
                if not failure.unsent or address == addresses[-1]:
                    raise
        raise AssertionError("no admin address")  # parse_admin_addresses never gives none

    def _members(self, address: str, answer: dict, done: Optional[str] = None) -> int:
        """Print a member list answer (after C{done}, the line saying what changed)."""
        if self.invocation.json:
            self.json({"admin": address, "cluster_id": answer["cluster_id"], "leader_id": answer.get("leader"),
                       "members": _member_fields(answer)})
            return EXIT_OK
        if done:
            self.text(done)
        rows = [("ID", "ROLE", "PEER", "CLIENT", "LEADER")]
        for member in _member_fields(answer):
            rows.append((str(member["member_id"]), member["role"], member["peer_address"] or "-",
                         member["client_address"] or "-", "*" if member["member_id"] == answer.get("leader") else ""))
        self.table(rows)
        return EXIT_OK

    async def do_member_list(self) -> int:
        address, answer = await self._first(MemberList)
        return self._members(address, answer)

    async def do_member_add(self) -> int:
        i = self.invocation
        address, answer = await self._first(MemberAdd, id=i.member_id, peer=i.peer, client=i.client)
        return self._members(address, answer, f"added member {i.member_id} as a learner")

    async def do_member_promote(self) -> int:
        i = self.invocation
        address, answer = await self._first(MemberPromote, id=i.member_id)
        return self._members(address, answer, f"promoted member {i.member_id} to voter")

    async def do_member_remove(self) -> int:
        i = self.invocation
        address, answer = await self._first(MemberRemove, id=i.member_id, force=i.force)
        return self._members(address, answer, f"removed member {i.member_id}")

    async def do_leader_transfer(self) -> int:
        i = self.invocation
        address, _ = await self._first(TransferLeadership, target=i.member_id)
        if i.json:
            self.json({"admin": address, "target": i.member_id})
        else:
            self.text(f"transferred leadership to member {i.member_id}")
        return EXIT_OK

    async def _each(self, one: Callable[[str], Any]) -> list[dict[str, Any]]:
        """C{await one(address)} for every address at once; a failure is a row C{{admin, error}}."""
        async def guarded(address: str) -> dict[str, Any]:
            try:
                return await one(address)
            except AdminFailed as failure:
                return {"admin": address, "error": str(failure)}
        return await defer.gatherResults([defer.ensureDeferred(guarded(a)) for a in self.invocation.addresses])

    async def _status(self, address: str) -> dict[str, Any]:
        status = await self.calls.call(address, Status)
        members = await self.calls.call(address, MemberList)
        kind = {m["id"]: m["role"] for m in members["members"]}.get(status["member_id"], "-")
        return {
            "admin": address, "member_id": status["member_id"], "role": status["role"], "membership": kind,
            "leader_id": status.get("leader"), "voters": list(status["voters"]), "learners": list(status["learners"]),
            "chosen_index": status["chosen_index"], "applied_index": status["applied_index"],
            "cluster_id": members["cluster_id"],
        }

    async def do_endpoint_status(self) -> int:
        rows = await self._each(self._status)
        failed = [row for row in rows if "error" in row]
        if self.invocation.json:
            self.json({"endpoints": rows})
        else:
            table = [("ENDPOINT", "ID", "ROLE", "MEMBER", "LEADER", "CHOSEN", "APPLIED")]
            for row in rows:
                if "error" not in row:
                    table.append((row["admin"], str(row["member_id"]), row["role"], row["membership"],
                                  str(row["leader_id"] or "-"), str(row["chosen_index"]), str(row["applied_index"])))
            if len(table) > 1:
                self.table(table)
        for row in failed:
            self.error(row["error"])
        return EXIT_FAILED if failed else EXIT_OK

    async def _health(self, address: str) -> dict[str, Any]:
        try:
            status, round_trip_s = await self.calls.timed(address, Status)
        except AdminFailed as failure:
            reason = str(failure).removeprefix(f"{address}: ")
            return {"admin": address, "healthy": False, "reason": reason, "took_ms": None}
        took_ms = round(round_trip_s * 1000, 3)
        leader = status.get("leader")
        reason = None if leader is not None else "knows no leader"
        return {"admin": address, "healthy": reason is None, "reason": reason, "took_ms": took_ms,
                "member_id": status["member_id"], "leader_id": leader}

    async def do_endpoint_health(self) -> int:
        rows = await self._each(self._health)
        unhealthy = [row for row in rows if not row["healthy"]]
        if self.invocation.json:
            self.json({"endpoints": rows})
        else:
            table = [("ENDPOINT", "HEALTH", "TOOK", "REASON")]
            for row in rows:
                took = "-" if row["took_ms"] is None else f"{row['took_ms']:.1f}ms"
                table.append((row["admin"], "healthy" if row["healthy"] else "unhealthy", took, row["reason"] or ""))
            self.table(table)
        if unhealthy:
            self.error(f"{len(unhealthy)} of {len(rows)} endpoints unhealthy")
        return EXIT_FAILED if unhealthy else EXIT_OK


def main(invocation: AdminInvocation, stdout: BinaryIO, stderr: BinaryIO, reactor=None,
         install_signal_handlers: bool = True) -> int:
    """
    Run one admin command: start C{reactor} (default: the global one),
    carry the command out over TCP, stop it; return the exit status.  A
    reactor runs once: call this once per process (tests pass a fresh
    reactor each time, without signal handlers).
    """
    if reactor is None:
        from twisted.internet import reactor
    outcome: list[Any] = []
    try:  # the TLS files load here, before the reactor runs
        connector = tcp_connector(reactor, invocation.timeout_s, invocation.tls)
    except TLSError as error:
        stderr.write(f"kvpaxos: error: {error}\n".encode("utf-8", "replace"))
        return EXIT_USAGE

    def start() -> None:
        calls = AdminCalls(connector, reactor, invocation.timeout_s)
        d = defer.ensureDeferred(AdminActions(invocation, calls, stdout, stderr).run())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=install_signal_handlers)
    if not outcome:
        stderr.write(b"kvpaxos: error: interrupted\n")
        return EXIT_FAILED
    if isinstance(outcome[0], int):
        return outcome[0]
    message = outcome[0].getErrorMessage() if hasattr(outcome[0], "getErrorMessage") else repr(outcome[0])
    stderr.write(f"kvpaxos: error: internal error: {message}\n".encode("utf-8", "replace"))
    return EXIT_FAILED
