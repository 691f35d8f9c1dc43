"""
Scripted protocol traces with golden output, in the manner of etcd raft's
C{rafttest} interaction tests (C{testdata/*.txt}): a small script language
drives replicas of L{kvpaxos.paxos} by hand, and what they do (role changes,
each L{Ready}, each message delivered, the state asked for) is printed and
compared against the file.

A trace file is a sequence of blocks::

    # comments and blank lines between blocks are kept as they are
    propose 1 x
    ----
    ok

The line before C{----} is a command; the lines after it, up to a blank
line, are its expected output.  Run C{python -m kvpaxos.testing.traces
--rewrite FILE...} (or set C{KVPAXOS_REWRITE_TRACES=1} for the tests) to
write what the replicas print now in place of the expected output.

Commands (N is a node id; C{[N...]} means the listed nodes, all if none):

  - C{add-nodes COUNT [voters=1,2,3] [election=10] [heartbeat=2] [window=8]
    [snapshot=0] [fresh]}: start COUNT new replicas with the next ids, over
    fresh in-memory storage holding C{voters} (all nodes so far by default);
    past their start guard unless C{fresh}.
  - C{join N}: start node N with an empty member set (it joins later).
  - C{campaign N}: step an L{ElectionTimeout} into N (etcd's C{campaign}).
  - C{timeout N election|heartbeat|check-quorum}: step that timeout into N.
  - C{tick [COUNT] [N...]}: tick the nodes COUNT times (1 by default).
  - C{process [N...]}: perform one Ready of each node, printing it.
  - C{deliver [N...] [drop]}: step (or drop) the messages in flight to them.
  - C{stabilize [N...]}: process and deliver until nothing is left to do.
  - C{propose N CMD}, C{read-index N CTX}, C{lease-read N},
    C{transfer N TARGET}, C{change N add-voter|add-learner|promote|remove
    NODE}: the client requests (an error raised is printed).
  - C{forge-catchup-request SRC DST FIRST}: step into DST a CatchupRequest
    SRC never sent (DST's answer is unsolicited).
  - C{isolate N}, C{heal}: drop every message to or from N from now on;
    stop dropping.
  - C{restart N}: crash N (its messages in flight to it are lost with its
    unsaved state) and start it again from what it saved.
  - C{status [N...]}, C{log N}: print the state.

Nothing here is product code: it performs each Ready in the documented
order (save, send, apply, advance) and passes messages by reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import random
import sys
from typing import Optional

from kvpaxos.paxos import (
    NOOP,
    Ballot,
    Batch,
    CatchupRequest,
    ChangeKind,
    CheckQuorum,
    Config,
    ConfigChange,
    ElectionTimeout,
    HeartbeatTimeout,
    Options,
    Replica,
    Snapshot,
)
from kvpaxos.storage.memory import MemoryStorage

SEPARATOR = "----"


# --- formatting ----------------------------------------------------------------


def show(value) -> str:
    """Return C{value} (a message field) the way traces print it."""
    if isinstance(value, Ballot):
        return f"{value.round}.{value.node}"
    if value is NOOP:
        return "noop"
    if type(value) is Batch:
        return "[" + ",".join(c.decode("ascii", "replace") for c in value.commands) + "]"
    if type(value) is ConfigChange:
        return f"{value.kind.value}({value.node})"
    if type(value) is Config:
        return show_config(value)
    if type(value) is Snapshot:
        data = "none" if value.data is None else value.data.decode("ascii", "replace")
        return f"snapshot(index={value.index} {show_config(value.config)} data={data!r})"
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, tuple):
        return "(" + " ".join(show(v) for v in value) + ")"
    return str(value)


def show_config(config: Config) -> str:
    voters = ",".join(map(str, sorted(config.voters)))
    learners = ",".join(map(str, sorted(config.learners)))
    return f"voters={voters or '-'}" + (f" learners={learners}" if learners else "")


def show_message(message) -> str:
    """Return one line for C{message}: type, route, then non-default fields."""
    parts = [f"{message.src}->{message.dst} {type(message).__name__}"]
    for f in dataclasses.fields(message):
        if f.name in ("src", "dst"):
            continue
        value = getattr(message, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        parts.append(f"{f.name}={show(value)}")
    return " ".join(parts)


def show_role(role) -> str:
    ballot = "" if role.ballot is None else f" {show(role.ballot)}"
    return f"{role.name}{ballot}"


# --- the state machine ---------------------------------------------------------


class RecordingMachine:
    """Records the commands applied; its snapshot is them, comma-separated."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def apply(self, slot: int, value) -> None:
        if type(value) is Batch:
            self.commands.extend(c.decode("ascii", "replace") for c in value.commands)

    def snapshot(self) -> bytes:
        return ",".join(self.commands).encode("ascii")

    def restore(self, data: bytes) -> None:
        self.commands = data.decode("ascii").split(",") if data else []


class TracedReplica(Replica):
    """A replica that prints its role changes into the trace, as they happen."""

    trace: Optional["Trace"] = None

    def become(self, role) -> None:
        if self.trace is not None:
            self.trace.out.append(f"{self.id} becomes {show_role(role)}")
        super().become(role)


# --- the driver ------------------------------------------------------------------


class Trace:
    """Replicas, their storage and the messages in flight, driven by commands."""

    def __init__(self) -> None:
        self.replicas: dict[int, Replica] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.machines: dict[int, RecordingMachine] = {}
        self.options: dict[int, Options] = {}
        self.network: list = []
        self.isolated: set[int] = set()
        self.out: list[str] = []

    # --- running -------------------------------------------------------

    def run(self, command: str) -> str:
        """Run one command line; return what it printed."""
        self.out = []
        words = command.split()
        method = getattr(self, "do_" + words[0].replace("-", "_"), None)
        if method is None:
            raise ValueError(f"unknown trace command {words[0]!r}")
        method(*words[1:])
        return "\n".join(self.out) if self.out else "ok"

    def _nodes(self, args) -> list[int]:
        return [int(a) for a in args] if args else sorted(self.replicas)

    def _start(self, node: int, started: bool) -> Replica:
        machine = RecordingMachine()
        snapshot = self.storages[node].snapshot()
        if snapshot.data:
            machine.restore(snapshot.data)  # what a restarted machine holds
        self.machines[node] = machine
        replica = TracedReplica(
            node, self.storages[node], random.Random(node), self.options[node],
            state_machine=machine,
        )
        if started:
            replica.ticks = max(replica.ticks, replica.options.election_ticks)
        replica.trace = self
        self.replicas[node] = replica
        return replica

    # --- commands: the cluster ------------------------------------------

    def do_add_nodes(self, count, *args) -> None:
        settings = dict(a.split("=", 1) for a in args if "=" in a)
        first = max(self.replicas, default=0) + 1
        ids = list(range(first, first + int(count)))
        if "voters" in settings:
            voters = frozenset(int(v) for v in settings["voters"].split(","))
        else:
            voters = frozenset(sorted(self.replicas) + ids)
        options = Options(
            election_ticks=int(settings.get("election", 10)),
            heartbeat_ticks=int(settings.get("heartbeat", 2)),
            window_slots=int(settings.get("window", 8)),
            snapshot_interval=int(settings.get("snapshot", 0)),
        )
        for node in ids:
            self.storages[node] = MemoryStorage(Config(voters))
            self.options[node] = options
            self._start(node, "fresh" not in args)
        self.out.append(f"started {','.join(map(str, ids))}, {show_config(Config(voters))}")

    def do_join(self, node) -> None:
        node = int(node)
        self.storages[node] = MemoryStorage(Config(frozenset()))
        self.options[node] = self.options[min(self.options)]
        self._start(node, True)
        self.out.append(f"started {node}, no member set")

    def do_restart(self, node) -> None:
        node = int(node)
        self.network = [m for m in self.network if m.dst != node]
        replica = self._start(node, False)
        self.out.append(f"{node} restarted: promised={show(replica.promised)} chosen={replica.chosen_index}")

    def do_forge_catchup_request(self, src, dst, first) -> None:
        # A request src never sent, stepped into dst: dst's answer is a
        # Catchup src did not ask for.
        self.replicas[int(dst)].step(CatchupRequest(int(src), int(dst), int(first)))

    def do_isolate(self, node) -> None:
        self.isolated.add(int(node))

    def do_heal(self) -> None:
        self.isolated.clear()

    # --- commands: time and timeouts ------------------------------------

    def do_tick(self, *args) -> None:
        count = int(args[0]) if args else 1
        for _ in range(count):
            for node in self._nodes(args[1:]):
                self.replicas[node].tick()

    def do_campaign(self, node) -> None:
        self.do_timeout(node, "election")

    def do_timeout(self, node, kind) -> None:
        node = int(node)
        message = {
            "election": ElectionTimeout,
            "heartbeat": HeartbeatTimeout,
            "check-quorum": CheckQuorum,
        }[kind]
        self.replicas[node].step(message(node, node))

    # --- commands: Readies and messages ---------------------------------

    def do_process(self, *args) -> None:
        for node in self._nodes(args):
            self._process(node)

    def _process(self, node: int) -> bool:
        replica = self.replicas[node]
        if not replica.has_ready():
            return False
        rd = replica.ready()
        out = self.out
        out.append(f"> {node} ready")
        if rd.hard_state is not None:
            out.append(f"  persist promised={show(rd.hard_state.promised)} chosen={rd.hard_state.chosen_index}")
        for slot, entry in rd.entries:
            out.append(f"  persist slot {slot} {show(entry.ballot)} {show(entry.value)}")
        if rd.snapshot is not None:
            what = "install" if rd.install_snapshot else "persist"
            out.append(f"  {what} {show(rd.snapshot)}")
        self.storages[node].save(rd.hard_state, rd.entries, rd.snapshot)
        for message in rd.messages:
            out.append(f"  send {show_message(message)}")
            self._send(message)
        for message in rd.durable_messages:
            out.append(f"  send after persist {show_message(message)}")
            self._send(message)
        machine = self.machines[node]
        if rd.install_snapshot:
            machine.restore(rd.snapshot.data)
        for slot, value in rd.committed:
            out.append(f"  apply slot {slot} {show(value)}")
            machine.apply(slot, value)
        for state in rd.read_states:
            out.append(f"  read {state.context} at {state.index}")
        for message in rd.self_messages:
            out.append(f"  self {show_message(message)}")
        replica.advance(rd)
        return True

    def _send(self, message) -> None:
        if message.src in self.isolated or message.dst in self.isolated:
            return
        self.network.append(message)

    def do_deliver(self, *args) -> None:
        drop = "drop" in args
        nodes = set(self._nodes([a for a in args if a != "drop"]))
        self._deliver(nodes, drop)

    def _deliver(self, nodes, drop: bool = False) -> bool:
        batch = [m for m in self.network if m.dst in nodes]
        if not batch:
            return False
        self.network = [m for m in self.network if m.dst not in nodes]
        for message in batch:
            if drop:
                self.out.append(f"dropped {show_message(message)}")
                continue
            if message.dst in self.isolated or message.dst not in self.replicas:
                continue
            self.out.append(f"deliver {show_message(message)}")
            self.replicas[message.dst].step(message)
        return True

    def do_stabilize(self, *args) -> None:
        nodes = self._nodes(args)
        for _ in range(10_000):
            busy = False
            for node in nodes:
                while self._process(node):
                    busy = True
            if self._deliver(set(nodes)):
                busy = True
            if not busy:
                return
        raise AssertionError("the trace did not stabilize")

    # --- commands: client requests --------------------------------------

    def _request(self, call, *args) -> Optional[object]:
        try:
            return call(*args)
        except Exception as e:  # a core error is part of the trace
            self.out.append(f"error {type(e).__name__}: {e}")
            return None

    def do_propose(self, node, *commands) -> None:
        replica = self.replicas[int(node)]
        for command in commands:
            self._request(replica.propose, command.encode("ascii"))

    def do_read_index(self, node, context) -> None:
        self._request(self.replicas[int(node)].read_index, context)

    def do_lease_read(self, node) -> None:
        replica = self.replicas[int(node)]
        try:
            index = replica.lease_read_index()
        except Exception as e:
            self.out.append(f"error {type(e).__name__}: {e}")
            return
        self.out.append(f"lease read at {index}")

    def do_transfer(self, node, target) -> None:
        self._request(self.replicas[int(node)].transfer_leadership, int(target))

    def do_change(self, node, kind, member) -> None:
        change = ConfigChange(ChangeKind(kind), int(member))
        self._request(self.replicas[int(node)].propose_config_change, change)

    # --- commands: looking --------------------------------------------

    def do_status(self, *args) -> None:
        for node in self._nodes(args):
            r = self.replicas[node]
            self.out.append(
                f"{node}: {show_role(r.role)} promised={show(r.promised)} leader={r.leader}"
                f" chosen={r.chosen_index} applied={r.applied}"
                f" snapshot={r.snapshot.index} {show_config(r.config)}"
                f" state={','.join(self.machines[node].commands) or '-'}"
            )

    def do_log(self, node) -> None:
        r = self.replicas[int(node)]
        for slot, entry in sorted(r.log.items()):
            self.out.append(f"slot {slot} {show(entry.ballot)} {show(entry.value)}")
        if not r.log:
            self.out.append("empty")


# --- files -----------------------------------------------------------------------


def parse(text: str) -> list[tuple[list[str], str, list[str]]]:
    """
    Split a trace file into blocks: (lines before the command, the command,
    the expected output lines).
    """
    blocks = []
    lines = text.split("\n")
    i = 0
    before: list[str] = []
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and lines[i + 1] == SEPARATOR and line and not line.startswith("#"):
            i += 2
            expected = []
            while i < len(lines) and lines[i] != "":
                expected.append(lines[i])
                i += 1
            blocks.append((before, line, expected))
            before = []
            continue
        before.append(line)
        i += 1
    if before and any(before):
        blocks.append((before, None, []))
    return blocks


def run_file(text: str) -> tuple[str, str]:
    """Run a trace; return (expected text, the text with actual outputs)."""
    trace = Trace()
    out = []
    for before, command, _ in parse(text):
        out.extend(before)
        if command is None:
            continue
        out.append(command)
        out.append(SEPARATOR)
        out.append(trace.run(command))
    actual = "\n".join(out).rstrip("\n") + "\n"
    return text, actual


def diff(path: str, expected: str, actual: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), path, path + " (now)"
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvpaxos.testing.traces",
        description="Run Paxos core traces and compare them with their golden output.",
    )
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rewrite", action="store_true", help="write the actual output into the files")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        with open(path) as f:
            expected, actual = run_file(f.read())
        if args.rewrite:
            with open(path, "w") as f:
                f.write(actual)
        elif actual != expected:
            failed += 1
            sys.stdout.write(diff(path, expected, actual))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
