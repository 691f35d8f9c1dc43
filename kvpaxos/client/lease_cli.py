"""
The C{kvpaxos} command's lease commands, etcdctl v3's, over
C{kvpaxos.v1.Lease} with the client's lease calls (L{kvpaxos.client.lease}):

    kvpaxos lease grant TTL                  lease 694d5765fc71500b granted with TTL(60s)
    kvpaxos lease revoke ID                  lease 694d5765fc71500b revoked
    kvpaxos lease keep-alive ID [--once]     lease 694d5765fc71500b keepalived with TTL(60)
    kvpaxos lease timetolive ID [--keys]     lease 694d5765fc71500b granted with TTL(60s), remaining(59s)
                                             [, attached keys([a b])]   (or: ... already expired)
    kvpaxos lease list                       found 2 leases, then one id a line
    kvpaxos put KEY VALUE --lease ID         (L{kvpaxos.client.cli})

Ids are written and read in hexadecimal, as etcdctl prints them (16
digits; a C{0x} prefix is accepted).  C{keep-alive} without C{--once}
renews the lease every third of its TTL until it is gone (then it prints
etcdctl's C{lease ID expired or revoked.} and exits 0) or the command is
interrupted; a renewal that fails (UNAVAILABLE past C{--timeout}) is an
error line, and the next is tried soon after.  With C{--json}, one object
per answer (ids as numbers, and C{id_hex}).  A lease that does not exist
(revoke, keep-alive C{--once}) is an error line and exit 1.

Parsing and printing only: the lease calls are the client's business.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Callable

from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK, Actions, _bytes_fields
from kvpaxos.client.errors import Unavailable
from kvpaxos.client.lease import RETRY_S, Renewals
from kvpaxos.client.requests import MAX_LEASE_ID, MAX_LEASE_TTL

__all__ = ["LEASE_COMMANDS", "LeaseActions", "LeaseCommand", "add_commands", "command", "lease_id_argument"]

#: The top-level commands this module adds.
LEASE_COMMANDS = ("lease",)


@dataclass(frozen=True)
class LeaseCommand:
    """What a C{lease} command asks for."""

    #: C{"lease grant"}, C{"lease keep-alive"}, ...
    action: str
    #: The lease (grant: 0).
    lease_id: int = 0
    #: grant: the TTL asked for.
    ttl: int = 0
    #: keep-alive --once; timetolive --keys.
    once: bool = False
    keys: bool = False


def lease_id_argument(text: str) -> int:
    """A lease id given in hex (etcdctl's form; C{0x} allowed), 1 to 2**63 - 1: argparse's type."""
    digits = text[2:] if text.lower().startswith("0x") else text
    try:
        if not digits or digits.startswith(("-", "+")):
            raise ValueError(text)
        lease_id = int(digits, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad lease ID {text!r}: give it in hex, as etcdctl prints it "
                                         "(694d5765fc71500b)") from None
    if not 1 <= lease_id <= MAX_LEASE_ID:
        raise argparse.ArgumentTypeError(f"bad lease ID {text!r}: from 1 to {MAX_LEASE_ID:x} (hex)")
    return lease_id


def _ttl(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LEASE_TTL:
        raise argparse.ArgumentTypeError(f"bad TTL {text!r}: a whole number of seconds from 1 to {MAX_LEASE_TTL}")
    return int(text)


def add_commands(commands, streams, global_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """
    Add the C{lease} parsers to C{commands} (the C{kvpaxos} subparsers);
    C{global_options(parser)} adds the options every command takes after
    its name.
    """
    help_text = "grant, revoke, keep alive and list leases (keys that live while their lease does)"
    group = commands.add_parser("lease", help=help_text, description=help_text, streams=streams)
    global_options(group)
    actions = group.add_subparsers(dest="lease_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, lease_id: bool = True):
        parser = actions.add_parser(name, help=help_text, description=help_text, streams=streams)
        parser.set_defaults(lease_command=f"lease {name}")
        if lease_id:
            parser.add_argument("lease_id", type=lease_id_argument, metavar="ID", help="the lease's id, in hex")
        global_options(parser)
        return parser

    grant = action("grant", "grant a lease of TTL seconds (raised to the cluster's minimum)", lease_id=False)
    grant.add_argument("ttl", type=_ttl, metavar="TTL")
    action("revoke", "revoke a lease: its keys are deleted")
    keep_alive = action("keep-alive", "renew a lease every third of its TTL until it is gone (or once)")
    keep_alive.add_argument("--once", action="store_true", help="renew it once and exit")
    time_to_live = action("timetolive", "print a lease's TTL, the time it has left and (--keys) its keys")
    time_to_live.add_argument("--keys", action="store_true", help="print the keys attached to it too")
    action("list", "print the id of every lease", lease_id=False)


def command(args: argparse.Namespace) -> LeaseCommand:
    """The L{LeaseCommand} of parsed C{args}."""
    return LeaseCommand(args.lease_command, getattr(args, "lease_id", 0), getattr(args, "ttl", 0),
                        getattr(args, "once", False), getattr(args, "keys", False))


class LeaseActions(Actions):
    """
    The C{lease} actions (L{Actions}: errors, output, exit statuses).
    C{sleep} and C{clock} pace C{keep-alive} (tests pass fakes).
    """

    def __init__(self, invocation, client, stdout, stderr, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(invocation, client, stdout, stderr)
        self._sleep = sleep
        self._clock = clock

    @property
    def lease(self) -> LeaseCommand:
        return self.invocation.lease_command

    def _done(self, line: str, **fields: Any) -> None:
        if self.invocation.json:
            self.json(fields)
        else:
            self.text(line)
        self.stdout.flush()

    def do_lease_grant(self) -> int:
        response = self.client.lease_grant(self.lease.ttl)
        self._done(f"lease {response.id:016x} granted with TTL({response.ttl}s)",
                   id=response.id, id_hex=f"{response.id:016x}", ttl=response.ttl)
        return EXIT_OK

    def do_lease_revoke(self) -> int:
        lease_id = self.lease.lease_id
        self.client.lease_revoke(lease_id)
        self._done(f"lease {lease_id:016x} revoked", id=lease_id, id_hex=f"{lease_id:016x}", revoked=True)
        return EXIT_OK

    def _kept(self, lease_id: int, ttl: int) -> None:
        self._done(f"lease {lease_id:016x} keepalived with TTL({ttl})", id=lease_id, id_hex=f"{lease_id:016x}",
                   ttl=ttl)

    def do_lease_keep_alive(self) -> int:
        lease_id = self.lease.lease_id
        if self.lease.once:
            ttl = self.client.lease_keep_alive(lease_id)
            if ttl <= 0:
                self.error(f"requested lease not found: lease {lease_id:016x} does not exist (never granted, "
                           "revoked, or expired)")
                return EXIT_FAILED
            self._kept(lease_id, ttl)
            return EXIT_OK
        renewals = None
        try:
            while True:
                sent_at = self._clock()
                try:
                    ttl = self.client.lease_keep_alive(lease_id)
                except Unavailable as failure:  # tried again soon: the lease may still be alive
                    self.error(str(failure))
                    self._sleep(RETRY_S if renewals is None else min(RETRY_S, renewals.interval_s))
                    continue
                if ttl <= 0:
                    self._done(f"lease {lease_id:016x} expired or revoked.", id=lease_id,
                               id_hex=f"{lease_id:016x}", ttl=0)
                    return EXIT_OK
                self._kept(lease_id, ttl)
                if renewals is None:
                    renewals = Renewals(ttl, sent_at)
                renewals.answered(ttl, sent_at)
                self._sleep(renewals.delay_s(self._clock()))
        except KeyboardInterrupt:
            return EXIT_OK

    def do_lease_timetolive(self) -> int:
        lease_id = self.lease.lease_id
        response = self.client.lease_time_to_live(lease_id, self.lease.keys)
        fields = {"id": lease_id, "id_hex": f"{lease_id:016x}", "ttl": response.ttl,
                  "granted_ttl": response.granted_ttl}
        if self.lease.keys:
            fields["keys"] = [_bytes_fields("key", key) for key in response.keys]
        if response.ttl < 0 and response.granted_ttl == 0:
            self._done(f"lease {lease_id:016x} already expired", **fields)
            return EXIT_OK
        line = f"lease {lease_id:016x} granted with TTL({response.granted_ttl}s), remaining({response.ttl}s)"
        if self.lease.keys:
            # etcdctl prints Go's %v of a []string: [a b]
            line += f", attached keys([{' '.join(key.decode('utf-8', 'replace') for key in response.keys)}])"
        self._done(line, **fields)
        return EXIT_OK

    def do_lease_list(self) -> int:
        ids = self.client.leases()
        if self.invocation.json:
            self.json({"leases": [{"id": lease_id, "id_hex": f"{lease_id:016x}"} for lease_id in ids]})
            return EXIT_OK
        self.text(f"found {len(ids)} leases")
        for lease_id in ids:
            self.text(f"{lease_id:016x}")
        return EXIT_OK
