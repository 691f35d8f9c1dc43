"""
The lock and election recipes' decisions (L{kvpaxos.client.concurrency_core}),
with no I/O: what each step asks for, how an answer is read, whom a
contender waits for and when it owns the lock (etcd's C{mutex.go},
C{election.go}, C{key.go}); then many contenders driven in a seeded random
interleaving against a small model of the store (revisions, leases,
transactions, deletes as watch events), where no two ever hold at once, no
guarded increment is lost, and every contender gets its turn.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.client import concurrency_core as core
from kvpaxos.client.requests import prefix_end
from kvpaxos.v1 import kv_pb2

P = b"jobs/"


def kv(key: bytes, create: int, mod: Optional[int] = None, value: bytes = b"") -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, value=value, version=1, create_revision=create, mod_revision=mod or create)


def answer(succeeded: bool, revision: int, first: Optional[list], everyone: list, more: bool = False):
    """A TxnResponse of the contender's first transaction: the put (or the get of our key), then the prefix."""
    header = kv_pb2.ResponseHeader(revision=revision)
    head = (kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse(header=header)) if succeeded else
            kv_pb2.ResponseOp(response_range=kv_pb2.RangeResponse(header=header, kvs=first or [])))
    rest = kv_pb2.ResponseOp(response_range=kv_pb2.RangeResponse(header=header, kvs=everyone, more=more))
    return kv_pb2.TxnResponse(header=header, succeeded=succeeded, responses=[head, rest])


class KeySpaceTests(SynchronousTestCase):
    """Names, keys and the pure reads."""

    def test_prefix_and_key(self) -> None:
        """A lock NAME is the prefix NAME/, and a contender's key is the prefix and its lease id in hex (etcd's %x)."""
        self.assertEqual(core.recipe_prefix("jobs"), P)
        self.assertEqual(core.contender_key(P, 0x694d5765fc71500b), b"jobs/694d5765fc71500b")
        self.assertEqual(core.contender_key(P, 0xab), b"jobs/ab")

    def test_bad_names(self) -> None:
        """An empty name and a contender without a lease are refused before anything is sent."""
        self.assertRaises(core.ClientError, core.recipe_prefix, "")
        self.assertRaises(core.ClientError, core.contender_key, P, 0)

    def test_owner_is_the_lowest_create_revision(self) -> None:
        """The owner is the record created first, whatever the key order; ties go to the lower key."""
        records = [kv(b"jobs/c", 9), kv(b"jobs/a", 12), kv(b"jobs/b", 7)]
        self.assertEqual(core.owner(records).key, b"jobs/b")
        self.assertEqual(core.owner([kv(b"jobs/y", 3), kv(b"jobs/x", 3)]).key, b"jobs/x")
        self.assertIsNone(core.owner([]))

    def test_predecessor_is_the_highest_place_below(self) -> None:
        """A contender waits for the key just before it, not for the owner (one waiter woken per release)."""
        records = [kv(b"jobs/a", 5), kv(b"jobs/b", 7), kv(b"jobs/m", 9), kv(b"jobs/z", 11)]
        self.assertEqual(core.predecessor(records, records[2]).key, b"jobs/b")
        self.assertIsNone(core.predecessor(records, records[0]))

    def test_guard_resign_and_proclaim(self) -> None:
        """The fence is create_revision(key) == revision; resign deletes and proclaim puts under it."""
        fence = core.guard(b"jobs/ab", 42)
        self.assertEqual((fence.key, fence.target, fence.result, fence.create_revision),
                         (b"jobs/ab", kv_pb2.Compare.CREATE_REVISION, kv_pb2.Compare.EQUAL, 42))
        resign = core.resign_txn(b"jobs/ab", 42)
        self.assertEqual(resign.compares, (fence,))
        self.assertEqual(resign.success[0].request_delete_range.key, b"jobs/ab")
        proclaim = core.proclaim_txn(b"jobs/ab", 42, b"v2", 0xab)
        self.assertEqual(proclaim.compares, (fence,))
        put = proclaim.success[0].request_put
        self.assertEqual((put.key, put.value, put.lease), (b"jobs/ab", b"v2", 0xab))


class ContenderTests(SynchronousTestCase):
    """One contender's acquisition, step by step."""

    def setUp(self) -> None:
        self.contender = core.Contender(P, 0xab)

    def test_first_transaction(self) -> None:
        """If the key is absent put it with the lease, else read it; either way read the whole prefix, keys only."""
        txn = self.contender.begin()
        (absent,) = txn.compares
        self.assertEqual((absent.key, absent.target, absent.create_revision),
                         (b"jobs/ab", kv_pb2.Compare.CREATE_REVISION, 0))
        put, everyone = txn.success
        self.assertEqual((put.request_put.key, put.request_put.lease), (b"jobs/ab", 0xab))
        self.assertEqual(txn.failure[0].request_range.key, b"jobs/ab")
        for branch in (txn.success, txn.failure):
            listing = branch[1].request_range
            self.assertEqual((listing.key, listing.range_end, listing.keys_only), (P, prefix_end(P), True))

    def test_uncontended(self) -> None:
        """Alone under the prefix, the contender owns the lock after one transaction, at the put's revision."""
        self.contender.begin()
        step = self.contender.txn_answered(answer(True, 8, None, [kv(b"jobs/ab", 8)]))
        self.assertEqual(step, core.Owned(b"jobs/ab", 8, 8))

    def test_contended_waits_for_its_predecessor(self) -> None:
        """Behind two keys it waits for the deletion of the later one, from the revision after the read."""
        self.contender.begin()
        step = self.contender.txn_answered(answer(True, 9, None, [
            kv(b"jobs/ab", 9), kv(b"jobs/b1", 7), kv(b"jobs/b0", 5)]))
        self.assertEqual(step, core.AwaitDelete(b"jobs/b1", 10))

    def test_wait_then_own(self) -> None:
        """Once the predecessor is deleted the keys are read again; with nothing before it, it owns the lock."""
        self.contender.begin()
        self.contender.txn_answered(answer(True, 9, None, [kv(b"jobs/ab", 9), kv(b"jobs/b0", 5)]))
        self.assertEqual(self.contender.key_deleted(), core.Listing(P, prefix_end(P)))
        # The owner (5) went and a later key (12) came: neither is waited for.
        step = self.contender.listed([kv(b"jobs/ab", 9), kv(b"jobs/zz", 12)], 13)
        self.assertEqual(step, core.Owned(b"jobs/ab", 9, 13))

    def test_predecessor_left_another_remains(self) -> None:
        """The predecessor went but an earlier one is still there: wait for that one next (etcd's waitDeletes)."""
        self.contender.begin()
        self.contender.txn_answered(answer(True, 9, None, [kv(b"jobs/ab", 9), kv(b"jobs/a", 4), kv(b"jobs/b", 6)]))
        self.contender.key_deleted()
        self.assertEqual(self.contender.listed([kv(b"jobs/ab", 9), kv(b"jobs/a", 4)], 11),
                         core.AwaitDelete(b"jobs/a", 12))

    def test_key_gone_while_waiting(self) -> None:
        """A reading without our key (its lease ended) is Lost, not ownership."""
        self.contender.begin()
        self.contender.txn_answered(answer(True, 9, None, [kv(b"jobs/ab", 9), kv(b"jobs/b0", 5)]))
        self.contender.key_deleted()
        step = self.contender.listed([], 20)
        self.assertIsInstance(step, core.Lost)
        self.assertIsInstance(step.error(), core.LockLost)

    def test_key_created_again(self) -> None:
        """Our key deleted and created again by someone else is not our place: Lost."""
        self.contender.begin()
        self.contender.txn_answered(answer(True, 9, None, [kv(b"jobs/ab", 9), kv(b"jobs/b0", 5)]))
        self.contender.key_deleted()
        self.assertIsInstance(self.contender.listed([kv(b"jobs/ab", 15)], 15), core.Lost)

    def test_existing_key_keeps_its_place(self) -> None:
        """A session whose key exists already keeps that key's create revision (etcd's reuse of myKey)."""
        self.contender.begin()
        mine = kv(b"jobs/ab", 4)
        step = self.contender.txn_answered(answer(False, 30, [mine], [mine, kv(b"jobs/c", 9)]))
        self.assertEqual(step, core.Owned(b"jobs/ab", 4, 30))
        self.assertEqual(self.contender.create_revision, 4)

    def test_cut_reading_reads_every_page(self) -> None:
        """A prefix too large for the transaction's one response is read again, paged."""
        self.contender.begin()
        step = self.contender.txn_answered(answer(True, 9, None, [kv(b"jobs/a", 2)], more=True))
        self.assertEqual(step, core.Listing(P, prefix_end(P)))
        self.assertEqual(self.contender.listed([kv(b"jobs/a", 2), kv(b"jobs/ab", 9)], 9),
                         core.AwaitDelete(b"jobs/a", 10))

    def test_misuse(self) -> None:
        """Reporting out of order is the driver's bug, said so: RecipeMisuse."""
        self.assertRaises(core.RecipeMisuse, self.contender.listed, [], 1)
        self.contender.begin()
        self.assertRaises(core.RecipeMisuse, self.contender.begin)
        self.assertRaises(core.RecipeMisuse, self.contender.key_deleted)
        self.contender.txn_answered(answer(True, 8, None, [kv(b"jobs/ab", 8)]))
        self.assertRaises(core.RecipeMisuse, self.contender.key_deleted)

    def test_malformed_answer(self) -> None:
        """An answer without the transaction's two responses is the server's fault, not a decision."""
        self.contender.begin()
        self.assertRaises(core.ClientError, self.contender.txn_answered, kv_pb2.TxnResponse(succeeded=True))


class CampaignTests(SynchronousTestCase):
    """A campaign is a contender whose key holds a value."""

    def test_value_put(self) -> None:
        """The first transaction puts the candidate's value."""
        txn = core.Contender(P, 0xab, b"node-1", proclaim=True).begin()
        self.assertEqual(txn.success[0].request_put.value, b"node-1")

    def test_other_value_is_proclaimed(self) -> None:
        """Standing again with another value proclaims it (guarded), then goes on from the first reading."""
        candidate = core.Contender(P, 0xab, b"new", proclaim=True)
        candidate.begin()
        step = candidate.txn_answered(answer(False, 20, [kv(b"jobs/ab", 4, value=b"old")],
                                             [kv(b"jobs/a", 2), kv(b"jobs/ab", 4)]))
        self.assertEqual(step, core.proclaim_txn(b"jobs/ab", 4, b"new", 0xab))
        done = kv_pb2.TxnResponse(header=kv_pb2.ResponseHeader(revision=21), succeeded=True)
        self.assertEqual(candidate.txn_answered(done), core.AwaitDelete(b"jobs/a", 21))

    def test_proclaim_refused(self) -> None:
        """A proclaim refused (the key went in between) is Lost."""
        candidate = core.Contender(P, 0xab, b"new", proclaim=True)
        candidate.begin()
        candidate.txn_answered(answer(False, 20, [kv(b"jobs/ab", 4, value=b"old")], [kv(b"jobs/ab", 4)]))
        self.assertIsInstance(candidate.txn_answered(kv_pb2.TxnResponse(succeeded=False)), core.Lost)

    def test_same_value_not_written(self) -> None:
        """Standing again with the value it has writes nothing (observers see no event)."""
        candidate = core.Contender(P, 0xab, b"same", proclaim=True)
        candidate.begin()
        step = candidate.txn_answered(answer(False, 20, [kv(b"jobs/ab", 4, value=b"same")], [kv(b"jobs/ab", 4)]))
        self.assertEqual(step, core.Owned(b"jobs/ab", 4, 20))


class ObserverTests(SynchronousTestCase):
    """Who leads, and each change."""

    def setUp(self) -> None:
        self.observer = core.Observer(P)
        self.assertEqual(self.observer.begin(), core.Listing(P, prefix_end(P), keys_only=False))

    def test_leader_then_values_then_next(self) -> None:
        """The leader now, each value it proclaims, and after its key goes the next one read anew."""
        first = kv(b"jobs/a", 3, 3, b"one")
        leader, step = self.observer.listed([kv(b"jobs/b", 5, 5, b"two"), first], 8)
        self.assertEqual((leader, step), (first, core.Watching(b"jobs/a", b"", 9)))
        proclaimed = kv(b"jobs/a", 3, 10, b"one, v2")
        self.assertEqual(self.observer.event("put", proclaimed), (proclaimed, None))
        leader, step = self.observer.event("delete", kv(b"jobs/a", 0, 11))
        self.assertEqual((leader, step), (None, core.Listing(P, prefix_end(P), keys_only=False)))
        second = kv(b"jobs/b", 5, 5, b"two")
        self.assertEqual(self.observer.listed([second], 11), (second, core.Watching(b"jobs/b", b"", 12)))

    def test_nobody_leads(self) -> None:
        """With no key it watches the prefix; the first put is the leader, then its key is watched."""
        self.assertEqual(self.observer.listed([], 6), (None, core.Watching(P, prefix_end(P), 7)))
        self.assertEqual(self.observer.event("delete", kv(b"jobs/x", 0, 7)), (None, None))
        first = kv(b"jobs/c", 8, 8, b"v")
        self.assertEqual(self.observer.event("put", first), (first, core.Watching(b"jobs/c", b"", 9)))

    def test_compacted(self) -> None:
        """A watch compacted away reads the keys again."""
        self.observer.listed([], 6)
        self.assertEqual(self.observer.compacted(), core.Listing(P, prefix_end(P), keys_only=False))


# --- many contenders against a model of the store ------------------------------------


class Store:
    """
    A model of the store for the recipe's requests: revisions, keys with
    their create and mod revisions, leases that delete their keys, the
    compares and ops the recipe sends, and the deletes a watch would see.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.kvs: dict = {}
        self.lease_of: dict = {}
        #: key -> the revisions at which it was deleted.
        self.deletes: dict = {}

    def _write(self) -> int:
        return self.revision + 1

    def _delete(self, key: bytes, revision: int) -> None:
        if self.kvs.pop(key, None) is not None:
            self.deletes.setdefault(key, []).append(revision)
            self.lease_of.pop(key, None)

    def revoke(self, lease: int) -> None:
        keys = sorted(k for k, owner in self.lease_of.items() if owner == lease)
        if keys:
            self.revision += 1
            for key in keys:
                self._delete(key, self.revision)

    def listing(self, key: bytes, end: bytes, keys_only: bool = True) -> list:
        return [self.kvs[k] for k in sorted(self.kvs) if key <= k < end]

    def deleted_since(self, key: bytes, revision: int) -> bool:
        return any(r >= revision for r in self.deletes.get(key, ()))

    def _holds(self, compare) -> bool:
        record = self.kvs.get(compare.key)
        if compare.target == kv_pb2.Compare.CREATE_REVISION:
            return (record.create_revision if record else 0) == compare.create_revision
        assert compare.target == kv_pb2.Compare.VALUE
        return record is not None and record.value == compare.value

    def txn(self, compares, success, failure=()) -> kv_pb2.TxnResponse:
        succeeded = all(self._holds(c) for c in compares)
        revision, wrote, responses = self._write(), False, []
        for op in (success if succeeded else failure):
            which = op.WhichOneof("request")
            if which == "request_put":
                put, old = op.request_put, self.kvs.get(op.request_put.key)
                self.kvs[put.key] = kv(put.key, old.create_revision if old else revision, revision, put.value)
                self.lease_of[put.key] = put.lease
                wrote = True
                responses.append(kv_pb2.ResponseOp(response_put=kv_pb2.PutResponse()))
            elif which == "request_delete_range":
                wrote = wrote or op.request_delete_range.key in self.kvs
                self._delete(op.request_delete_range.key, revision)
                responses.append(kv_pb2.ResponseOp(response_delete_range=kv_pb2.DeleteRangeResponse()))
            else:
                r = op.request_range
                found = self.listing(r.key, r.range_end or r.key + b"\0")
                responses.append(kv_pb2.ResponseOp(response_range=kv_pb2.RangeResponse(kvs=found)))
        if wrote:
            self.revision = revision
        return kv_pb2.TxnResponse(header=kv_pb2.ResponseHeader(revision=self.revision), succeeded=succeeded,
                                  responses=responses)


class InterleavingTests(SynchronousTestCase):
    """Contenders step in a seeded random order; the model checks what they believe."""

    def run_seed(self, seed: int, contenders: int = 5, turns: int = 3) -> None:
        rng = random.Random(seed)
        store = Store()
        store.txn((), (kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"counter", value=b"0")),))
        done_turns, increments = {}, 0
        lease = {c: c + 1 for c in range(contenders)}
        state = {}  # contender -> (Contender, step, phase)

        def start(c: int) -> None:
            contender = core.Contender(P, lease[c])
            state[c] = [contender, contender.begin(), None]

        for c in range(contenders):
            start(c)
        for _ in range(20_000):
            if not state:
                break
            c = rng.choice(sorted(state))
            contender, step, read = state[c]
            if isinstance(step, core.AwaitDelete) and rng.random() < 0.01:
                store.revoke(lease[c])  # a waiter's lease runs out: it finds itself Lost once its turn comes
            if isinstance(step, core.Txn):
                state[c][1] = contender.txn_answered(store.txn(step.compares, step.success, step.failure))
            elif isinstance(step, core.Listing):
                state[c][1] = contender.listed(store.listing(step.key, step.range_end), store.revision)
            elif isinstance(step, core.AwaitDelete):
                if store.deleted_since(step.key, step.start_revision):
                    state[c][1] = contender.key_deleted()
            elif isinstance(step, core.Lost):
                lease[c] += 100  # a new session, a new key
                start(c)
            elif read is None:  # Owned: read the counter, maybe lose the lease, then write under the guard
                holders = [o for o, (_, s, _) in state.items() if isinstance(s, core.Owned)
                           and store.kvs.get(s.key, kv(b"", -1)).create_revision == s.create_revision]
                self.assertEqual(holders, [c], f"seed {seed}: two contenders hold the lock")
                state[c][2] = int(store.kvs[b"counter"].value)
                if rng.random() < 0.1:
                    store.revoke(lease[c])  # the lease runs out while it works
            else:
                put = kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"counter", value=b"%d" % (read + 1)))
                wrote = store.txn((core.guard(step.key, step.create_revision),), (put,)).succeeded
                increments += wrote
                release = core.resign_txn(step.key, step.create_revision)
                store.txn(release.compares, release.success)
                done_turns[c] = done_turns.get(c, 0) + 1
                del state[c]
                if done_turns[c] < turns:
                    lease[c] += 100
                    start(c)
        self.assertEqual(state, {}, f"seed {seed}: contenders stuck")
        self.assertEqual(int(store.kvs[b"counter"].value), increments, f"seed {seed}: an increment was lost")
        self.assertGreaterEqual(increments, 1)
        self.assertEqual(store.listing(P, prefix_end(P)), [], f"seed {seed}: keys left behind")

    def test_mutual_exclusion_across_seeds(self) -> None:
        """Across 200 interleavings (with leases lost mid-turn) one holder at a time, and every guarded write counts."""
        for seed in range(200):
            self.run_seed(seed)
