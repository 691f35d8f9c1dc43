"""
Tests for the key-value linearizability checker
(L{kvpaxos.testing.linearizability}): hand-written histories pin the
register model and timed-out operations; seeded random histories built
around known linearization points must pass, one mutated read must fail,
and small random histories must get the verdict a brute-force search gives.
"""

import itertools
import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import DeleteRange, KeyValue, Put, PutResponse, Range, RangeResult, Txn, TxnResult
from kvpaxos.testing.linearizability import Operation, check, project_range, project_txn

K = b"k"


def get(client, output, call, ret, key=K):
    return Operation(client, "get", key, None, output, call, ret)


def put(client, value, call, ret, key=K):
    return Operation(client, "put", key, value, None, call, ret)


def delete(client, call, ret, key=K):
    return Operation(client, "delete", key, None, None, call, ret)


def append(client, value, output, call, ret, key=K):
    return Operation(client, "append", key, value, output, call, ret)


def cas(client, expected, new, output, call, ret, key=K):
    return Operation(client, "cas", key, (expected, new), output, call, ret)


def linearizable_history(rng, clients=8, per_client=40, keys=(K,), timeout_rate=0.05):
    """
    Return a random linearizable history: each client issues requests one
    after another with random intervals; each request takes effect at a
    random point inside its interval (a timed-out one maybe never), and the
    answers come from applying them to a register in that order.

    Values are unique tokens (C{p..;} put, C{a..;} append, C{c..;} cas), so a
    state equals a put's value only right after that put.
    """
    drafts = []
    written = {key: [None] for key in keys}
    for client in range(clients):
        now = rng.uniform(0, 2)
        for seq in range(per_client):
            call = now + rng.uniform(0, 1)
            ret = call + rng.uniform(0.05, 3)
            now = ret
            key = rng.choice(keys)
            kind = rng.choice(("get", "get", "put", "put", "delete", "append", "cas"))
            tag = b"%d.%d;" % (client, seq)
            value = {"put": b"p" + tag, "append": b"a" + tag}.get(kind)
            if kind == "cas":
                value = (rng.choice(written[key]), b"c" + tag)
                written[key].append(value[1])
            elif value is not None:
                written[key].append(value)
            timed_out = rng.random() < timeout_rate
            effect = not timed_out or rng.random() < 0.5
            point = rng.uniform(call, ret) if effect else None
            ret = None if timed_out else ret
            drafts.append([client, kind, key, value, None, call, ret, point])
    state = {}
    for draft in sorted((d for d in drafts if d[7] is not None), key=lambda d: d[7]):
        state[draft[2]], draft[4] = apply(draft[1], draft[3], state.get(draft[2]))
        if draft[1] == "append" and rng.random() < 0.5:
            draft[4] = None
    return [Operation(*draft[:7]) for draft in drafts]


def apply(kind, value, current):
    """Return the value after and the answer of one operation on a register."""
    if kind == "get":
        return current, current
    if kind == "append":
        return (current or b"") + value, (current or b"") + value
    if kind == "cas":
        return (value[1], True) if current == value[0] else (current, False)
    return (value if kind == "put" else None), None


def brute_force(history):
    """
    Return whether history is linearizable, by trying every subset of its
    timed-out operations in every order that respects real time.
    """
    answered = [op for op in history if op.ret is not None]
    timed_out = [op for op in history if op.ret is None]
    for size in range(len(timed_out) + 1):
        for chosen in itertools.combinations(timed_out, size):
            for order in itertools.permutations(answered + list(chosen)):
                if any(
                    later.ret is not None and later.ret < earlier.call
                    for n, earlier in enumerate(order)
                    for later in order[n + 1 :]
                ):
                    continue
                current = None
                for op in order:
                    current, answer = apply(op.kind, op.input, current)
                    unreported = op.ret is None or (op.kind == "append" and op.output is None)
                    if not unreported and answer != op.output:
                        break
                else:
                    return True
    return False


def small_history(rng):
    """Return a random history of at most six operations, often illegal."""
    values = (None, b"", b"a", b"b", b"ab")
    history = []
    for client in range(rng.randint(1, 3)):
        now = rng.uniform(0, 2)
        for _ in range(rng.randint(1, 2)):
            call = now + rng.uniform(0, 1)
            ret = None if rng.random() < 0.25 else call + rng.uniform(0, 2)
            now = call + 2 if ret is None else ret
            kind = rng.choice(("get", "put", "delete", "append", "cas"))
            written = rng.choice(values[1:])
            output = {
                "get": rng.choice(values),
                "append": rng.choice((None, None, written, b"a" + written)),
                "cas": rng.random() < 0.5,
            }.get(kind)
            cas_input = (rng.choice(values), written)
            value = {"put": written, "append": written, "cas": cas_input}.get(kind)
            history.append(Operation(client, kind, K, value, output, call, ret))
    return history


def mutate_read(history, rng):
    """
    Return history with one answered get changed to read the value of a put
    on its key that was called after the get returned, or None if there is
    no such pair.
    """
    pairs = [
        (g, write.input)
        for g, read in enumerate(history)
        if read.kind == "get" and read.ret is not None
        for write in history
        if write.kind == "put" and write.key == read.key and write.call > read.ret
    ]
    if not pairs:
        return None
    g, value = rng.choice(pairs)
    read = history[g]
    mutated = get(read.client, value, read.call, read.ret, read.key)
    return history[:g] + [mutated] + history[g + 1 :]


class SequentialTests(SynchronousTestCase):
    """Histories without concurrency follow the register model exactly."""

    def test_empty(self):
        """An empty history is linearizable."""
        self.assertEqual(check([]).outcome, "ok")

    def test_sequential(self):
        """A sequential history of every kind whose answers fit the model is ok."""
        history = [
            get(1, None, 0, 1),
            put(1, b"a", 2, 3),
            get(2, b"a", 4, 5),
            append(1, b"b", b"ab", 6, 7),
            cas(2, b"ab", b"c", True, 8, 9),
            delete(1, 10, 11),
            get(2, None, 12, 13),
            append(1, b"x", b"x", 14, 15),
        ]
        result = check(history)
        self.assertEqual((result.outcome, result.key), ("ok", None))

    def test_read_never_written(self):
        """A read of a value nobody wrote is illegal."""
        result = check([put(1, b"a", 0, 1), get(2, b"zzz", 2, 3)])
        self.assertEqual((result.outcome, result.key), ("illegal", K))

    def test_absent_is_not_empty(self):
        """An absent key does not read as the empty value."""
        self.assertEqual(check([get(1, b"", 0, 1)]).outcome, "illegal")

    def test_touching_intervals_are_concurrent(self):
        """An operation returning at the instant another is called may follow it."""
        history = [put(1, b"a", 0, 1), get(2, None, 1, 2)]
        self.assertEqual(check(history).outcome, "ok")

    def test_malformed_operation(self):
        """An unknown kind or a return before the call is the caller's error."""
        self.assertRaises(ValueError, Operation, 1, "incr", K, None, None, 0, 1)
        self.assertRaises(ValueError, put, 1, b"a", 5, 4)
        self.assertRaises(ValueError, Operation, 1, "cas", K, b"a", True, 0, 1)


class ConcurrencyTests(SynchronousTestCase):
    """Overlapping operations may take effect in either order; real time binds."""

    def test_overlapping_writes_either_order(self):
        """Reads that see overlapping writes in either order are linearizable."""
        for first, second in ((b"a", b"b"), (b"b", b"a")):
            history = [
                put(1, b"a", 0, 10),
                put(2, b"b", 1, 9),
                get(3, first, 2, 5),
                get(3, second, 6, 12),
            ]
            self.assertEqual(check(history).outcome, "ok", (first, second))

    def test_stale_read(self):
        """A read that returns an overwritten value after the overwrite completed is illegal."""
        stale = get(3, b"a", 4, 5)
        history = [put(1, b"a", 0, 1), put(2, b"b", 2, 3), stale, get(1, b"b", 6, 7)]
        result = check(history)
        self.assertEqual((result.outcome, result.key), ("illegal", K))
        self.assertEqual(result.frontier, stale)
        self.assertIn(stale, result.window)
        self.assertIn(history[1], result.window)
        self.assertNotIn(history[3], result.window)
        self.assertEqual((result.linearized, result.value), (2, b"b"))
        self.assertIn("client 3: get => b'a'", result.explain())

    def test_reads_disagree_on_order(self):
        """Two sequential readers cannot see two concurrent writes in opposite orders."""
        history = [
            put(1, b"a", 0, 10),
            put(2, b"b", 0, 10),
            get(3, b"a", 1, 2),
            get(3, b"b", 3, 4),
            get(4, b"b", 5, 6),
            get(4, b"a", 7, 8),
        ]
        self.assertEqual(check(history).outcome, "illegal")


class CompareAndSwapTests(SynchronousTestCase):
    """A cas swaps exactly when the value equals its expected value."""

    def test_success_and_failure(self):
        """A cas reports success on a match and failure on a mismatch."""
        history = [
            cas(1, None, b"a", True, 0, 1),
            cas(2, None, b"b", False, 2, 3),
            cas(2, b"a", b"b", True, 4, 5),
            get(1, b"b", 6, 7),
        ]
        self.assertEqual(check(history).outcome, "ok")

    def test_contradicted_outcome(self):
        """A cas reporting success on a mismatch, or failure on a match, is illegal."""
        for expected, swapped in ((b"x", True), (b"a", False)):
            history = [put(1, b"a", 0, 1), cas(2, expected, b"b", swapped, 2, 3)]
            self.assertEqual(check(history).outcome, "illegal", expected)

    def test_concurrent_cas_one_wins(self):
        """Of two concurrent cas from one value, one may win and the other lose."""
        history = [
            put(1, b"a", 0, 1),
            cas(2, b"a", b"b", False, 2, 5),
            cas(3, b"a", b"c", True, 3, 4),
            get(1, b"c", 6, 7),
        ]
        self.assertEqual(check(history).outcome, "ok")


class AppendTests(SynchronousTestCase):
    """An append extends the value, and a reported result must match it."""

    def test_reported_values(self):
        """Concurrent appends whose reported values fix one order are ok."""
        history = [
            append(1, b"x", b"x", 0, 4),
            append(2, b"y", b"xy", 1, 5),
            append(3, b"z", None, 2, 6),
            get(1, b"xyz", 7, 8),
        ]
        self.assertEqual(check(history).outcome, "ok")

    def test_wrong_reported_value(self):
        """An append reporting a value that no order produces is illegal."""
        history = [append(1, b"x", b"x", 0, 1), append(2, b"y", b"y", 2, 3)]
        self.assertEqual(check(history).outcome, "illegal")


class TimedOutTests(SynchronousTestCase):
    """A timed-out operation may take effect once, at any time after its call, or never."""

    def test_needed_write(self):
        """A timed-out write that explains a later read took effect."""
        history = [put(1, b"a", 0, None), put(2, b"b", 1, 2), get(3, b"a", 5, 6)]
        self.assertEqual(check(history).outcome, "ok")

    def test_write_that_never_happened(self):
        """A timed-out write nobody observed may never have taken effect."""
        history = [put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"a", 5, 6)]
        self.assertEqual(check(history).outcome, "ok")

    def test_write_needed_twice(self):
        """A read that would need a timed-out write to take effect twice is illegal."""
        history = [
            put(1, b"x", 0, None),
            get(2, b"x", 1, 2),
            put(2, b"y", 3, 4),
            get(2, b"x", 5, 6),
        ]
        result = check(history)
        self.assertEqual(result.outcome, "illegal")
        self.assertIn(history[3], result.window)

    def test_timed_out_delete_and_cas(self):
        """Timed-out deletes and cas may explain later reads; their answers are ignored."""
        history = [
            put(1, b"a", 0, 1),
            delete(2, 2, None),
            get(3, None, 3, 4),
            cas(3, None, b"b", False, 5, None),
            get(1, b"b", 6, 7),
        ]
        self.assertEqual(check(history).outcome, "ok")

    def test_many_unobserved_timeouts(self):
        """Many unobserved timed-out writes do not hide a stale read."""
        history = [put(c, b"u%d" % c, c, None) for c in range(64)]
        history += [put(1, b"a", 0, 1), put(2, b"b", 2, 3), get(3, b"a", 4, 5)]
        self.assertEqual(check(history, time_limit_s=60).outcome, "illegal")


class KeyTests(SynchronousTestCase):
    """Keys are checked independently, and the bad one is named."""

    def test_one_bad_key(self):
        """Of several keys only the one with a stale read is reported illegal."""
        history = []
        for n, key in enumerate((b"k1", b"k2", b"k3", b"k4")):
            history += [put(1, b"a", 0, 1, key), put(2, b"b", 2, 3, key)]
            history.append(get(3, b"a" if key == b"k3" else b"b", 4, 5, key))
        result = check(history)
        self.assertEqual((result.outcome, result.key), ("illegal", b"k3"))
        self.assertTrue(all(op.key == b"k3" for op in result.window))
        self.assertIn("b'k3'", result.explain())

    def test_same_values_on_other_keys(self):
        """A value written to one key does not explain a read of another."""
        result = check([put(1, b"a", 0, 1, b"k1"), get(2, b"a", 2, 3, b"k2")])
        self.assertEqual((result.outcome, result.key), ("illegal", b"k2"))


class TimeLimitTests(SynchronousTestCase):
    """The checker gives up with no verdict when its time runs out."""

    def test_clock_jump_is_unknown(self):
        """A clock that jumps past the limit yields "unknown", never "ok"."""
        times = iter([0.0] + [1000.0] * 100)
        history = linearizable_history(random.Random(1), per_client=10)
        result = check(history, time_limit_s=10, clock=lambda: next(times))
        self.assertEqual((result.outcome, result.key), ("unknown", K))
        self.assertIn("unknown", result.explain())

    def test_limit_mid_search(self):
        """The clock is consulted during a long search, not only between keys."""
        ticks = []

        def clock():
            ticks.append(None)
            return 0.0 if len(ticks) <= 2 else 1000.0

        history = linearizable_history(random.Random(2), per_client=200)
        result = check(history, time_limit_s=10, clock=clock)
        self.assertEqual(result.outcome, "unknown")
        self.assertGreater(len(ticks), 2)


class RandomHistoryTests(SynchronousTestCase):
    """Seeded random histories built around linearization points."""

    def test_linearizable(self):
        """Histories built from a sequential run are always linearizable."""
        for seed in range(60):
            keys = (K,) if seed % 2 else (b"k1", b"k2", b"k3")
            history = linearizable_history(random.Random(seed), keys=keys)
            result = check(history)
            self.assertEqual(result.outcome, "ok", f"seed {seed}:\n{result.explain()}")

    def test_mutated_read(self):
        """A read changed to a value written only after it returned is illegal, and named."""
        checked = 0
        for seed in range(60):
            rng = random.Random(seed)
            history = linearizable_history(rng, per_client=12)
            mutated = mutate_read(history, rng)
            if mutated is None:
                continue
            checked += 1
            (bad,) = [read for read, was in zip(mutated, history) if read != was]
            result = check(mutated)
            self.assertEqual((result.outcome, result.key), ("illegal", K), f"seed {seed}")
            self.assertEqual(result.frontier, bad, f"seed {seed}")
            self.assertIn(bad, result.window)
        self.assertGreater(checked, 50)

    def test_agrees_with_brute_force(self):
        """On small random histories the verdict matches trying every order."""
        verdicts = {"ok": 0, "illegal": 0}
        for seed in range(600):
            history = small_history(random.Random(seed))
            expected = "ok" if brute_force(history) else "illegal"
            self.assertEqual(check(history).outcome, expected, f"seed {seed}: {history}")
            verdicts[expected] += 1
        self.assertGreater(min(verdicts.values()), 100, verdicts)


class ProjectionTests(SynchronousTestCase):
    """Transactions and ranges are checked as per-key operations."""

    def test_range_projects_to_gets(self):
        """A range read becomes one get per key, absent keys included, with its interval."""
        ops = project_range(1, (b"a", b"b"), (b"x", None), 2, 3)
        self.assertEqual(ops, [
            Operation(1, "get", b"a", output=b"x", call=2, ret=3),
            Operation(1, "get", b"b", output=None, call=2, ret=3),
        ])

    def test_txn_projects_to_writes_and_reads(self):
        """A write-only txn becomes a put or delete per key; its single-key ranges, answered, gets."""
        txn = Txn((), (Put(b"a", b"1"), DeleteRange(b"b"), Range(b"c")), ())
        answer = TxnResult(True, (PutResponse(), None, RangeResult((KeyValue(b"c", b"v", 1, 1, 1),), 1)))
        ops = project_txn(1, txn, answer, 0, 5)
        self.assertEqual([(o.kind, o.key, o.input, o.output) for o in ops], [
            ("put", b"a", b"1", None), ("delete", b"b", None, None), ("get", b"c", None, b"v"),
        ])
        timed_out = project_txn(1, txn, None, 0, None)
        self.assertEqual([o.kind for o in timed_out], ["put", "delete"])

    def test_txn_atomicity_is_not_projected(self):
        """A history that only a non-atomic txn explains still passes per key (the simulator checks atomicity)."""
        txn = Txn((), (Put(b"a", b"1"), Put(b"b", b"1")), ())
        history = project_txn(1, txn, TxnResult(True, (PutResponse(), PutResponse())), 0, 10)
        history += [
            Operation(2, "get", b"a", output=b"1", call=1, ret=2),
            Operation(2, "get", b"b", output=None, call=3, ret=4),
        ]
        self.assertEqual(check(history).outcome, "ok")

    def test_conditional_txn_refused(self):
        """A txn with compares cannot be projected onto registers."""
        from kvpaxos.kv.commands import Compare, CompareResult, CompareTarget
        txn = Txn((Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"x"),), (Put(b"a", b"y"),), ())
        self.assertRaises(ValueError, project_txn, 1, txn, None, 0, None)
