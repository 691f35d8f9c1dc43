"""
Tests for the core simulator (L{kvpaxos.testing.coresim}): the core survives
hundreds of seeded fault schedules, runs replay exactly, and the checker
catches the bugs it exists to catch.
"""

import io
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import Batch, NOOP
from kvpaxos.testing.coresim import Simulation, Violation, main, run_seed

#: Seeds the normal suite runs; `python -m kvpaxos.testing.coresim --seeds 10000`
#: is the long run.
SUITE_SEEDS = 120
#: How many seeds a planted bug may take to be caught.
SEARCH_SEEDS = 200


def first_violation(plant, kinds, seeds=SEARCH_SEEDS, first=0, **options):
    """
    Return the first seed's result, searching C{seeds} seeds from C{first}
    (wrapping round), whose violation is of one of kinds.
    """
    for seed in [*range(first, seeds), *range(first)]:
        result = run_seed(seed, plant=plant, **options)
        if not result.ok and result.violation.kind in kinds:
            return result
    return None


class SimulatorSafetyTests(SynchronousTestCase):
    """The core keeps every checked property under seeded faults."""

    def test_seeds(self):
        """Every suite seed passes safety under faults and liveness after heal."""
        failures = []
        totals = {
            "acked": 0, "crashes": 0, "config_changes": 0, "transfers": 0, "reads": 0,
            "lease_reads": 0, "history_ops": 0, "durable_snapshots": 0,
            "refused_changes": 0, "forced_removes": 0, "promotions": 0,
        }
        unchecked = 0
        for seed in range(SUITE_SEEDS):
            result = run_seed(seed)
            for name in totals:
                totals[name] += getattr(result, name)
            unchecked += result.unchecked_histories
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with: {result.replay()}")
        self.assertEqual(failures, [])
        # Every seed's client history was shown linearizable (none gave up).
        self.assertEqual(unchecked, 0)
        # The runs exercised what they claim to: writes, reads, crashes,
        # membership changes (some refused by the leader's rules, some
        # removals forced, promotions chosen), leader transfers, and
        # snapshots sent by durable state machines (compacted without a
        # copy) all happened.
        for name, count in totals.items():
            self.assertGreater(count, 0, name)

    def test_replay_is_exact(self):
        """Running a seed twice gives the same run, event for event."""
        first = Simulation(11)
        second = Simulation(11)
        a, b = first.run(), second.run()
        self.assertEqual((a.events, a.chosen_slots, a.acked), (b.events, b.chosen_slots, b.acked))
        self.assertEqual(first.chosen, second.chosen)
        self.assertEqual(first.digests, second.digests)


class CheckerBitesTests(SynchronousTestCase):
    """Planted bugs are caught within a bounded search."""

    def test_forgetful_acceptor(self):
        """
        An acceptor that forgets its promises and accepted values on restart
        (the Go seed project's bug) breaks agreement or durability for some
        seed.
        """
        result = first_violation("forgetful-acceptor", {"agreement", "durability"})
        self.assertIsNotNone(result)
        # The seed replays to the very same violation.
        again = run_seed(result.seed, plant="forgetful-acceptor")
        self.assertEqual(str(again.violation), str(result.violation))

    def test_unconfirmed_read(self):
        """
        A leader that serves read_index without a quorum round returns a
        stale read index for some seed.
        """
        result = first_violation("unconfirmed-read", {"linearizability"})
        self.assertIsNotNone(result)

    def test_history_checker_alone_catches_unconfirmed_read(self):
        """
        With read indexes unchecked, the linearizability checker on the
        clients' history alone catches a leader that reads without a quorum.
        """
        result = first_violation("unconfirmed-read", {"linearizability"}, index_check=False)
        self.assertIsNotNone(result)
        self.assertIn("have no linearization", result.violation.detail)

    def test_eternal_lease(self):
        """
        A leader that serves lease reads after its lease ran out returns a
        stale read index for some seed.
        """
        # Rarer since the core's lease fixes of issue 9 (first caught at
        # seed 623 now): with check quorum and stickiness both counting
        # election_ticks, and no clock drift in the bare-core simulator, a
        # leader kept past its lease overlaps a new leader only in rare
        # schedules.  The node simulator, which drifts clocks, catches the
        # node-level lease holes by their own plants.  The search starts at
        # that seed (it still goes through all 1000 from there, so a change
        # in the draws costs only time).
        result = first_violation("eternal-lease", {"linearizability"}, seeds=1000, first=623)
        self.assertIsNotNone(result)

    def test_learner_votes(self):
        """
        A leader that counts a learner's Accepted toward a quorum chooses
        slots a quorum of voters never accepted: a later leader chooses
        otherwise there, which breaks agreement, durability or a read, for
        some seed.
        """
        kinds = {"agreement", "durability", "linearizability"}
        result = first_violation("learner-votes", kinds)
        self.assertIsNotNone(result)
        again = run_seed(result.seed, plant="learner-votes")
        self.assertEqual(str(again.violation), str(result.violation))

    def test_promote_stateless(self):
        """
        A leader that judges a learner caught up on its lag alone promotes a
        joiner that has reported chosen index 0 while its snapshot is on the
        way (the slow-snapshot seeds hold each InstallSnapshot for a second
        or so): the promotion check finds a voter with no member set.
        """
        result = first_violation("promote-stateless", {"promotion"})
        self.assertIsNotNone(result)
        self.assertIn("before it had the state", result.violation.detail)
        again = run_seed(result.seed, plant="promote-stateless")
        self.assertEqual(str(again.violation), str(result.violation))

    def test_agreement_check(self):
        """Two different values applied in one slot are an agreement violation."""
        sim = Simulation(1)
        node_a, node_b = sim.nodes[1], sim.nodes[2]
        one, two = Batch((b"1:1:put:k:a",)), Batch((b"1:2:put:k:b",))
        sim.proposed.update(one.commands + two.commands)
        node_a.machine.apply(1, one)
        sim._check_chosen(node_a, 1, one)
        node_b.machine.apply(1, two)
        error = self.assertRaises(Violation, sim._check_chosen, node_b, 1, two)
        self.assertEqual(error.kind, "agreement")

    def test_validity_check(self):
        """A command nobody proposed, chosen in a slot, is a validity violation."""
        sim = Simulation(1)
        node = sim.nodes[1]
        value = Batch((b"9:9:put:k:x",))
        node.machine.apply(1, value)
        error = self.assertRaises(Violation, sim._check_chosen, node, 1, value)
        self.assertEqual(error.kind, "validity")

    def test_durability_check(self):
        """A slot applied without a command acknowledged in it is a durability violation."""
        sim = Simulation(1)
        node = sim.nodes[1]
        sim.acked_in_slot[1] = {b"1:1:put:k:a"}
        node.machine.apply(1, NOOP)
        error = self.assertRaises(Violation, sim._check_chosen, node, 1, NOOP)
        self.assertEqual(error.kind, "durability")


class CommandLineTests(SynchronousTestCase):
    """python -m kvpaxos.testing.coresim reports and replays."""

    def test_passing_seed(self):
        """A passing seed exits 0 and reports what it ran."""
        out = io.StringIO()
        with redirect_stdout(out):
            status = main(["--seed", "3"])
        self.assertEqual(status, 0)
        self.assertIn("1 seeds, 0 failed", out.getvalue())

    def test_failing_seed_prints_replay(self):
        """A failing seed exits 1 and prints the command that replays it."""
        result = first_violation("unconfirmed-read", {"linearizability"})
        out = io.StringIO()
        with redirect_stdout(out):
            status = main(["--seed", str(result.seed), "--plant", "unconfirmed-read"])
        self.assertEqual(status, 1)
        self.assertIn(
            f"replay with: python -m kvpaxos.testing.coresim --seed {result.seed}"
            " --plant unconfirmed-read",
            out.getvalue(),
        )
