"""
The C{kvpaxos} command's lock and election commands, etcdctl v3's, over
the client's recipes (L{kvpaxos.client.concurrency_blocking}):

    kvpaxos lock NAME [--ttl 10] [--max-wait S] [-- COMMAND ARG...]
        waits for the lock; with a COMMAND, runs it holding the lock (its
        environment has KVPAXOS_LOCK_KEY and KVPAXOS_LOCK_REV, the key's
        create revision: the fencing token), releases it and exits with
        the command's status; without, prints the key and its value (an
        empty line) as etcdctl does and holds the lock until interrupted
    kvpaxos elect NAME VALUE [--ttl 60] [--max-wait S]
        campaigns with VALUE; once leading prints the key and the value and
        leads until interrupted, then resigns
    kvpaxos elect NAME --listen
        prints the leader's key and value, then again at every change

The lease of the lock (the campaign) lives while the command runs, renewed
every third of C{--ttl}; if it is found gone, the command says so
(C{session expired}) and exits 1.  SIGINT or SIGTERM releases (resigns)
and exits 0; while still waiting for the lock it withdraws and exits 1.
C{--json}: one object per record (key, value, create revision, lease).
Parsing and printing only: the recipes are the client's business.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK, Actions, _kv_fields
from kvpaxos.client.txn_syntax import utf8_argument

__all__ = ["RECIPE_COMMANDS", "RecipeActions", "RecipeCommand", "add_commands", "command"]

#: The top-level commands this module adds.
RECIPE_COMMANDS = ("lock", "elect")
#: etcdctl's session TTLs: C{lock --ttl} defaults to 10 s, C{elect}'s session to 60 s.
LOCK_TTL, ELECT_TTL = 10, 60


@dataclass(frozen=True)
class RecipeCommand:
    """What a C{lock} or C{elect} command asks for."""

    name: str
    ttl: int
    #: lock: the command to run holding it (empty: hold until interrupted).
    command: tuple = ()
    #: elect: the value to campaign with (None: --listen).
    value: Optional[bytes] = None
    listen: bool = False
    #: How long to wait for the lock (None: as long as it takes).
    max_wait_s: Optional[float] = None


def _ttl(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"bad TTL {text!r}: a whole number of seconds, 1 or more")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more: {text!r}")
    return value


def add_commands(commands, streams, global_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the C{lock} and C{elect} parsers to C{commands} (the C{kvpaxos} subparsers)."""
    help_text = "hold the lock NAME while COMMAND runs (or, without one, until interrupted)"
    lock = commands.add_parser("lock", help=help_text, description=help_text, streams=streams)
    lock.add_argument("name", metavar="NAME")
    lock.add_argument("lock_argv", nargs="*", metavar="COMMAND",
                      help="the command to run holding the lock (after --, if it has options)")
    lock.add_argument("--ttl", type=_ttl, default=LOCK_TTL, metavar="SECONDS",
                      help=f"the TTL of the lock's lease (default {LOCK_TTL})")
    help_text = "campaign in the election NAME with VALUE and lead until interrupted, or (--listen) observe it"
    elect = commands.add_parser("elect", help=help_text, description=help_text, streams=streams)
    elect.add_argument("name", metavar="NAME")
    elect.add_argument("value", nargs="?", metavar="VALUE")
    elect.add_argument("--listen", "-l", action="store_true", help="print the leader and each change of it")
    elect.add_argument("--ttl", type=_ttl, default=ELECT_TTL, metavar="SECONDS",
                       help=f"the TTL of the campaign's lease (default {ELECT_TTL})")
    for parser in (lock, elect):
        parser.add_argument("--max-wait", type=_seconds, default=None, metavar="SECONDS",
                            help="give up (exit 1) if not acquired (elected) within SECONDS (default: wait)")
        global_options(parser)


def command(args: argparse.Namespace, error: Callable[[str], None]) -> RecipeCommand:
    """The L{RecipeCommand} of parsed C{args}; C{error} reports a usage error."""
    if args.command == "elect":
        if args.value is None and not args.listen:
            error("elect: give a VALUE to campaign with, or --listen")
        if args.value is not None and args.listen:
            error("elect: give a VALUE or --listen, not both")
        return RecipeCommand(args.name, args.ttl, value=utf8_argument(args.value), listen=args.listen,
                             max_wait_s=args.max_wait)
    return RecipeCommand(args.name, args.ttl, command=tuple(args.lock_argv), max_wait_s=args.max_wait)


@contextmanager
def _terminable() -> Iterator[None]:
    """While in the block, SIGTERM raises KeyboardInterrupt, as SIGINT does (main thread only)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt()
    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class RecipeActions(Actions):
    """
    The C{lock} and C{elect} actions (L{Actions}: errors, output, exit
    statuses).  C{run(argv, env)} runs a command and returns its status
    (tests pass a fake).
    """

    def __init__(self, invocation, client, stdout, stderr,
                 run: Optional[Callable[[list, dict], int]] = None) -> None:
        super().__init__(invocation, client, stdout, stderr)
        self._run = run or (lambda argv, env: subprocess.call(argv, env=env))

    @property
    def recipe(self) -> RecipeCommand:
        return self.invocation.recipe

    def _show(self, kv, lease_id: Optional[int] = None) -> None:
        if self.invocation.json:
            fields = _kv_fields(kv)
            if lease_id is not None:
                fields.update(lease=lease_id, lease_hex=f"{lease_id:016x}")
            self.json(fields)
        else:
            self.stdout.write(kv.key + b"\n" + kv.value + b"\n")
        self.stdout.flush()

    def _held(self, holder) -> int:
        """Print the holder's record; wait until interrupted (EXIT_OK) or its lease is found gone (EXIT_FAILED)."""
        record = self.client.get_kv(holder.key)
        if record is None or record.create_revision != holder.revision:
            self.error("lost on init: the key is gone")
            return EXIT_FAILED
        self._show(record, holder.lease.id)
        gone = threading.Event()
        stop_listening = holder.when_lost(gone.set)
        try:
            gone.wait()
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            stop_listening()
        self.error("session expired: the lease is gone, and with it the key")
        return EXIT_FAILED

    def _wait(self, turn: Callable[[], bool], what: str) -> bool:
        try:
            if turn():
                return True
        except KeyboardInterrupt:
            self.error(f"interrupted before {what}")
            return False
        self.error(f"not {what} within {self.recipe.max_wait_s:g}s")
        return False

    def do_lock(self) -> int:
        r = self.recipe
        lock = self.client.lock(r.name, ttl=r.ttl)
        with _terminable():
            if not self._wait(lambda: lock.acquire(r.max_wait_s), f"lock {r.name!r} was acquired"):
                return EXIT_FAILED
            try:
                if not r.command:
                    return self._held(lock)
                env = dict(os.environ, KVPAXOS_LOCK_KEY=lock.key.decode("utf-8", "replace"),
                           KVPAXOS_LOCK_REV=str(lock.revision))
                try:
                    status = self._run(list(r.command), env)
                except KeyboardInterrupt:
                    status = 128 + signal.SIGINT
                except OSError as error:
                    self.error(f"cannot run {r.command[0]!r}: {error}")
                    status = EXIT_FAILED
                if not lock.release():
                    self.error(f"lock {r.name!r} was lost while the command ran (its lease ended)")
                    return status or EXIT_FAILED
                return status
            finally:
                if lock.key is not None:
                    lock.release()

    def do_elect(self) -> int:
        r = self.recipe
        election = self.client.election(r.name, ttl=r.ttl)
        with _terminable():
            if r.listen:
                return self._listen(election)
            if not self._wait(lambda: election.campaign(r.value, r.max_wait_s), f"elected in {r.name!r}"):
                return EXIT_FAILED
            try:
                return self._held(election)
            finally:
                if election.key is not None:
                    election.resign()

    def _listen(self, election) -> int:
        with election.observe() as leaders:
            try:
                for leader in leaders:
                    self._show(leader)
            except KeyboardInterrupt:
                return EXIT_OK
        self.error("elect: observer lost")
        return EXIT_FAILED
