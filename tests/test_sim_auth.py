"""
Authentication in the node simulator (issue 13, part 2): the register
under permissions (L{kvpaxos.testing.authmodel}) gives the verdicts a
brute-force search gives; the auth workload (L{kvpaxos.testing.simauth},
scenario C{auth}) runs clean under seeded faults; and the plant
C{submit-time-auth} (a write's permission checked when a member takes it,
not when it applies) is caught.
"""

import itertools
import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.testing import plants
from kvpaxos.testing.authmodel import NEEDS, READ, READWRITE, WRITE
from kvpaxos.testing.linearizability import Operation, check
from kvpaxos.testing.sim import Simulation

K = b"k"
#: How many seeds the plant may take to be caught (as tests/test_sim.py).
SEARCH_SEEDS = 500
#: Seeds of scenario auth the product must pass here (about 0.5 s each).
CLEAN_SEEDS = 16


def op(kind, call, ret, input=None, output=None, denied=False, client=1):
    return Operation(client, kind, K, input, output, call, ret, denied)


def change(what, call, ret, output=True):
    return Operation(0, "auth", K, what, output, call, ret)


ON = [change(("enable",), 0, 1), change(("role", True), 1, 2), change(("grant", READWRITE), 2, 3)]


class ModelTests(SynchronousTestCase):
    """Hand-written histories pin what the model allows."""

    def verdict(self, history):
        return check(history).outcome

    def test_write_after_revoke_illegal(self):
        """A write called after a revoke of write was answered cannot succeed."""
        history = ON + [change(("grant", READ), 4, 5), op("put", 6, 7, b"v")]
        self.assertEqual(self.verdict(history), "illegal")

    def test_write_concurrent_with_revoke_legal(self):
        """A write overlapping the revoke may come before it."""
        history = ON + [change(("grant", READ), 4, 6), op("put", 5, 7, b"v")]
        self.assertEqual(self.verdict(history), "ok")

    def test_refusal_needs_no_permission(self):
        """A refusal is legal only where the operation was not permitted."""
        granted = ON + [op("put", 4, 5, b"v", denied=True)]
        self.assertEqual(self.verdict(granted), "illegal")
        revoked = ON + [change(("revoke",), 4, 5), op("put", 6, 7, b"v", denied=True)]
        self.assertEqual(self.verdict(revoked), "ok")

    def test_refusal_changes_nothing(self):
        """A refused write leaves the value: a read after it sees the one before."""
        history = ON + [op("put", 4, 5, b"a"), change(("grant", READ), 6, 7),
                        op("put", 8, 9, b"b", denied=True), op("get", 10, 11, output=b"b")]
        self.assertEqual(self.verdict(history), "illegal")

    def test_auth_off_permits_everything(self):
        """Before the enable every operation is permitted, and none may be refused."""
        self.assertEqual(self.verdict([op("put", 0, 1, b"v"), op("get", 2, 3, output=b"v")]), "ok")
        self.assertEqual(self.verdict([op("put", 0, 1, b"v", denied=True)]), "illegal")

    def test_reads_and_appends_need_read(self):
        """With write alone, a get is refused and an append (which answers the value) too."""
        history = ON + [change(("grant", WRITE), 4, 5), op("get", 6, 7, denied=True),
                        op("append", 8, 9, b"x", denied=True), op("put", 10, 11, b"v")]
        self.assertEqual(self.verdict(history), "ok")
        self.assertEqual(self.verdict(ON + [change(("grant", WRITE), 4, 5), op("get", 6, 7)]), "illegal")

    def test_revoke_refused_only_when_not_granted(self):
        """A revoke refused for its precondition says nothing was granted."""
        self.assertEqual(self.verdict(ON + [change(("revoke",), 4, 5, output=False)]), "illegal")
        self.assertEqual(self.verdict(ON + [change(("role", False), 4, 5),
                                            change(("role", False), 6, 7, output=False)]), "ok")

    def test_timed_out_change_may_or_may_not_apply(self):
        """A revoke whose answer was lost explains a refusal, or a success, after it."""
        lost = change(("grant", READ), 4, None)
        self.assertEqual(self.verdict(ON + [lost, op("put", 6, 7, b"v", denied=True)]), "ok")
        self.assertEqual(self.verdict(ON + [lost, op("put", 6, 7, b"v")]), "ok")
        self.assertEqual(self.verdict(ON + [lost, op("put", 6, 7, b"v", denied=True),
                                            op("put", 8, 9, b"w")]), "illegal")

    def test_agrees_with_brute_force(self):
        """On small random histories with auth changes the verdict matches trying every order."""
        verdicts = {"ok": 0, "illegal": 0}
        for seed in range(1000):
            history = small_history(random.Random(seed))
            expected = "ok" if brute_force(history) else "illegal"
            self.assertEqual(check(history).outcome, expected, f"seed {seed}: {history}")
            verdicts[expected] += 1
        self.assertGreater(min(verdicts.values()), 200, verdicts)


def small_history(rng):
    """At most six operations: an admin's changes and a few clients' writes and reads."""
    history = []
    now = 0.0
    for _ in range(rng.randint(1, 2)):
        what = rng.choice((("enable",), ("grant", READ), ("grant", READWRITE), ("grant", WRITE), ("revoke",),
                           ("role", True), ("role", False)))
        call = now + rng.uniform(0, 0.5)
        ret = None if rng.random() < 0.2 else call + rng.uniform(0, 1.5)
        now = call + 1.5 if ret is None else ret
        history.append(change(what, call, ret, output=rng.random() < 0.8))
    values = (None, b"a", b"b")
    for client in range(1, rng.randint(2, 3)):
        now = rng.uniform(0, 2)
        for _ in range(rng.randint(1, 2)):
            call = now + rng.uniform(0, 1)
            ret = None if rng.random() < 0.2 else call + rng.uniform(0, 2)
            now = call + 2 if ret is None else ret
            kind = rng.choice(("get", "put", "put", "delete", "append", "cas"))
            written = rng.choice(values[1:])
            value = {"put": written, "append": written, "cas": (rng.choice(values), written)}.get(kind)
            output = {"get": rng.choice(values), "cas": rng.random() < 0.5}.get(kind)
            denied = ret is not None and rng.random() < 0.35
            history.append(Operation(client, kind, K, value, None if denied else output, call, ret, denied))
    return history


def brute_force(history):
    """Whether C{history} is linearizable: every subset of its timed-out operations, in every order."""
    answered = [o for o in history if o.ret is not None]
    timed_out = [o for o in history if o.ret is None]
    for size in range(len(timed_out) + 1):
        for chosen in itertools.combinations(timed_out, size):
            for order in itertools.permutations(answered + list(chosen)):
                if any(later.ret is not None and later.ret < earlier.call
                       for n, earlier in enumerate(order) for later in order[n + 1:]):
                    continue
                state = (None, False, 0, False)
                for one in order:
                    state = step(one, state)
                    if state is None:
                        break
                else:
                    return True
    return False


def step(one, state):
    """The state after C{one} (a sequential spec written apart from authmodel's), or None if impossible."""
    value, enabled, bits, role = state
    answered = one.ret is not None
    if one.kind == "auth":
        what = one.input[0]
        if what == "enable":
            if answered and not one.output:
                return state if enabled else None
            return value, True, bits, role
        if what == "grant":
            return value, enabled, one.input[1], role
        held = bool(bits) if what == "revoke" else role
        if what == "role" and one.input[1]:
            return value, enabled, bits, True
        if answered and one.output != held:
            return None
        return (value, enabled, 0, role) if what == "revoke" else (value, enabled, bits, False)
    need = NEEDS[one.kind]
    permitted = not enabled or (role and bits & need == need)
    if one.denied:
        return None if permitted else state
    if not permitted:
        return None
    if one.kind == "get":
        return state if value == one.output else None
    if one.kind == "put":
        return one.input, enabled, bits, role
    if one.kind == "delete":
        return None, enabled, bits, role
    if one.kind == "append":
        return (value or b"") + one.input, enabled, bits, role
    expected, new = one.input
    if not answered:
        return (new if value == expected else value), enabled, bits, role
    if one.output != (value == expected):
        return None
    return (new if one.output else value), enabled, bits, role


def run(seed, plant=None, provider="memory"):
    return Simulation(seed, plant=plant, scenario="auth", provider=provider).run()


class SimulatorTests(SynchronousTestCase):
    """The auth workload under seeded faults."""

    def test_auth_scenario_clean(self):
        """CLEAN_SEEDS seeds of scenario auth violate nothing, with changes and refusals in every history."""
        failures = []
        ops = {"auth change": 0, "refused: permission": 0, "put": 0}
        for seed in range(CLEAN_SEEDS):
            result = run(seed)
            if not result.ok:
                failures.append(f"seed {seed}: {result.violation}; replay with:"
                                f" {result.replay()} --scenario auth")
            for kind in ops:
                ops[kind] += result.ops[kind]
        self.flushLoggedErrors()
        self.assertEqual(failures, [])
        self.assertGreater(min(ops.values()), CLEAN_SEEDS * 3, ops)

    def test_auth_scenario_on_lmdb(self):
        """The workload on LMDB (hashing on the simulated pool thread, the auth table in its sub-database)."""
        result = run(2, provider="lmdb")
        self.flushLoggedErrors()
        self.assertIsNone(result.violation)
        self.assertGreater(result.ops["auth change"], 0)

    def test_random_mix_runs_workload(self):
        """A share of the plain random seeds run the workload too, drawn apart from the scenarios."""
        with_auth = [seed for seed in range(30) if Simulation(seed).auth is not None]
        self.assertTrue(with_auth)
        for seed in with_auth:
            self.assertIsNone(Simulation(seed).scenario)
        self.assertIsNone(Simulation(with_auth[0], faults=False).auth)

    def caught(self, name: str) -> None:
        catches = plants.get(name).catches
        for seed in range(SEARCH_SEEDS):
            result = run(seed, plant=name)
            if not result.ok and result.violation.kind in catches:
                break
        else:
            self.fail(f"{name} not caught in {SEARCH_SEEDS} seeds")
        self.flushLoggedErrors()
        again = run(result.seed, plant=name)
        self.assertEqual(str(again.violation), str(result.violation))

    def test_take_time_read_auth_caught(self):
        """A read's permission checked when taken, not when it runs, is caught (a member behind a revoke)."""
        self.caught("take-time-read-auth")

    def test_user_dropped_while_disabled_caught(self):
        """A lagging member dropping a certificate's user before it applied the enable is caught."""
        self.caught("user-dropped-while-disabled")

    def test_submit_time_auth_caught(self):
        """
        A write's permission checked only when a member takes it, against
        its applied auth state, is caught by the history: a member behind
        a change decides against it after the change was answered.
        """
        catches = plants.get("submit-time-auth").catches
        for seed in range(SEARCH_SEEDS):
            result = run(seed, plant="submit-time-auth")
            if not result.ok and result.violation.kind in catches:
                break
        else:
            self.fail(f"submit-time-auth not caught in {SEARCH_SEEDS} seeds")
        self.flushLoggedErrors()
        again = run(result.seed, plant="submit-time-auth")
        self.assertEqual(str(again.violation), str(result.violation))
