"""
Debian's C{etcdctl watch} against a real twistd kvpaxos node's etcd port
and against a real etcd (Debian's etcd-server) that the test starts: the
same commands, with the same writes between, must print the same lines
(L{tests.test_etcd_process} starts both, and kills both by pid).

Each watch runs in the background, its output read by a thread, every
wait bounded, and is killed by pid.  C{etcdctl watch} prints nothing when
its watch is created, so a watch of "now" is first synchronised: its key
is written until the watch prints the write, and what it printed until
then is left out; a watch from a past revision (C{--rev}) needs no such
step.  One etcd and one kvpaxos node for the whole class.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time

from twisted.trial.unittest import TestCase

from tests.test_etcd_process import COMMAND_S, SharedProcesses, etcdctl

#: The value that ends every scenario: once the watch prints it, it has printed everything before.
END = "the-end"
#: What a synchronising write's value starts with.
SYNC = "sync-"


class BackgroundWatch:
    """One C{etcdctl watch ARGUMENTS} in the background, its output read by a thread; L{stop} kills it by pid."""

    def __init__(self, endpoint: str, *arguments: str, interactive: bool = False) -> None:
        self.process = subprocess.Popen(
            ["etcdctl", "--endpoints", endpoint, "watch", *arguments],
            stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, ETCDCTL_API="3"))
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._errors: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self._lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self._errors), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, lines: list) -> None:
        for line in pipe:
            with self._lock:
                lines.append(line.decode("utf-8", "replace"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def errors(self) -> str:
        with self._lock:
            return "".join(self._errors)

    def tell(self, line: str) -> None:
        """Write C{line} to an interactive watch's input."""
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for(self, found, what: str, timeout_s: float = COMMAND_S) -> list[str]:
        """Wait (bounded) until C{found(lines)}; return the lines."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.lines()
            if found(lines):
                return lines
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the readers finish
                raise AssertionError(f"etcdctl watch exited ({self.process.returncode}) before {what}: "
                                     f"{self.lines()} {self.errors()!r}")
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout_s}s: {self.lines()} {self.errors()!r}")

    def wait_for_line(self, line: str) -> list[str]:
        return self.wait_for(lambda lines: line + "\n" in lines, repr(line))

    def stop(self) -> None:
        """Kill the watch (by its pid) and wait for it and its readers (bounded)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(10)
        if self.process.stdin is not None:
            self.process.stdin.close()


def after_sync(lines: list[str]) -> list[str]:
    """The lines after the last event of a synchronising write (its value's line)."""
    last = max(i for i, line in enumerate(lines) if line.startswith(SYNC))
    return lines[last + 1:]


def revision_of(endpoint: str, *put: str) -> int:
    """Run C{etcdctl put PUT...} and return the revision it made (etcd's)."""
    status, out, error = etcdctl(endpoint, "put", *put, "-w", "json")
    if status:
        raise AssertionError(f"put {put} failed on {endpoint}: {error}")
    return json.loads(out)["header"]["revision"]


class EtcdctlWatchTests(SharedProcesses, TestCase):
    """etcdctl watch prints the same from kvpaxos as from etcd."""

    size = 1

    def endpoints(self) -> list[tuple[str, str]]:
        return [("etcd", self.processes.etcd.endpoint), ("kvpaxos", self.processes.kvpaxos[0])]

    def run_all(self, endpoint: str, commands) -> None:
        """Run each etcdctl command (a tuple, or (tuple, stdin)) against C{endpoint}; each must succeed."""
        for command in commands:
            arguments, stdin = command if isinstance(command[0], tuple) else (command, "")
            status, _, error = etcdctl(endpoint, *arguments, stdin=stdin)
            self.assertEqual((status, error), (0, ""), f"{arguments} on {endpoint}")

    def watch_now(self, watch: tuple, sync_key: str, writes) -> dict:
        """
        On each endpoint: start C{etcdctl watch WATCH}, synchronise it by
        writing C{sync_key}, run C{writes}, then put C{sync_key} = L{END};
        return each endpoint's lines after the synchronisation.
        """
        printed = {}
        for name, endpoint in self.endpoints():
            background = BackgroundWatch(endpoint, *watch)
            try:
                for i in range(int(COMMAND_S / 0.2)):
                    self.run_all(endpoint, [("put", sync_key, f"{SYNC}{i}")])
                    try:
                        background.wait_for(lambda lines: any(line.startswith(SYNC) for line in lines),
                                            "a synchronising write", timeout_s=0.2)
                        break
                    except AssertionError:
                        if background.process.poll() is not None:
                            raise
                self.run_all(endpoint, writes)
                self.run_all(endpoint, [("put", sync_key, END)])
                printed[name] = after_sync(background.wait_for_line(END))
            finally:
                background.stop()
        return printed

    def watch_from(self, first: tuple, watch, writes, more, last_line: str = END) -> dict:
        """
        On each endpoint: put C{first} (revision R), run C{writes}, start
        C{etcdctl watch} with C{watch(R)}'s arguments, run C{more}; return
        each endpoint's lines once C{last_line} is printed.
        """
        printed = {}
        for name, endpoint in self.endpoints():
            start = revision_of(endpoint, *first)
            self.run_all(endpoint, writes)
            background = BackgroundWatch(endpoint, *watch(start))
            try:
                self.run_all(endpoint, more)
                printed[name] = background.wait_for_line(last_line)
            finally:
                background.stop()
        return printed

    def test_watch_a_key(self) -> None:
        """watch KEY: puts, a delete, a delete of nothing, a transaction, writes of other keys."""
        txn = 'value("wk/a") = "two words"\n\nput wk/a "in a txn"\nput wk/b y\n\nput wk/a failed\n\n'
        printed = self.watch_now(("wk/a",), "wk/a", [
            ("put", "wk/a", "1"), ("put", "wk/b", "x"), ("put", "wk/a", "two words"), (("txn",), txn),
            ("del", "wk/a"), ("del", "wk/a"), ("put", "wk/a", "again")])
        self.assertEqual(printed["kvpaxos"], printed["etcd"])
        self.assertEqual("".join(printed["etcd"]), "PUT\nwk/a\n1\nPUT\nwk/a\ntwo words\nPUT\nwk/a\nin a txn\n"
                                                   f"DELETE\nwk/a\n\nPUT\nwk/a\nagain\nPUT\nwk/a\n{END}\n")

    def test_watch_a_prefix(self) -> None:
        """watch --prefix: the prefix's keys only, a range delete's keys in key order, a txn's ops in order."""
        txn = '\nput wp/c 3\ndel wp/a\nput wq/out no\n\n\n'
        printed = self.watch_now(("wp/", "--prefix"), "wp/sync", [
            ("put", "wp/a", "1"), ("put", "wq", "out"), ("put", "wp/b", "2"), (("txn",), txn),
            ("del", "wp/", "--prefix"), ("put", "wp/a", "new")])
        self.assertEqual(printed["kvpaxos"], printed["etcd"])
        self.assertEqual("".join(printed["etcd"]), "PUT\nwp/a\n1\nPUT\nwp/b\n2\nPUT\nwp/c\n3\nDELETE\nwp/a\n\n"
                                                   "DELETE\nwp/b\n\nDELETE\nwp/c\n\nDELETE\nwp/sync\n\n"
                                                   f"PUT\nwp/a\nnew\nPUT\nwp/sync\n{END}\n")

    def test_watch_from_a_revision(self) -> None:
        """watch --rev N: every change from revision N on, then the live ones."""
        printed = self.watch_from(
            ("wr/a", "0"), lambda start: ("wr/a", "--rev", str(start + 1)),
            [("put", "wr/a", "1"), ("del", "wr/a"), ("put", "wr/b", "x"), ("put", "wr/a", "2")],
            [("put", "wr/a", "3"), ("put", "wr/a", END)])
        self.assertEqual(printed["kvpaxos"], printed["etcd"])
        self.assertEqual("".join(printed["etcd"]), f"PUT\nwr/a\n1\nDELETE\nwr/a\n\nPUT\nwr/a\n2\nPUT\nwr/a\n3\n"
                                                   f"PUT\nwr/a\n{END}\n")

    def test_watch_with_prev_kv(self) -> None:
        """watch --prefix --prev-kv --rev N: each event after its previous record (none for a created key)."""
        txn = '\nput wv/a "in a txn"\ndel wv/b\n\n\n'
        printed = self.watch_from(
            ("wv/a", "0"), lambda start: ("wv/", "--prefix", "--prev-kv", "--rev", str(start)),
            [("put", "wv/a", "1"), ("put", "wv/b", "b"), (("txn",), txn)],
            [("del", "wv/a"), ("put", "wv/a", END)])
        self.assertEqual(printed["kvpaxos"], printed["etcd"])
        self.assertEqual("".join(printed["etcd"]),
                         "PUT\nwv/a\n0\nPUT\nwv/a\n0\nwv/a\n1\nPUT\nwv/b\nb\nPUT\nwv/a\n1\nwv/a\nin a txn\n"
                         "DELETE\nwv/b\nb\nwv/b\n\nDELETE\nwv/a\nin a txn\nwv/a\n\nPUT\nwv/a\n" + END + "\n")

    def test_json_revisions(self) -> None:
        """watch -w json --prev-kv --rev N: etcd's responses and records, revisions counted from N (ids aside)."""
        answers = {}
        for name, endpoint in self.endpoints():
            base = revision_of(endpoint, "wj/a", "0")
            self.run_all(endpoint, [("put", "wj/a", "1"), ("del", "wj/a"), ("put", "wj/a", "2")])
            background = BackgroundWatch(endpoint, "wj/a", "-w", "json", "--prev-kv", "--rev", str(base))
            try:
                background.wait_for(lambda lines: any(_value(b"2") in line for line in lines), "the past events")
                self.run_all(endpoint, [("put", "wj/a", "3")])
                lines = background.wait_for(lambda lines: any(_value(b"3") in line for line in lines),
                                            "the live event")
            finally:
                background.stop()
            answers[name] = [relative(json.loads(line), base) for line in lines]
        self.assertEqual(answers["kvpaxos"], answers["etcd"])
        self.assertEqual([len(answer["Events"]) for answer in answers["etcd"]], [4, 1])
        self.assertEqual([answer["revision"] for answer in answers["etcd"]], [3, 4])

    def test_progress(self) -> None:
        """watch -i, then "progress": the member's revision, once the watch has caught up."""
        for name, endpoint in self.endpoints():
            background = BackgroundWatch(endpoint, "-i", interactive=True)
            try:
                background.tell("watch wg/a")
                for i in range(int(COMMAND_S / 0.2)):
                    revision = revision_of(endpoint, "wg/a", f"{SYNC}{i}")
                    try:
                        background.wait_for(lambda lines: any(line.startswith(SYNC) for line in lines),
                                            "a synchronising write", timeout_s=0.2)
                        break
                    except AssertionError:
                        if background.process.poll() is not None:
                            raise
                background.tell("progress")
                lines = background.wait_for(lambda lines: any(line.startswith("progress") for line in lines),
                                            "a progress notification")
                self.assertEqual([line for line in lines if line.startswith("progress")],
                                 [f"progress notify: {revision}\n"], name)
            finally:
                background.stop()


def _value(value: bytes) -> str:
    """How etcdctl's JSON writes a record's C{value}."""
    return '"value":"%s"' % base64.b64encode(value).decode()


def relative(response: dict, base: int) -> dict:
    """A response of etcdctl's JSON with its revisions counted from C{base}, and no cluster, member or term."""
    response["revision"] = response.pop("Header")["revision"] - base
    for event in response.get("Events") or ():
        for field in ("kv", "prev_kv"):
            record = event.get(field) or {}
            for revision in ("create_revision", "mod_revision"):
                if record.get(revision):
                    record[revision] -= base
    return response
