"""
Tests for the etcd port's C{etcdserverpb.KV} Range, Put, DeleteRange and
Compact (L{kvpaxos.api.etcd_kv}, L{kvpaxos.api.etcd_convert}) and the node's
failures in etcd's words (L{kvpaxos.api.etcd_errors}): the servicers run as
coroutines in front of an in-memory node (L{tests.test_etcd_fakes}); no
port, no thread.
"""

from __future__ import annotations

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors, etcd_convert, etcd_kv
from kvpaxos.api.errors import NoSpace, PermissionDenied, Unauthenticated, Unavailable
from kvpaxos.api.limits import MAX_KEY_BYTES, MAX_VALUE_BYTES
from kvpaxos.api.server import ShuttingDown
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.kv.auth import Credential
from kvpaxos.kv.commands import DeleteRange, Op, Range, Request, Txn
from kvpaxos.kv.compaction import CompactDone, CompactError, CompactRefused
from kvpaxos.node.interfaces import NotLeaderError
from tests.test_etcd_fakes import CLUSTER_ID, Aborted, EtcdHarness

_R = pb.RangeRequest
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"


class RangeTests(EtcdHarness, SynchronousTestCase):
    """Range reads as etcd's: its revisions, ranges, limits, sorts and filters."""

    def setUp(self) -> None:
        super().setUp()
        for key, value in ((b"a/1", b"c"), (b"a/2", b"a"), (b"a/3", b"b"), (b"b/1", b"z")):
            self.node.write(key, value)  # kvpaxos revisions 1..4
        self.node.write(b"a/2", b"a2")  # revision 5: a/2 at version 2

    def keys(self, **fields) -> list:
        return [kv.key for kv in self.call(self.kv.Range, _R(**fields)).kvs]

    def test_one_key(self) -> None:
        """A key's record carries etcd's revisions (kvpaxos's + 1), lease 0, and etcd's header."""
        response = self.call(self.kv.Range, _R(key=b"a/2"))
        (kv,) = response.kvs
        self.assertEqual((kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision, kv.lease),
                         (b"a/2", b"a2", 2, 3, 6, 0))
        self.assertEqual((response.header.cluster_id, response.header.member_id, response.header.revision,
                          response.header.raft_term), (CLUSTER_ID, 1, 6, 5))
        self.assertEqual((response.count, response.more), (1, False))

    def test_empty_store_revision(self) -> None:
        """An empty store is at etcd's revision 1, and a missing key reads as nothing."""
        self.node.state = type(self.node.state)()
        response = self.call(self.kv.Range, _R(key=b"nope"))
        self.assertEqual((list(response.kvs), response.count, response.header.revision), ([], 0, 1))

    def test_ranges(self) -> None:
        """range_end as etcd's: [key, end), b"\\0" from the key on, and b"\\0" with b"\\0" every key."""
        self.assertEqual(self.keys(key=b"a/", range_end=b"a0"), [b"a/1", b"a/2", b"a/3"])
        self.assertEqual(self.keys(key=b"a/3", range_end=b"\0"), [b"a/3", b"b/1"])
        self.assertEqual(self.keys(key=b"\0", range_end=b"\0"), [b"a/1", b"a/2", b"a/3", b"b/1"])
        self.assertEqual(self.keys(key=b"b", range_end=b"a"), [])

    def test_limit(self) -> None:
        """A limit cuts the records and sets more; count is the whole range's; a negative limit is none."""
        response = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", limit=2))
        self.assertEqual(([kv.key for kv in response.kvs], response.more, response.count),
                         ([b"a/1", b"a/2"], True, 3))
        self.assertEqual(self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", limit=3)).more, False)
        self.assertEqual(len(self.keys(key=b"a/", range_end=b"a0", limit=-1)), 3)

    def test_keys_only_and_count_only(self) -> None:
        """keys_only leaves the values out; count_only answers only the count."""
        response = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", keys_only=True))
        self.assertEqual([kv.value for kv in response.kvs], [b"", b"", b""])
        self.assertEqual(response.kvs[1].mod_revision, 6)
        counted = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", count_only=True, limit=1))
        self.assertEqual((list(counted.kvs), counted.count, counted.more), ([], 3, False))

    def test_consistency(self) -> None:
        """serializable reads are the node's serializable reads; the default is linearizable."""
        self.call(self.kv.Range, _R(key=b"a/1"))
        self.call(self.kv.Range, _R(key=b"a/1", serializable=True))
        self.assertEqual([call[3] for call in self.node.calls], ["linearizable", "serializable"])
        self.assertEqual(self.node.calls[0][1], Range(b"a/1"))

    def test_revision_now(self) -> None:
        """Reading at the newest revision reads; a negative revision means the newest."""
        self.assertEqual(self.keys(key=b"a/1", revision=6), [b"a/1"])
        self.assertEqual(self.keys(key=b"a/1", revision=-3), [b"a/1"])

    def test_future_revision(self) -> None:
        """A revision past the newest is etcd's future-revision error."""
        self.refused(self.kv.Range, _R(key=b"a/1", revision=7), grpc.StatusCode.OUT_OF_RANGE,
                     "etcdserver: mvcc: required revision is a future revision")

    def test_past_revision(self) -> None:
        """A revision before the newest is UNIMPLEMENTED: there is no history to read it from."""
        message = self.refused(self.kv.Range, _R(key=b"a/1", revision=5), UNIMPLEMENTED)
        self.assertIn("past revision", message)

    def test_sort(self) -> None:
        """Every sort target and order sorts the whole range, as etcd, before the limit."""
        cases = [
            ((_R.VALUE, _R.ASCEND), [b"a/2", b"a/3", b"a/1"]),
            ((_R.VALUE, _R.DESCEND), [b"a/1", b"a/3", b"a/2"]),
            ((_R.KEY, _R.DESCEND), [b"a/3", b"a/2", b"a/1"]),
            ((_R.MOD, _R.DESCEND), [b"a/2", b"a/3", b"a/1"]),
            ((_R.CREATE, _R.DESCEND), [b"a/3", b"a/2", b"a/1"]),
            ((_R.VERSION, _R.DESCEND), [b"a/2", b"a/1", b"a/3"]),
            ((_R.MOD, _R.NONE), [b"a/1", b"a/3", b"a/2"]),  # a target without an order: ascending
        ]
        for (target, order), expected in cases:
            self.assertEqual(self.keys(key=b"a/", range_end=b"a0", sort_target=target, sort_order=order),
                             expected, (target, order))
        limited = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", sort_target=_R.VALUE,
                                              sort_order=_R.DESCEND, limit=2))
        self.assertEqual(([kv.key for kv in limited.kvs], limited.more, limited.count), ([b"a/1", b"a/3"], True, 3))

    def test_sort_by_value_keys_only(self) -> None:
        """Keys only, sorted by value: sorted by the values, answered without them."""
        response = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", sort_target=_R.VALUE,
                                               sort_order=_R.ASCEND, keys_only=True))
        self.assertEqual([(kv.key, kv.value) for kv in response.kvs], [(b"a/2", b""), (b"a/3", b""), (b"a/1", b"")])

    def test_filters(self) -> None:
        """The min/max mod and create revision filters keep etcd's revisions within them; count stays."""
        everything = dict(key=b"a/", range_end=b"\0")
        self.assertEqual(self.keys(**everything, min_mod_revision=4), [b"a/2", b"a/3", b"b/1"])
        self.assertEqual(self.keys(**everything, max_mod_revision=4), [b"a/1", b"a/3"])
        self.assertEqual(self.keys(**everything, min_create_revision=3, max_create_revision=4), [b"a/2", b"a/3"])
        response = self.call(self.kv.Range, _R(**everything, min_mod_revision=5, limit=1))
        self.assertEqual(([kv.key for kv in response.kvs], response.more, response.count), ([b"a/2"], True, 4))

    def test_sort_bound(self) -> None:
        """A sorted range of more keys than the bound is RESOURCE_EXHAUSTED, and reads at most bound + 1."""
        self.patch(etcd_convert, "SORT_RECORDS_MAX", 2)
        message = self.refused(self.kv.Range, _R(key=b"a/", range_end=b"a0", sort_order=_R.DESCEND),
                               grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("at most 2", message)
        self.assertEqual(self.node.calls[0][1].limit, 3)

    def test_invalid_sort_option(self) -> None:
        """An unknown sort order or target is etcd's invalid sort option."""
        for fields in ({"sort_order": 7}, {"sort_target": 9}):
            self.refused(self.kv.Range, _R(key=b"a", **fields), INVALID, "etcdserver: invalid sort option")
        self.assertEqual(self.node.calls, [])

    def test_empty_key(self) -> None:
        """An empty key is etcd's "key is not provided" and never reaches the node."""
        self.refused(self.kv.Range, _R(key=b""), INVALID, "etcdserver: key is not provided")
        self.assertEqual(self.node.calls, [])

    def test_long_key(self) -> None:
        """A key over kvpaxos's 511 bytes is INVALID_ARGUMENT with kvpaxos's sentence."""
        message = self.refused(self.kv.Range, _R(key=b"k" * (MAX_KEY_BYTES + 1)), INVALID)
        self.assertIn("511", message)

    def test_response_limit(self) -> None:
        """Records over the response limit: refused without a limit, a page (more) with one."""
        self.patch(etcd_kv, "RESPONSE_KVS_BYTES_MAX", 30)
        self.refused(self.kv.Range, _R(key=b"a/", range_end=b"a0"), grpc.StatusCode.RESOURCE_EXHAUSTED)
        page = self.call(self.kv.Range, _R(key=b"a/", range_end=b"a0", limit=3))
        self.assertEqual(([kv.key for kv in page.kvs], page.more, page.count), ([b"a/1"], True, 3))


class PutTests(EtcdHarness, SynchronousTestCase):
    """Put as etcd's, and etcd's refusals of its fields."""

    def test_put(self) -> None:
        """A put is a PUT; its header carries the revision it made (etcd's); no prev_kv unless asked."""
        first = self.put(b"k", b"v")
        second = self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"w", prev_kv=True))
        self.assertEqual((first.header.revision, first.HasField("prev_kv")), (2, False))
        self.assertEqual((second.header.revision, second.prev_kv.value, second.prev_kv.mod_revision), (3, b"v", 2))
        self.assertEqual(self.submitted(), [Request(Op.PUT, b"k", b"v"), Request(Op.PUT, b"k", b"w", prev_kv=True)])

    def test_prev_kv_missing(self) -> None:
        """prev_kv on a new key answers none."""
        response = self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v", prev_kv=True))
        self.assertFalse(response.HasField("prev_kv"))

    def test_refusals(self) -> None:
        """etcd's checks of a put, in its words; none reaches the node."""
        cases = [
            (pb.PutRequest(key=b"", value=b"v"), INVALID, "etcdserver: key is not provided"),
            (pb.PutRequest(key=b"k", value=b"v", lease=-7), grpc.StatusCode.NOT_FOUND,
             "etcdserver: requested lease not found"),
            (pb.PutRequest(key=b"k", value=b"v", ignore_value=True), INVALID, "etcdserver: value is provided"),
            (pb.PutRequest(key=b"k", lease=7, ignore_lease=True), INVALID, "etcdserver: lease is provided"),
            (pb.PutRequest(key=b"k", value=b"x" * (MAX_VALUE_BYTES + 1)), INVALID, "etcdserver: request is too large"),
        ]
        for request, code, message in cases:
            self.refused(self.kv.Put, request, code, message)
        self.assertEqual(self.node.calls, [])

    def test_ignore_value(self) -> None:
        """ignore_value is UNIMPLEMENTED (kvpaxos cannot put a key's own value atomically)."""
        message = self.refused(self.kv.Put, pb.PutRequest(key=b"k", ignore_value=True), UNIMPLEMENTED)
        self.assertIn("ignore_value", message)

    def test_ignore_lease(self) -> None:
        """ignore_lease is UNIMPLEMENTED (a kvpaxos put cannot keep the lease a key has); nothing is sent."""
        self.put(b"k", b"v")
        message = self.refused(self.kv.Put, pb.PutRequest(key=b"k", value=b"w", ignore_lease=True), UNIMPLEMENTED)
        self.assertIn("ignore_lease", message)
        self.assertEqual(len(self.submitted()), 1)

    def test_credential(self) -> None:
        """A token in the token metadata reaches the node as the request's credential."""
        self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v"), metadata=(("token", "t0k"),))
        self.call(self.kv.Range, pb.RangeRequest(key=b"k"), metadata=(("token", "t0k"),))
        self.put(b"k", b"v")
        self.assertEqual(self.node.credentials, [Credential("t0k"), Credential("t0k"), None])


class NodeErrorTests(EtcdHarness, SynchronousTestCase):
    """The node's failures, reworded as etcd's (its ErrorInfo kept)."""

    def failing(self, error: Exception) -> Aborted:
        self.node.answer = lambda: defer.fail(error)
        try:
            self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v"), metadata=(("token", "t"),))
        except Aborted as aborted:
            return aborted
        self.fail("the put did not fail")

    def test_etcd_words(self) -> None:
        """Each failure the node names has etcd's code and message."""
        cases = [
            (NoSpace(10, 5), grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
            (Unavailable("no quorum", 3), grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
            (NotLeaderError(None), grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
            (ShuttingDown("node shutting down"), grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped"),
            (PermissionDenied("etcdserver: permission denied"), grpc.StatusCode.PERMISSION_DENIED,
             "etcdserver: permission denied"),
            (Unauthenticated("invalid token"), grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"),
        ]
        for error, code, message in cases:
            status = self.failing(error).status
            self.assertEqual((status.code, status.details), (code, message), error)

    def test_unauthenticated_without_credential(self) -> None:
        """UNAUTHENTICATED of a request without a token is etcd's "user name is empty"."""
        self.node.answer = lambda: defer.fail(Unauthenticated("no user"))
        self.refused(self.kv.Put, pb.PutRequest(key=b"k", value=b"v"), INVALID, "etcdserver: user name is empty")
        with self.assertRaises(Aborted) as raised:
            self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v"), metadata=(("token", "old"),))
        self.assertEqual(raised.exception.status.details, "etcdserver: invalid auth token")

    def test_details_carry_the_message(self) -> None:
        """The google.rpc.Status details (what grpc-go reads) carry etcd's message and the ErrorInfo."""
        status = self.failing(Unavailable("no quorum", 3)).status

        class Call:
            def trailing_metadata(self):
                return status.trailing_metadata

        from google.rpc import status_pb2

        (details,) = [v for k, v in status.trailing_metadata if k == errors.DETAILS_KEY]
        self.assertEqual(status_pb2.Status.FromString(details).message, "etcdserver: request timed out")
        info = errors.error_details(Call())
        self.assertEqual((info.reason, info.metadata[errors.LEADER_ID]), (errors.UNAVAILABLE, "3"))

    def test_invalid_argument_kept(self) -> None:
        """An INVALID_ARGUMENT from the node keeps kvpaxos's message."""
        from kvpaxos.api.errors import InvalidArgument

        status = self.failing(InvalidArgument("bad thing")).status
        self.assertEqual((status.code, status.details), (INVALID, "bad thing"))

    def test_counted(self) -> None:
        """Every answer is counted under the etcd method's full name with its code."""
        self.failing(NoSpace(10, 5))
        self.assertEqual(self.counts.seen, [("etcdserverpb.KV/Put", "RESOURCE_EXHAUSTED")])


class DeleteRangeTests(EtcdHarness, SynchronousTestCase):
    """DeleteRange as one delete-range op of a transaction."""

    def setUp(self) -> None:
        super().setUp()
        for key in (b"a/1", b"a/2", b"b/1"):
            self.node.write(key, b"v" + key)

    def test_one_key(self) -> None:
        """Deleting one key deletes it, counts 1 and moves the revision."""
        response = self.call(self.kv.DeleteRange, pb.DeleteRangeRequest(key=b"a/1"))
        self.assertEqual((response.deleted, list(response.prev_kvs), response.header.revision), (1, [], 5))
        self.assertEqual(self.submitted(), [Request(Op.TXN, txn=Txn((), (DeleteRange(b"a/1"),), ()))])

    def test_missing(self) -> None:
        """Deleting nothing counts 0 and the revision stays."""
        response = self.call(self.kv.DeleteRange, pb.DeleteRangeRequest(key=b"zz"))
        self.assertEqual((response.deleted, response.header.revision), (0, 4))

    def test_range_prev_kv(self) -> None:
        """A range delete counts every key and, with prev_kv, answers their records."""
        response = self.call(self.kv.DeleteRange, pb.DeleteRangeRequest(key=b"a/", range_end=b"a0", prev_kv=True))
        self.assertEqual(response.deleted, 2)
        self.assertEqual([(kv.key, kv.value, kv.mod_revision) for kv in response.prev_kvs],
                         [(b"a/1", b"va/1", 2), (b"a/2", b"va/2", 3)])
        everything = self.call(self.kv.DeleteRange, pb.DeleteRangeRequest(key=b"\0", range_end=b"\0"))
        self.assertEqual(everything.deleted, 1)

    def test_empty_key(self) -> None:
        """An empty key is etcd's "key is not provided"."""
        self.refused(self.kv.DeleteRange, pb.DeleteRangeRequest(key=b""), INVALID, "etcdserver: key is not provided")
        self.assertEqual(self.node.calls, [])


class CompactTests(EtcdHarness, SynchronousTestCase):
    """Compact as etcd's: at kvpaxos's revision N - 1, refused in etcd's words."""

    def answer(self, result) -> None:
        self.node.answer = lambda: defer.succeed(result)

    def test_compact(self) -> None:
        """Compact(N) is a COMPACT at N - 1; the header carries the store's revision as etcd's; physical is accepted."""
        self.answer(CompactDone(4, 9))
        for physical in (False, True):
            response = self.call(self.kv.Compact, pb.CompactionRequest(revision=5, physical=physical))
            self.assertEqual((response.header.revision, response.header.cluster_id, response.header.raft_term),
                             (10, CLUSTER_ID, 5))
        self.assertEqual(self.submitted(), [Request(Op.COMPACT, compact_revision=4)] * 2)
        self.assertEqual(self.counts.seen, [("etcdserverpb.KV/Compact", "OK")] * 2)

    def test_zero_and_one(self) -> None:
        """etcd's 0 and 1 (nothing before them to drop) are both kvpaxos's 0."""
        self.answer(CompactDone(0, 0))
        for revision in (0, 1):
            self.assertEqual(self.call(self.kv.Compact, pb.CompactionRequest(revision=revision)).header.revision, 1)
        self.assertEqual(self.submitted(), [Request(Op.COMPACT, compact_revision=0)] * 2)

    def test_negative(self) -> None:
        """A negative revision is etcd's "compacted" (below any compacted revision) and never reaches the node."""
        self.refused(self.kv.Compact, pb.CompactionRequest(revision=-1), OUT_OF_RANGE, COMPACTED)
        self.assertEqual(self.node.calls, [])

    def test_refusals(self) -> None:
        """The state machine's refusals are etcd's errors, word for word, without kvpaxos's details."""
        for error, message in ((CompactError.COMPACTED, COMPACTED), (CompactError.FUTURE, FUTURE)):
            self.answer(CompactRefused(error, 4, 9))
            self.refused(self.kv.Compact, pb.CompactionRequest(revision=3), OUT_OF_RANGE, message)
        with self.assertRaises(Aborted) as raised:
            self.call(self.kv.Compact, pb.CompactionRequest(revision=3))
        status = raised.exception.status

        class Call:
            def trailing_metadata(self):
                return status.trailing_metadata

        self.assertIsNone(errors.error_details(Call()))

    def test_applied(self) -> None:
        """Through the real state machine: etcd's rules, at etcd's revisions (the store at etcd's 6)."""
        self.node.state.set_revision(5)
        self.assertEqual(self.call(self.kv.Compact, pb.CompactionRequest(revision=4)).header.revision, 6)
        self.assertEqual(self.node.state.compacted_revision(), 3)
        for revision, message in ((4, COMPACTED), (3, COMPACTED), (0, COMPACTED), (7, FUTURE)):
            self.refused(self.kv.Compact, pb.CompactionRequest(revision=revision), OUT_OF_RANGE, message)
        self.call(self.kv.Compact, pb.CompactionRequest(revision=6, physical=True))
        self.assertEqual(self.node.state.compacted_revision(), 5)

    def test_node_failure(self) -> None:
        """A node failure is etcd's, as for every call."""
        self.node.answer = lambda: defer.fail(Unavailable("no quorum", 3))
        self.refused(self.kv.Compact, pb.CompactionRequest(revision=3), grpc.StatusCode.UNAVAILABLE,
                     "etcdserver: request timed out")
