"""
The deterministic simulator of the bare Paxos core.

It drives L{kvpaxos.paxos.Replica} with its own Ready performer and a string
state machine (L{DigestKV}); L{kvpaxos.testing.sim} runs the production node
(L{kvpaxos.node.service.ReplicaService} over the real state machine) instead.
This one is kept because it is fast and reaches the core's corners directly
(its plants: forgetful-acceptor, unconfirmed-read, eternal-lease,
learner-votes, promote-stateless).

All replicas run in one process over L{kvpaxos.storage.memory.MemoryStorage}
and a L{SimNetwork}; a virtual clock jumps from event to event, and one seed
drives everything: message delay, loss, duplication and reordering,
partitions (one-way ones too), crashes that lose whatever was not yet
persisted, restarts, membership changes under the leader's rules (eager
promotions refused while a learner lags, removals refused without a quorum
heard from or sometimes forced, a leader removed only after it handed
leadership over; a third of the seeds promote learners automatically),
leader transfers, and clients that
propose writes, ask for read indexes and record what they were told.  Half
the seeds run durable state machines, as a node's store is: the state
survives a crash with its applied index, compaction copies nothing, and a
snapshot is taken from the live state when a peer needs one.

A run has a fault phase and then a heal phase (faults stop, every node comes
back, the network heals).  After every event the checker asserts:

  - agreement: no slot is chosen with two values, across nodes and restarts;
  - validity: every chosen command was proposed by a client, once (or is a
    no-op or a proposed configuration change);
  - durability: every command acknowledged to a client stays in its slot;
  - state agreement: replicas that applied through slot i have one digest;
  - read safety: a read index is never below a write acknowledged before the
    read was asked for;
  - a node that breaks one of its own invariants (AssertionError) stops the
    run;

and in the heal phase, liveness: every new proposal is chosen within a
bounded virtual time, and every member converges on one state.

Run one seed: C{python -m kvpaxos.testing.coresim --seed 7}; many:
C{--seeds 2000}.  A failure prints its seed and the command that replays it.

This module holds the L{Simulation} (its setup and event loop), L{run_seed}
and the command line; the rest of the class is in mixins by concern:
L{kvpaxos.testing.corenodes} (nodes and the Ready performer),
L{kvpaxos.testing.corechecks} (the checker), L{kvpaxos.testing.coreclients}
and L{kvpaxos.testing.corefaults} (faults, operators, heal); settings and
records are in L{kvpaxos.testing.corerecords}, the planted replicas in
L{kvpaxos.testing.coreplants}.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from dataclasses import replace
from typing import Optional

from kvpaxos.paxos import Config, ConfigChange
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.linearizability import Operation
from kvpaxos.testing.network import Faults, SimNetwork
from kvpaxos.testing.corerecords import SIM_OPTIONS, Client, Result, SimNode, Violation, _Event
from kvpaxos.testing.coreplants import PLANTS
from kvpaxos.testing.corenodes import NodesMixin
from kvpaxos.testing.corechecks import ChecksMixin
from kvpaxos.testing.coreclients import ClientsMixin
from kvpaxos.testing.corefaults import FaultsMixin


class Simulation(NodesMixin, ChecksMixin, ClientsMixin, FaultsMixin):
    """
    One seeded run.  Every random choice comes from C{random.Random(seed)}
    (split into streams so that adding a check does not change the run).
    """

    def __init__(
        self,
        seed: int,
        plant: Optional[str] = None,
        fault_ms: int = 4000,
        verbose: bool = False,
        index_check: bool = True,
    ) -> None:
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown plant {plant!r}; choose from {PLANTS}")
        self.seed = seed
        self.plant = plant
        self.fault_ms = fault_ms
        self.verbose = verbose
        #: Whether read indexes are checked as they arrive; without it only
        #: the history checker judges reads (to show it bites on its own).
        self.index_check = index_check
        root = random.Random(seed)
        self.rng = random.Random(root.getrandbits(64))
        self.net_rng = random.Random(root.getrandbits(64))
        self.node_rng_seed = root.getrandbits(64)
        #: Half the seeds run durable state machines (as a node's store is:
        #: the state outlives a crash with its applied index, and compaction
        #: copies nothing); drawn apart so the other streams stay as they were.
        self.durable = plant is None and random.Random(seed * 31 + 7).random() < 0.5
        #: A third of the seeds let the leader promote caught-up learners by
        #: itself (Options.auto_promote); drawn apart likewise.
        auto = plant is None and random.Random(seed * 37 + 11).random() < 1 / 3
        #: A quarter of the seeds count a learner caught up within the
        #: product's lag (1,000 slots, not 4): there a young cluster's
        #: joiner is within the lag before it has the state.
        lag = 1000 if random.Random(seed * 41 + 13).random() < 0.25 else SIM_OPTIONS.promote_lag_slots
        self.options = replace(SIM_OPTIONS, auto_promote=auto, promote_lag_slots=lag)
        #: A fifth of the seeds carry snapshots slowly (a big store's
        #: transfer takes seconds): each InstallSnapshot is held 300 to
        #: 1,500 ms, so a joiner reports itself for a while before it has
        #: the state, and a promotion in that window must be refused.
        self.slow_snapshots = random.Random(seed * 43 + 17).random() < 0.2
        self.rng_snapshots = random.Random(seed * 47 + 19)
        #: A leader an operator asked to remove: it was told to hand
        #: leadership over first, and the next operator event removes it.
        self.remove_after_transfer: Optional[int] = None
        self.now = 0
        self._queue: list[_Event] = []
        self._seq = 0
        self.healed = False
        self.result = Result(seed)

        rng = self.rng
        count = rng.choice((3, 3, 5))
        self.initial = Config(frozenset(range(1, count + 1)))
        self.next_id = count + 1
        faults = Faults(
            drop=rng.choice((0.0, 0.02, 0.05, 0.1)),
            duplicate=rng.choice((0.0, 0.02, 0.05)),
            delay_ms=(1, rng.choice((3, 8, 20))),
            straggle=rng.choice((0.0, 0.01, 0.03)),
        )
        self.network = SimNetwork(self.net_rng, faults)
        self.disk_ms = (0, rng.choice((1, 3, 8)))
        self.nodes: dict[int, SimNode] = {}
        for node_id in sorted(self.initial.voters):
            self.nodes[node_id] = SimNode(node_id, MemoryStorage(self.initial))
            self._start(node_id)

        # What the checker knows.
        self.proposed: set[bytes] = set()
        self.proposed_changes: set[ConfigChange] = set()
        self.chosen: dict[int, object] = {}
        self.command_slot: dict[bytes, int] = {}
        self.digests: dict[int, bytes] = {}
        self.acked_in_slot: dict[int, set[bytes]] = {}
        self.max_acked_slot = 0
        self.reads: dict[tuple, int] = {}
        self._liveness_acked = 0
        # The clients' history, for the linearizability checker: writes by
        # command ([client, kind, key, value, call, return or None]), reads
        # as they complete, and reads waiting for their node to apply.
        self.history_writes: dict[bytes, list] = {}
        self.history_reads: list[Operation] = []
        self.read_calls: dict[tuple, int] = {}
        self.pending_reads: dict[int, list] = {}

        self.clients = {i: Client(i) for i in range(1, rng.randint(2, 4) + 1)}
        for client in self.clients.values():
            self._schedule(rng.randint(0, 50), "client", client.id)
        self._schedule(rng.randint(100, 400), "fault")
        self._schedule(rng.randint(200, 800), "operator")
        self._schedule(fault_ms, "heal")

    # --- the event loop ----------------------------------------------------

    def _schedule(self, delay: int, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(self.now + delay, self._seq, kind, args))

    def run(self) -> Result:
        """Run to the end of the heal phase, or to the first violation."""
        try:
            while self._queue:
                event = heapq.heappop(self._queue)
                self.now = event.time
                self.result.events += 1
                node = self._paused(event)
                if node is not None:
                    # Held until the process resumes, then handled in a burst.
                    self._seq += 1
                    event.time, event.seq = node.paused_until, self._seq
                    heapq.heappush(self._queue, event)
                    continue
                getattr(self, "_on_" + event.kind)(*event.args)
                self._check_nodes()
                if self._done():
                    break
            else:
                raise Violation("liveness", "the simulation ran out of events")
            self._check_converged()
            self._check_history()
        except Violation as violation:
            self.result.violation = violation
        self.result.chosen_slots = len(self.chosen)
        return self.result

    def _paused(self, event) -> Optional[SimNode]:
        if event.kind in ("tick", "persisted", "snapshot"):
            node = self.nodes.get(event.args[0])
        elif event.kind == "deliver":
            node = self.nodes.get(event.args[0].dst)
        else:
            return None
        if node is not None and node.paused_until > self.now:
            return node
        return None

    def _check_nodes(self) -> None:
        """Invariants of each node's own state, checked after every event."""
        for node in self.nodes.values():
            if not node.up:
                continue
            replica = node.replica
            if replica.chosen_index < node.chosen_seen:
                raise Violation(
                    "invariant",
                    f"node {node.id} chosen index went from {node.chosen_seen}"
                    f" down to {replica.chosen_index}",
                )
            node.chosen_seen = replica.chosen_index
            if replica.is_leader:
                role = replica.role
                stale = [s for s in role.inflight if s <= replica.chosen_index]
                if stale:
                    raise Violation(
                        "invariant", f"leader {node.id} keeps chosen slots {stale} in flight"
                    )
                if role.config_slot is not None and role.config_slot <= replica.chosen_index:
                    raise Violation(
                        "invariant", f"leader {node.id} waits on chosen change slot {role.config_slot}"
                    )

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now:7d} {text}")


def run_seed(seed: int, plant: Optional[str] = None, verbose: bool = False, **options) -> Result:
    """Run one seed and return its L{Result}."""
    return Simulation(seed, plant=plant, verbose=verbose, **options).run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvpaxos.testing.coresim",
        description="Run the kvpaxos cluster simulator over one or many seeds.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="run this one seed")
    group.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1")
    parser.add_argument("--first", type=int, default=0, help="first seed of --seeds")
    parser.add_argument("--plant", choices=PLANTS, help="plant a known bug")
    parser.add_argument("--verbose", action="store_true", help="trace the run")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    totals = Result(-1)
    failures = 0
    for seed in seeds:
        result = run_seed(seed, plant=args.plant, verbose=args.verbose)
        for name in ("chosen_slots", "acked", "reads", "lease_reads", "history_ops",
                     "unchecked_histories", "crashes", "config_changes", "refused_changes",
                     "forced_removes", "promotions", "transfers",
                     "durable_snapshots", "events"):
            setattr(totals, name, getattr(totals, name) + getattr(result, name))
        if not result.ok:
            failures += 1
            print(f"seed {seed}: {result.violation}")
            print(f"  replay with: {result.replay(args.plant)}")
            if args.seed is None and failures >= 10:
                print("stopping after 10 failures")
                break
    elapsed = time.perf_counter() - started
    print(
        f"{len(seeds)} seeds, {failures} failed, {elapsed:.1f} s: "
        f"{totals.chosen_slots} slots chosen, {totals.acked} writes acknowledged, "
        f"{totals.reads} reads checked ({totals.lease_reads} by lease), "
        f"{totals.history_ops} operations in linearizable histories "
        f"({totals.unchecked_histories} histories unchecked), {totals.crashes} crashes, "
        f"{totals.config_changes} membership changes ({totals.refused_changes} refused,"
        f" {totals.forced_removes} forced removals, {totals.promotions} promotions chosen),"
        f" {totals.transfers} transfers, "
        f"{totals.durable_snapshots} snapshots sent from durable state machines, "
        f"{totals.events} events"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
