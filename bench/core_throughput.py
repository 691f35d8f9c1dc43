"""
Throughput of the sans-I/O Paxos core alone: commands chosen and applied per
second by a 3-node cluster in one process, with no network, no disk and no
reactor.

What it measures: three L{kvpaxos.paxos.Replica}s, each with its own
L{kvpaxos.storage.memory.MemoryStorage} and a trivial state machine that
counts the commands it applies.  Ticking elects a leader; then, round after
round, the driver proposes a chunk of commands to the leader and pumps every
node (take its Ready, save hard state / entries / snapshot to its storage,
deliver C{messages} and C{durable_messages} to their receivers, apply
C{committed}, advance) until every command proposed so far is applied on all
three nodes.  When the cluster goes quiet before that, every node is ticked
once, so the leader's heartbeat tells the followers the last chosen index.
Every command goes through C{propose} on the leader, is chosen by a quorum's
Accepteds and is applied on all three nodes; the run checks the count and the
last command on each.

Printed: commands/s (commands applied on all nodes / wall time of the
proposal phase), slots used, mean commands per batch, and process CPU
seconds.  Building the command bytes is inside the timing: about 0.2 us per
command here, a fifth of the total at the default settings.

Run it from the repository root::

    .venv/bin/python bench/core_throughput.py
    .venv/bin/python bench/core_throughput.py --commands 200000 --profile core.prof

This is a benchmark, not a test: nothing asserts on time.  Nothing here may be
imported by the core or the tests.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.paxos import Batch, Config, Options, Replica  # noqa: E402
from kvpaxos.storage.memory import MemoryStorage  # noqa: E402

KEY_BYTES = 16


class CountingStateMachine:
    """
    The replicated state machine of this benchmark: it counts the commands
    applied and remembers the last one (to check order at the end).
    """

    def __init__(self) -> None:
        self.commands = 0
        self.slots = 0
        self.last = b""

    def apply(self, value) -> None:
        """Apply one chosen slot's value; no-ops and config changes count no command."""
        self.slots += 1
        if type(value) is Batch:
            commands = value.commands
            self.commands += len(commands)
            self.last = commands[-1]

    def snapshot(self) -> bytes:
        """Return the state as bytes: the count of applied commands."""
        return b"%d" % self.commands

    def restore(self, data: bytes) -> None:
        """Take the state of an installed snapshot."""
        self.commands = int(data or b"0")


class Node:
    """One member of the in-process cluster: replica, storage, state machine, inbox."""

    def __init__(self, node_id: int, config: Config, options: Options, seed: int) -> None:
        self.id = node_id
        self.storage = MemoryStorage(config)
        self.state_machine = CountingStateMachine()
        self.replica = Replica(
            node_id,
            self.storage,
            random.Random(seed * 1000 + node_id),
            options,
            state_machine=self.state_machine,
        )
        self.inbox: list = []


class Cluster:
    """Three nodes passing messages by reference, in delivery order."""

    def __init__(self, options: Options, seed: int) -> None:
        config = Config(frozenset({1, 2, 3}))
        self.nodes = [Node(i, config, options, seed) for i in (1, 2, 3)]
        self.by_id = {node.id: node for node in self.nodes}
        self.readies = 0

    def tick(self) -> None:
        """Advance every node's clock by one tick."""
        for node in self.nodes:
            node.replica.tick()

    def pump(self) -> None:
        """
        Deliver messages and perform Readies on every node until no node has
        anything left to do.
        """
        nodes = self.nodes
        by_id = self.by_id
        progress = True
        while progress:
            progress = False
            for node in nodes:
                replica = node.replica
                inbox = node.inbox
                if inbox:
                    node.inbox = []
                    step = replica.step
                    for message in inbox:
                        step(message)
                    progress = True
                if not replica.has_ready():
                    continue
                progress = True
                self.readies += 1
                rd = replica.ready()
                # 1. persist (MemoryStorage is durable once save returns).
                if rd.must_sync():
                    node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
                # 2. send; durable_messages may go now that step 1 is done.
                for message in rd.messages:
                    by_id[message.dst].inbox.append(message)
                for message in rd.durable_messages:
                    by_id[message.dst].inbox.append(message)
                # 3. apply.
                sm = node.state_machine
                if rd.install_snapshot:
                    sm.restore(rd.snapshot.data)
                apply = sm.apply
                for _slot, value in rd.committed:
                    apply(value)
                # 5. advance (no reads in this benchmark, so no step 4).
                replica.advance(rd)

    def leader(self):
        """Return the node that leads, or None."""
        for node in self.nodes:
            if node.replica.is_leader:
                return node
        return None

    def elect(self, max_ticks: int = 1000) -> Node:
        """Tick and pump until a leader is known to every node."""
        for _ in range(max_ticks):
            self.tick()
            self.pump()
            leader = self.leader()
            if leader is not None and all(
                node.replica.leader == leader.id for node in self.nodes
            ):
                return leader
        raise RuntimeError(f"no leader after {max_ticks} ticks")

    def settle(self, leader: Node, target: int, max_ticks: int = 100) -> None:
        """
        Pump until every node applied C{target} commands, ticking whenever
        the cluster is quiet (so heartbeats carry the last chosen index).
        """
        nodes = self.nodes
        self.pump()
        ticks = 0
        while any(node.state_machine.commands < target for node in nodes):
            if not leader.replica.is_leader:
                raise RuntimeError("leadership lost during the run")
            ticks += 1
            if ticks > max_ticks:
                counts = [node.state_machine.commands for node in nodes]
                raise RuntimeError(f"stuck: applied {counts}, want {target}")
            self.tick()
            self.pump()


def run(args) -> dict:
    """Elect, then propose and settle chunk by chunk; return the figures."""
    options = Options(
        window_slots=args.window,
        batch_bytes_max=args.batch_bytes,
        message_bytes_max=max(args.batch_bytes, Options().message_bytes_max),
        snapshot_interval=args.snapshot_interval,
        committed_max=args.committed_max,
    )
    cluster = Cluster(options, args.seed)
    leader = cluster.elect()
    propose = leader.replica.propose
    body = b"v" * max(0, args.size - KEY_BYTES)
    first_slot = leader.replica.chosen_index + 1
    total = args.commands
    chunk = args.chunk
    saves_before = sum(node.storage.saves for node in cluster.nodes)
    readies_before = cluster.readies

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    done = 0
    rounds = 0
    while done < total:
        end = min(total, done + chunk)
        for i in range(done, end):
            propose(b"%016d" % i + body)
        done = end
        rounds += 1
        cluster.settle(leader, done)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0

    last = b"%016d" % (total - 1) + body
    for node in cluster.nodes:
        sm = node.state_machine
        assert sm.commands == total, f"node {node.id} applied {sm.commands} of {total}"
        assert sm.last == last, f"node {node.id} applied {sm.last[:16]!r} last"
    slots = leader.replica.chosen_index - first_slot + 1
    return {
        "commands": total,
        "wall_s": wall,
        "cpu_s": cpu,
        "rate": total / wall,
        "slots": slots,
        "batch_mean": total / slots,
        "rounds": rounds,
        "readies": cluster.readies - readies_before,
        "saves": sum(node.storage.saves for node in cluster.nodes) - saves_before,
    }


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=1_000_000,
                        help="commands to propose (default 1,000,000)")
    parser.add_argument("--size", type=int, default=100,
                        help="bytes per command, a 16-byte key included (default 100)")
    parser.add_argument("--batch-bytes", type=int, default=Options().batch_bytes_max,
                        help="Options.batch_bytes_max (default %(default)s)")
    parser.add_argument("--window", type=int, default=Options().window_slots,
                        help="Options.window_slots (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=0,
                        help="commands proposed per round (default: enough to fill "
                        "the window with full batches)")
    parser.add_argument("--snapshot-interval", type=int,
                        default=Options().snapshot_interval,
                        help="Options.snapshot_interval (default %(default)s)")
    parser.add_argument("--committed-max", type=int, default=Options().committed_max,
                        help="Options.committed_max (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", metavar="FILE",
                        help="write a cProfile to FILE and print the top 15 functions")
    args = parser.parse_args(argv)
    if args.size < KEY_BYTES:
        parser.error(f"--size must be at least {KEY_BYTES}")
    if args.chunk <= 0:
        per_batch = max(1, args.batch_bytes // (args.size + 4))
        args.chunk = per_batch * args.window
    return args


def main(argv=None) -> None:
    args = parse(argv)
    print(
        f"core_throughput: {args.commands:,} commands of {args.size} B, "
        f"batch_bytes_max={args.batch_bytes}, window_slots={args.window}, "
        f"chunk={args.chunk:,}"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        figures = run(args)
        profiler.disable()
        profiler.dump_stats(args.profile)
    else:
        figures = run(args)
    print(f"commands/s        {figures['rate']:,.0f}  (applied on all 3 nodes / wall time)")
    print(f"wall time         {figures['wall_s']:.2f} s")
    print(f"process CPU       {figures['cpu_s']:.2f} s")
    print(f"slots used        {figures['slots']:,}")
    print(f"mean batch        {figures['batch_mean']:.1f} commands/slot")
    print(f"rounds            {figures['rounds']:,}")
    print(f"readies           {figures['readies']:,}  (storage saves {figures['saves']:,})")
    if args.profile:
        print("(timings above include cProfile overhead)")
        stats = pstats.Stats(args.profile)
        stats.sort_stats("cumulative").print_stats(15)
        stats.sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
