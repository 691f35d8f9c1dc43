"""
How the simulation adds, boots and crashes its nodes (L{NodesMixin}).

A node is the real L{kvpaxos.node.service.ReplicaService} over a store,
booted in a simulated process (L{kvpaxos.testing.simworld}) with its disk
and transport; a crash keeps only the durable state.  Part of
L{kvpaxos.testing.sim.Simulation}: it reads and sets that class's state.
"""

from __future__ import annotations

import inspect
import random
from typing import Optional

from kvpaxos.node.clock import run_timers_on
from kvpaxos.node.interfaces import Timing
from kvpaxos.paxos import Config
from kvpaxos.storage.memory import MemoryStore
from kvpaxos.testing import invariants
from kvpaxos.testing import plants as plant_registry
from kvpaxos.testing.simauth import auth_path
from kvpaxos.testing.simdisk import Disk
from kvpaxos.testing.simnet import SimTransport
from kvpaxos.testing.simworld import MachineClock, Process
from kvpaxos.testing.simrecords import DRIFT_MAX, SIM_OPTIONS, TICK_S, Node, sim_addresses


def _accepts(cls, name: str) -> bool:
    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


class NodesMixin:
    """Adding, booting and crashing a L{kvpaxos.testing.sim.Simulation}'s nodes."""

    def _add_node(self, node_id: int, config: Optional[Config]) -> None:
        rng = self.rng
        machine = MachineClock(
            rate=1.0 + rng.uniform(-DRIFT_MAX, DRIFT_MAX) if rng.random() < 0.7 else 1.0,
            wall_offset=rng.uniform(1e9, 2e9),
        )
        if self.provider == "lmdb":
            from kvpaxos.storage.lmdb import LMDBStore

            directory = f"{self._tmp.name}/node{node_id}"
            store = LMDBStore(directory, config, map_bytes=self.lmdb_map_bytes)
        else:
            directory = None
            store = MemoryStore(config)
        node = self.nodes[node_id] = Node(node_id, store, machine, directory)
        if self.scenario is not None:
            self.scenario.node_added(self, node)
        self._boot(node)

    def _boot(self, node: Node) -> None:
        node.epochs += 1
        if node.directory is not None and node.epochs > 1:
            from kvpaxos.storage.lmdb import LMDBStore

            node.store = LMDBStore(node.directory, None, map_bytes=self.lmdb_map_bytes)
        process = Process(
            self.world, node.id, node.epochs, node.machine, self.rng.uniform(100, 1000),
            self._run_in,
        )
        node.process = process
        # The product's wiring (kvpaxos.tap.makeService): every timed call
        # on the monotonic clock.
        run_timers_on(process.reactor, process.mono.seconds)
        node.chosen_seen = 0
        self.processes[node.id] = process
        disk = Disk(
            process, node.store, self.provider, self.disk_rng, self._disk_latency,
            self._commit_asked, self._commit_durable, self.threads,
        )
        rng = random.Random(self.node_seed ^ (node.id * 7919 + node.epochs))
        cls = plant_registry.service_class(self.plant)
        kwargs = dict(
            options=SIM_OPTIONS, tick_s=node.tick_s, rng=rng, run_commit=disk.commit,
            lease_reads=self.lease_reads, snapshot_io=disk,
        )
        if _accepts(cls, "clock"):
            kwargs["clock"] = process.mono
        if _accepts(cls, "addresses"):
            kwargs["addresses"] = sim_addresses(node.id)
        if _accepts(cls, "auth"):
            kwargs["auth"] = auth_path(self, node, process)
        if self.quota_bytes and _accepts(cls, "quota_bytes"):
            kwargs["quota_bytes"] = self.quota_bytes
        # Request ids are unique per boot (os.urandom by default); a seeded
        # boot number keeps replays exact.
        boot = rng.getrandbits(31)
        if _accepts(cls, "boot"):
            kwargs["boot"] = boot
        service = cls(node.id, node.store, process.reactor, **kwargs)
        if "boot" not in kwargs:
            service._boot = boot
        service.peers = SimTransport(self.network, process, self._check_sent)
        process.service = service
        process.disk = disk
        # The memory provider measures no use of its own: the simulator gives
        # it one (its state's size) when a quota is in force.
        disk.measure_use = self.provider == "memory" and self.scenario is not None and \
            self.scenario.name == "space-quota"

        self._watch_configure(service)

        def start() -> None:
            plant_registry.before_start(self.plant, service)
            service.startService()

        self._run_in(process, start, ())
        self._watch_started(node, process, service)
        self._count_leases(service)
        self._log(f"start node {node.id} (boot {node.epochs}, applied {node.store.applied_index()})")
        for other in sorted(self.nodes):
            if other != node.id:
                self.network.connect_later(process, other, self.rng.uniform(0.001, 0.05))
                peer = self.processes.get(other)
                if peer is not None and peer.alive:
                    self.network.connect_later(peer, node.id, self.rng.uniform(0.001, 0.3))

    def _count_leases(self, service) -> None:
        """Count the reads a leader served on its lease (instrumentation only)."""
        replica = getattr(service, "replica", None)
        if replica is None:
            return
        lease_read_index = replica.lease_read_index
        counts = self.result.ops

        def counted():
            index = lease_read_index()
            if index is not None:
                counts["served by lease"] += 1
            return index

        replica.lease_read_index = counted

    def _connected(self, src: Process, dst: Process) -> None:
        for here, there in ((src, dst), (dst, src)):
            service = here.service
            if hasattr(service, "peer_timing"):
                here.io(0, service.peer_timing, there.node_id, self.timing_of(there.node_id))
            if hasattr(service, "peer_addresses_reported"):
                # The handshake's addresses: the leader publishes them (UPDATE).
                here.io(0, service.peer_addresses_reported, there.node_id,
                        *sim_addresses(there.node_id))

    def timing_of(self, node_id: int) -> Timing:
        """The timing node C{node_id} runs with (and reports to its peers)."""
        tick_s = self.nodes[node_id].tick_s
        if tick_s == TICK_S:
            return self.timing
        return Timing(round(tick_s * 1000), SIM_OPTIONS.election_ticks, self.lease_reads)

    def _check_sent(self, process: Process, message) -> None:
        """A message leaves a node: what it depends on must be durable (L{invariants})."""
        if self.violation is None:
            problem = invariants.durability_problem(self.nodes[process.node_id].store, message)
            if problem:
                self.fail("sent before durable", problem)

    def _crash(self, node: Node, kind: str = "crash") -> None:
        process = node.process
        if process is None:
            return
        process.disk.stop()
        # What it has promised while it is down: what a restart will read.
        node.promised_down = node.store.hard_state().promised
        process.die()
        node.process = None
        self.processes.pop(node.id, None)
        self.network.process_died(process)
        if node.directory is not None:
            node.store.close()
        self.result.faults[kind] += 1
        self._log(f"{kind} node {node.id}")

    def _disk_latency(self) -> float:
        rng = self.disk_rng
        if self.slow_disk and rng.random() < self.slow_disk:
            return rng.uniform(0.1, 2.0)
        return rng.uniform(*self.disk_s)
