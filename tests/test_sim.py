"""
Tests for the node simulator (L{kvpaxos.testing.sim}): the real
L{kvpaxos.node.service.ReplicaService} survives hundreds of seeded fault
schedules, runs replay exactly, every fault and operation kind happens, and
the checker catches the bugs planted in L{kvpaxos.testing.plants}.
"""

import io
import random
from contextlib import redirect_stdout
from collections import Counter

from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.node.interfaces import IPeerTransport
from kvpaxos.testing import plants
from kvpaxos.testing.sim import Simulation, main, run_seed
from kvpaxos.testing.simdisk import InjectedDiskFailure
from kvpaxos.testing.simnet import Network, SimTransport
from kvpaxos.testing.simworld import MachineClock, Process, VirtualTime

#: Seeds the normal suite runs (about 0.8 s each here since the history,
#: watch, auth, lease and lock workloads; 370 keeps the suite in CI's 15 minutes);
#: `python -m kvpaxos.testing.sim --seeds 10000` is the long run.
SUITE_SEEDS = 370
#: How many seeds a planted bug may take to be caught.
SEARCH_SEEDS = 500

FAULT_KINDS = (
    "crash", "restart", "partition", "one-way partition", "connection reset", "pause",
    "stall", "wall clock step", "monotonic clock step", "admin MemberAdd done",
    "admin MemberPromote done", "admin MemberRemove done", "admin TransferLeadership done",
    "admin refused", "leader transfer", "adversarial network", "answer lost in a reset",
    "refused handshakes", "told removed", "lock workload",
)
OPERATION_KINDS = (
    "lock acquired", "lock increment", "open", "put", "append", "delete", "cas", "txn", "get/linearizable", "get/lease",
    "range/linearizable", "range/lease", "range/serializable", "served by lease",
)


#: Where the search for a plant starts when its first catch lies far in:
#: the seed that caught it first when the figure was written down (issue
#: 13's suite-time cut).  The search still goes through SEARCH_SEEDS seeds
#: from there (wrapping round), so a change in what the simulator draws
#: costs only time, never a false pass.
FIRST_SEED = {"space-after-propose": 66, "torn-backup": 112, "unconfirmed-read": 38}


def search_order(first: int, count: int = SEARCH_SEEDS):
    """Seeds C{first}..C{count}-1, then 0..C{first}-1."""
    return [*range(first, count), *range(first)]


def first_catch(plant):
    """Return the first seed's result (from the plant's L{FIRST_SEED}) that catches C{plant}, or None."""
    catches = plants.get(plant).catches
    for seed in search_order(FIRST_SEED.get(plant, 0)):
        result = run_seed(seed, plant=plant)
        if not result.ok and result.violation.kind in catches:
            return result
    return None


class SimulatorTests(SynchronousTestCase):
    """The node keeps every checked property under seeded faults."""

    def test_seeds(self):
        """Every suite seed passes, every history is checked, and every fault and operation happened."""
        failures = []
        ops, faults, providers = Counter(), Counter(), Counter()
        unchecked = 0
        for seed in range(SUITE_SEEDS):
            result = run_seed(seed)
            ops.update(result.ops)
            faults.update(result.faults)
            providers[result.provider] += 1
            unchecked += result.unchecked_histories
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with: {result.replay()}")
        # A node stopped by a scenario's disk failure logs it, critical.
        self.flushLoggedErrors(InjectedDiskFailure)
        self.assertEqual(failures, [])
        self.assertEqual(unchecked, 0)
        for kind in FAULT_KINDS:
            self.assertGreater(faults[kind], 0, kind)
        for kind in OPERATION_KINDS:
            self.assertGreater(ops[kind], 0, kind)
        self.assertGreater(providers["lmdb"], 0)
        self.assertGreater(providers["memory"], 0)

    def test_replay_is_exact(self):
        """Running a seed twice gives the same run, event for event."""
        for seed in (11, 12):  # one on memory, one on lmdb
            first, second = Simulation(seed), Simulation(seed)
            a, b = first.run(), second.run()
            self.assertEqual(a.trace, b.trace)
            self.assertEqual((a.events, a.ops, a.faults), (b.events, b.ops, b.faults))
            self.assertEqual(first.chosen, second.chosen)
        self.assertEqual({Simulation(11).provider, Simulation(12).provider}, {"memory", "lmdb"})

    def test_interfaces(self):
        """The simulated peer transport and reactor provide what the node uses."""
        world = VirtualTime()
        process = Process(world, 1, 1, MachineClock(1.0, 0.0), 0.0, lambda p, c, a, k=None: c(*a))
        network = Network(world, random.Random(0), {1: process}, (0.001, 0.002))
        self.assertTrue(verifyObject(IPeerTransport, SimTransport(network, process)))
        self.assertTrue(verifyObject(IReactorTime, process.reactor))

    def test_pause_runs_ticks_first_and_stall_messages_first(self):
        """On resume a paused process runs its due timers first; a stalled one its I/O first."""
        for mode, expected in (("pause", ["timer", "io"]), ("stall", ["io", "timer"])):
            world = VirtualTime()
            ran = []
            process = Process(world, 1, 1, MachineClock(1.0, 5.0), 0.0,
                              lambda p, c, a, k=None: c(*a, **(k or {})))
            process.reactor.callLater(0.01, ran.append, "timer")
            process.freeze(mode)
            process.io(0.005, ran.append, "io")
            while True:
                item = world.pop()
                if item is None:
                    break
                item[0](*item[1])
            self.assertEqual(ran, [])
            process.resume()
            self.assertEqual(ran, expected)


class FoundSeedTests(SynchronousTestCase):
    """
    Seeds the long run found failing, kept as regression tests.  A seed
    names a schedule of this version of the simulator: a change to what the
    simulator draws moves it (C{python -m kvpaxos.testing.sim --seeds 5000}
    finds such schedules again).
    """

    def test_wall_clocks_stepped_back_on_every_member(self):
        """
        Seed 4098: the wall clocks of all three members step back 17 to
        28 s.  Twisted keeps timed calls in wall time, so before the node
        moved them onto the monotonic clock (L{kvpaxos.node.clock}) every
        tick timer waited out the step and nobody campaigned: no write was
        acknowledged for 12 s after the heal.  Now nothing is violated.
        """
        result = run_seed(4098)
        self.assertIsNone(result.violation)
        self.assertGreater(result.faults["wall clock step"], 0)


class ScriptedTests(SynchronousTestCase):
    """Scripted schedules (no random faults) on the node simulator."""

    def test_wall_clocks_step_back(self):
        """
        Every member's wall clock steps back 20 s (so every tick timer
        waits 20 s; ticks are counted on the monotonic clock when a message
        or a read comes) while clients write and read: nothing is violated
        and the cluster converges after the heal.
        """
        sim = Simulation(3, faults=False, fault_s=2.0)
        for node_id in sorted(sim.nodes):
            sim.world.at(1.0, sim.step_wall_clock, node_id, -20.0)
        result = sim.run()
        self.assertIsNone(result.violation)
        self.assertEqual(result.faults["wall clock step"], len(sim.nodes))


def cut_off_leader_with_clock_back(sim):
    """Script: at 1 s the leader hears nobody for 1 s and its wall clock steps back 20 s."""

    def hurt():
        leader = sim._leader()
        if leader is None:
            return
        sim.step_wall_clock(leader.id, -20.0)
        pairs = {(other, leader.id) for other in sorted(sim.nodes) if other != leader.id}
        for a, b in sorted(pairs):
            sim.network.block(a, b)
        sim.world.later(1.0, sim.network.heal, pairs)

    sim.world.at(1.0, hurt)


class LeaderClockTests(SynchronousTestCase):
    """A leader cut off while its wall clock steps back (issue 9, hole 3)."""

    SEEDS = range(30)

    def test_lease_survives(self):
        """With ticks on the monotonic clock, no read is stale in any of these schedules."""
        for seed in self.SEEDS:
            sim = Simulation(seed, faults=False, fault_s=3.0)
            cut_off_leader_with_clock_back(sim)
            result = sim.run()
            self.assertIsNone(result.violation, f"seed {seed}")

    def test_wall_clock_ticks_caught(self):
        """Counted on the wall clock (plant wall-clock-ticks), a stale lease read is caught."""
        catches = plants.get("wall-clock-ticks").catches
        for seed in self.SEEDS:
            sim = Simulation(seed, faults=False, fault_s=3.0, plant="wall-clock-ticks")
            cut_off_leader_with_clock_back(sim)
            result = sim.run()
            if not result.ok and result.violation.kind in catches:
                return
        self.fail("no schedule caught the plant")


class PlantTests(SynchronousTestCase):
    """Each planted bug is caught within SEARCH_SEEDS seeds."""

    def test_early_answer_unchosen(self):
        """A client answered when its command is proposed, not chosen, is caught."""
        self.assertIsNotNone(first_catch("early-answer-unchosen"))

    def test_resend_unknown_forward(self):
        """A forward sent again after an unknown outcome is caught."""
        result = first_catch("resend-unknown-forward")
        self.assertIsNotNone(result)
        again = run_seed(result.seed, plant="resend-unknown-forward")
        self.assertEqual(str(again.violation), str(result.violation))

    def test_serializable_ignores_answered(self):
        """A serializable read that does not wait for what its node answered is caught."""
        self.assertIsNotNone(first_catch("serializable-ignores-answered"))

    def test_unconfirmed_read(self):
        """A leader that gives read indexes without a quorum round is caught by the history checker."""
        result = first_catch("unconfirmed-read")
        self.assertIsNotNone(result)

    def test_eager_prepare(self):
        """
        Issue 9, hole 1: a Prepare that leaves before its raised ballot is
        durable is caught as it leaves (it rarely breaks agreement at once:
        only a crash in that window followed by a late Promise does).
        """
        result = first_catch("eager-prepare")
        self.assertIsNotNone(result)
        self.assertEqual(result.violation.kind, "sent before durable")
        self.assertIn("Prepare", str(result.violation))

    def test_space_after_propose(self):
        """
        Issue 13, part 5: a write refused for space that was proposed all the
        same is caught once it is chosen (scenario space-quota).
        """
        result = first_catch("space-after-propose")
        self.assertIsNotNone(result)
        self.assertEqual(result.violation.kind, "space")

    def test_torn_backup(self):
        """
        Issue 13, part 4: a backup whose header names the slot applied when
        it was asked for, not its read transaction's, is caught: what it
        holds is not the state the log gives at that slot.
        """
        result = first_catch("torn-backup")
        # A node stopped by a scenario's disk failure on the way logs it, critical.
        self.flushLoggedErrors(InjectedDiskFailure)
        self.assertIsNotNone(result)
        self.assertEqual(result.violation.kind, "backup")

    def test_removal_untold(self):
        """
        Issue 11: a removed node told neither by the leader's last heartbeat
        nor by the members' REMOVED_MEMBER refusal keeps running, and is caught.
        """
        result = first_catch("removal-untold")
        self.assertIsNotNone(result)
        self.assertIn("still running", result.violation.detail)

    def test_removed_unrefused(self):
        """
        Issue 11: without the REMOVED_MEMBER refusal, a removed node that
        missed the last heartbeat keeps running, and is caught (the last
        heartbeat alone is not enough).
        """
        result = first_catch("removed-unrefused")
        self.assertIsNotNone(result)
        self.assertIn("still running", result.violation.detail)

    def test_every_plant_has_a_test(self):
        """Every plant in the registry is one this module searches for."""
        from tests.test_sim_holes import SCENARIO_OF  # issue 9's holes, one scenario each
        from tests.test_sim_leases import CAUGHT_AT as LEASE_CAUGHT_AT  # KV leases (issue 14)
        from tests.test_sim_locks import CAUGHT_AT as LOCK_CAUGHT_AT  # the lock recipe (issue 14)
        from tests.test_sim_watch import CAUGHT_AT  # watch and compaction (issue 14)

        tested = {
            "early-answer-unchosen", "resend-unknown-forward", "serializable-ignores-answered",
            "unconfirmed-read", "wall-clock-ticks", "eager-prepare", "removal-untold",
            "removed-unrefused", "torn-backup", "space-after-propose",
            "submit-time-auth",  # tests/test_sim_auth.py, in scenario auth
            "take-time-read-auth",  # tests/test_sim_auth.py
            "user-dropped-while-disabled",  # tests/test_sim_auth.py
        } | set(SCENARIO_OF) | set(CAUGHT_AT) | set(LEASE_CAUGHT_AT) | set(LOCK_CAUGHT_AT)  # test_sim_{watch,leases,locks}
        self.assertEqual(set(plants.names()) - tested, set())


class CommandLineTests(SynchronousTestCase):
    """python -m kvpaxos.testing.sim reports and replays."""

    def test_passing_seed(self):
        """A passing seed exits 0 and reports its totals."""
        out = io.StringIO()
        with redirect_stdout(out):
            status = main(["--seed", "3"])
        self.assertEqual(status, 0)
        self.assertIn("1 seeds", out.getvalue())
        self.assertIn("0 failed", out.getvalue())
        self.assertIn("operations checked", out.getvalue())
        self.assertIn("faults: ", out.getvalue())

    def test_failing_seed_prints_replay(self):
        """A failing seed exits 1 and prints the command that replays it."""
        result = first_catch("resend-unknown-forward")
        out = io.StringIO()
        with redirect_stdout(out):
            status = main(["--seed", str(result.seed), "--plant", "resend-unknown-forward"])
        self.assertEqual(status, 1)
        self.assertIn(
            f"replay with: python -m kvpaxos.testing.sim --seed {result.seed}"
            " --plant resend-unknown-forward",
            out.getvalue(),
        )
