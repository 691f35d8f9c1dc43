"""
Authentication and authorization (issue 13, part 2): the auth commands as
they apply (L{kvpaxos.kv.auth_apply}), permission coverage, the byte
formats, passwords and tokens (L{kvpaxos.kv.credentials}), and a node that
checks credentials (L{kvpaxos.node.auth}) with the check of a write made
when it applies.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.errors import AuthRefused as AuthRefusedError
from kvpaxos.api.errors import PermissionDenied, Unauthenticated
from kvpaxos.api.statuses import status_for
from kvpaxos.encoding import auth as encoded
from kvpaxos.encoding.commands import decode_request, encode_request
from kvpaxos.encoding.errors import CorruptState, MalformedCommand
from kvpaxos.kv import machine
from kvpaxos.kv.auth import (
    ROOT,
    AuthAction,
    AuthChanged,
    AuthCommand,
    AuthError,
    AuthRefused,
    Credential,
    KeyPermission,
    Permission,
    Role,
    User,
    covered,
)
from kvpaxos.kv.auth_apply import load_state
from kvpaxos.kv.commands import (
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    InvalidArgument,
    Op,
    Put,
    Range,
    Request,
    Result,
    Txn,
    range_query,
)
from kvpaxos.kv.credentials import ScryptCost, hash_password, issue_token, password_matches, token_user
from kvpaxos.kv.leases import LeaseGranted
from kvpaxos.node.auth import AuthPath
from kvpaxos.storage.memory import MemoryState

CHEAP = ScryptCost(n=2, r=1, p=1)
KEY = b"k" * 32


def command(action, **fields) -> Request:
    return Request(Op.AUTH, user=fields.pop("as_user", ""), auth=AuthCommand(action, **fields))


def grant(role, kind, key, end=None, as_user=""):
    return command(AuthAction.ROLE_GRANT_PERMISSION, role=role, permission=KeyPermission(kind, key, end),
                   as_user=as_user)


class StateTests(SynchronousTestCase):
    """Auth commands applied to a state view."""

    def setUp(self):
        self.state = MemoryState()
        self.slot = 0

    def apply(self, request):
        # Through the log format, as every replica sees it.
        self.slot += 1
        (applied,) = machine.apply_batch(self.state, [encode_request(request)], self.slot)
        return applied[1]

    def enable(self, as_user=""):
        for request in (command(AuthAction.USER_ADD, name=ROOT, password=b"h"),
                        command(AuthAction.ROLE_ADD, role=ROOT),
                        command(AuthAction.USER_GRANT_ROLE, name=ROOT, role=ROOT)):
            self.assertIsInstance(self.apply(request), AuthChanged)
        return self.apply(command(AuthAction.ENABLE, token_key=KEY, as_user=as_user))

    def loaded(self):
        return load_state(self.state.auth_items())

    def test_enable_needs_root_user_with_root_role(self):
        """Enabling is refused without a root user, then without its root role; then it applies."""
        self.assertEqual(self.apply(command(AuthAction.ENABLE, token_key=KEY)).error, AuthError.ROOT_USER_MISSING)
        self.apply(command(AuthAction.USER_ADD, name=ROOT, password=b"h"))
        self.assertEqual(self.apply(command(AuthAction.ENABLE, token_key=KEY)).error, AuthError.ROOT_ROLE_MISSING)
        self.apply(command(AuthAction.ROLE_ADD, role=ROOT))
        self.apply(command(AuthAction.USER_GRANT_ROLE, name=ROOT, role=ROOT))
        result = self.apply(command(AuthAction.ENABLE, token_key=KEY))
        self.assertEqual(result, AuthChanged(4, 0))
        state = self.loaded()
        self.assertTrue(state.enabled)
        self.assertEqual(state.token_key, KEY)

    def test_revision_counts_changes_only(self):
        """The auth revision grows by one per change; a refused or no-op command leaves it."""
        self.assertEqual(self.apply(command(AuthAction.ROLE_ADD, role="r")).auth_revision, 1)
        self.assertEqual(self.apply(command(AuthAction.ROLE_ADD, role="r")), AuthRefused(AuthError.ROLE_EXISTS))
        self.apply(command(AuthAction.USER_ADD, name="u"))
        self.assertEqual(self.apply(command(AuthAction.USER_GRANT_ROLE, name="u", role="r")).auth_revision, 3)
        self.assertEqual(self.apply(command(AuthAction.USER_GRANT_ROLE, name="u", role="r")).auth_revision, 3)
        self.assertEqual(self.loaded().revision, 3)

    def test_kv_revision_unmoved(self):
        """Auth changes do not move the store's revision (etcd keeps an auth revision of its own)."""
        self.apply(Request(Op.PUT, b"a", b"1"))
        self.apply(command(AuthAction.ROLE_ADD, role="r"))
        self.assertEqual(self.state.revision(), 1)

    def test_refusals(self):
        """Each precondition that fails is refused with etcd's error and changes nothing."""
        cases = [
            (command(AuthAction.USER_DELETE, name="x"), AuthError.USER_NOT_FOUND),
            (command(AuthAction.USER_CHANGE_PASSWORD, name="x", password=b"p"), AuthError.USER_NOT_FOUND),
            (command(AuthAction.USER_GRANT_ROLE, name="x", role="r"), AuthError.USER_NOT_FOUND),
            (command(AuthAction.ROLE_DELETE, role="x"), AuthError.ROLE_NOT_FOUND),
            (grant("x", Permission.READ, b"a"), AuthError.ROLE_NOT_FOUND),
        ]
        for request, error in cases:
            self.assertEqual(self.apply(request).error, error, request)
        self.apply(command(AuthAction.USER_ADD, name="u"))
        self.assertEqual(self.apply(command(AuthAction.USER_GRANT_ROLE, name="u", role="x")).error,
                         AuthError.ROLE_NOT_FOUND)
        self.assertEqual(self.apply(command(AuthAction.USER_REVOKE_ROLE, name="u", role="x")).error,
                         AuthError.ROLE_NOT_GRANTED)
        self.apply(command(AuthAction.ROLE_ADD, role="r"))
        self.assertEqual(self.apply(command(AuthAction.ROLE_REVOKE_PERMISSION, role="r",
                                            permission=KeyPermission(Permission.READ, b"a"))).error,
                         AuthError.PERMISSION_NOT_GRANTED)
        self.assertEqual(self.apply(command(AuthAction.USER_ADD, name="u")).error, AuthError.USER_EXISTS)
        self.assertEqual(self.loaded().revision, 2)

    def test_role_delete_leaves_every_user(self):
        """Deleting a role takes it from every user that held it."""
        self.apply(command(AuthAction.ROLE_ADD, role="r"))
        for name in ("a", "b"):
            self.apply(command(AuthAction.USER_ADD, name=name))
            self.apply(command(AuthAction.USER_GRANT_ROLE, name=name, role="r"))
        self.apply(command(AuthAction.ROLE_DELETE, role="r"))
        state = self.loaded()
        self.assertEqual((state.users["a"].roles, state.users["b"].roles, state.roles), ((), (), {}))

    def test_grant_replaces_a_range_and_revoke_removes_it(self):
        """One permission per range: a second grant of a range replaces the first; revoke removes it."""
        self.apply(command(AuthAction.ROLE_ADD, role="r"))
        self.apply(grant("r", Permission.READ, b"a", b"c"))
        self.apply(grant("r", Permission.WRITE, b"x"))
        self.apply(grant("r", Permission.READWRITE, b"a", b"c"))
        self.assertEqual(self.loaded().roles["r"].permissions,
                         (KeyPermission(Permission.READWRITE, b"a", b"c"), KeyPermission(Permission.WRITE, b"x")))
        self.apply(command(AuthAction.ROLE_REVOKE_PERMISSION, role="r",
                           permission=KeyPermission(Permission.READ, b"a", b"c")))
        self.assertEqual(self.loaded().roles["r"].permissions, (KeyPermission(Permission.WRITE, b"x"),))

    def test_enabled_needs_root_for_changes(self):
        """While enabled, only a root user changes auth; root cannot lose root or be deleted."""
        self.assertIsInstance(self.enable(), AuthChanged)
        self.apply(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))
        self.assertEqual(self.apply(command(AuthAction.ROLE_ADD, role="r", as_user="bob")).error,
                         AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(command(AuthAction.ROLE_ADD, role="r")).error, AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(command(AuthAction.USER_DELETE, name=ROOT, as_user=ROOT)).error,
                         AuthError.INVALID_MANAGEMENT)
        self.assertEqual(self.apply(command(AuthAction.USER_REVOKE_ROLE, name=ROOT, role=ROOT, as_user=ROOT)).error,
                         AuthError.INVALID_MANAGEMENT)
        self.assertEqual(self.apply(command(AuthAction.ROLE_DELETE, role=ROOT, as_user=ROOT)).error,
                         AuthError.INVALID_MANAGEMENT)
        self.assertIsInstance(self.apply(command(AuthAction.DISABLE, as_user=ROOT)), AuthChanged)
        self.assertFalse(self.loaded().enabled)

    def test_writes_checked_when_they_apply(self):
        """With auth on, a write applies only if its user's roles permit it; a refusal changes nothing."""
        self.enable()
        self.apply(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))
        self.apply(command(AuthAction.ROLE_ADD, role="w", as_user=ROOT))
        self.apply(grant("w", Permission.WRITE, b"a/", b"a0", as_user=ROOT))
        self.apply(command(AuthAction.USER_GRANT_ROLE, name="bob", role="w", as_user=ROOT))
        self.assertIsInstance(self.apply(Request(Op.PUT, b"a/1", b"v", user="bob")), Result)
        denied = self.apply(Request(Op.PUT, b"b", b"v", user="bob"))
        self.assertEqual(denied, AuthRefused(AuthError.PERMISSION_DENIED, 1))
        # prev_kv reads; an append answers with the value: both need read too.
        self.assertEqual(self.apply(Request(Op.PUT, b"a/1", b"v", user="bob", prev_kv=True)).error,
                         AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(Request(Op.APPEND, b"a/1", b"v", user="bob")).error,
                         AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(Request(Op.PUT, b"a/2", b"v")).error, AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(Request(Op.PUT, b"a/2", b"v", user="ghost")).error,
                         AuthError.PERMISSION_DENIED)
        self.assertIsInstance(self.apply(Request(Op.PUT, b"zz", b"v", user=ROOT)), Result)
        self.assertEqual(self.state.get(b"b"), None)
        self.assertEqual(self.state.revision(), 2)

    def test_leases_by_permission(self):
        """
        With auth on: anyone may grant; a lease's revoke, and attaching a key
        to a lease, need write permission on every key already on it (etcd's
        rule), so one user cannot pin a key to another's lease; expiry (the
        leader's) needs none.
        """
        self.enable()
        for name, prefix in (("alice", b"a/"), ("bob", b"b/")):
            self.apply(command(AuthAction.USER_ADD, name=name, as_user=ROOT))
            self.apply(command(AuthAction.ROLE_ADD, role=name, as_user=ROOT))
            self.apply(grant(name, Permission.READWRITE, prefix, prefix[:-1] + b"0", as_user=ROOT))
            self.apply(command(AuthAction.USER_GRANT_ROLE, name=name, role=name, as_user=ROOT))
        self.assertIsInstance(self.apply(Request(Op.LEASE_GRANT, lease=5, ttl=60, user="alice")), LeaseGranted)
        self.assertIsInstance(self.apply(Request(Op.PUT, b"a/lock", b"1", user="alice", lease=5)), Result)
        self.assertEqual(self.apply(Request(Op.PUT, b"b/x", b"1", user="bob", lease=5)).error,
                         AuthError.PERMISSION_DENIED)
        pinned = Txn((), (Put(b"b/y", b"1", lease=5),), ())
        self.assertEqual(self.apply(Request(Op.TXN, txn=pinned, user="bob")).error, AuthError.PERMISSION_DENIED)
        self.assertEqual(self.apply(Request(Op.LEASE_REVOKE, lease=5, user="bob")).error,
                         AuthError.PERMISSION_DENIED)
        self.assertEqual(self.state.key_lease(b"a/lock"), 5)
        self.assertIsNone(self.state.get(b"b/x"))
        self.assertEqual(self.apply(Request(Op.LEASE_REVOKE, lease=5, user="alice")).deleted, 1)
        self.apply(Request(Op.LEASE_GRANT, lease=6, ttl=60, user="alice"))
        self.apply(Request(Op.PUT, b"a/lock", b"2", user="alice", lease=6))
        self.assertEqual(self.apply(Request(Op.LEASE_EXPIRE, lease=6)).deleted, 1)  # the leader's: no user

    def test_revoke_is_exact(self):
        """A write applied after its user's role is revoked is refused, whenever it was taken."""
        self.enable()
        self.apply(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))
        self.apply(command(AuthAction.ROLE_ADD, role="w", as_user=ROOT))
        self.apply(grant("w", Permission.READWRITE, b"k", as_user=ROOT))
        self.apply(command(AuthAction.USER_GRANT_ROLE, name="bob", role="w", as_user=ROOT))
        put = encode_request(Request(Op.PUT, b"k", b"1", user="bob"))
        revoke = encode_request(command(AuthAction.USER_REVOKE_ROLE, name="bob", role="w", as_user=ROOT))
        # One batch: the put before the revoke applies, the one after does not.
        results = machine.apply_batch(self.state, [put, revoke, put], 99)
        self.assertEqual([type(r) for _, r in results], [Result, AuthChanged, AuthRefused])

    def test_txn_needs_every_branch(self):
        """A transaction needs read on its compares and ranges and write on both branches' writes."""
        self.enable()
        self.apply(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))
        self.apply(command(AuthAction.ROLE_ADD, role="r", as_user=ROOT))
        self.apply(grant("r", Permission.READ, b"a", TO_THE_END, as_user=ROOT))
        self.apply(grant("r", Permission.WRITE, b"w", as_user=ROOT))
        self.apply(command(AuthAction.USER_GRANT_ROLE, name="bob", role="r", as_user=ROOT))
        compare = Compare(b"c", CompareTarget.EXISTS, CompareResult.EQUAL, False)

        def txn(success=(), failure=()):
            return self.apply(Request(Op.TXN, txn=Txn((compare,), success, failure), user="bob"))

        self.assertTrue(txn((Put(b"w", b"1"),), (Range(b"a", b"z"),)).succeeded)
        self.assertEqual(txn((Put(b"w", b"1"),), (Put(b"x", b"1"),)).error, AuthError.PERMISSION_DENIED)
        self.assertEqual(txn((DeleteRange(b"w", b"x"),)).error, AuthError.PERMISSION_DENIED)
        self.assertEqual(txn((Put(b"w", b"1", prev_kv=True),)).succeeded, True)

    def test_refused_write_keeps_its_session_open(self):
        """A refused write of a session is not saved: the same sequence is checked again on retry."""
        self.apply(Request(Op.OPEN_SESSION))
        self.enable()
        self.apply(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))
        self.apply(command(AuthAction.ROLE_ADD, role="w", as_user=ROOT))
        request = Request(Op.PUT, b"k", b"v", client_id=1, sequence=1, user="bob")
        self.assertEqual(self.apply(request).error, AuthError.PERMISSION_DENIED)
        self.apply(grant("w", Permission.WRITE, b"k", as_user=ROOT))
        self.apply(command(AuthAction.USER_GRANT_ROLE, name="bob", role="w", as_user=ROOT))
        self.assertIsInstance(self.apply(request), Result)

    def test_snapshot_carries_auth(self):
        """The auth table rides the snapshot: a state made from it holds the same users and roles."""
        self.enable()
        copy = MemoryState.from_snapshot(self.state.snapshot_data())
        self.assertEqual(load_state(copy.auth_items()), self.loaded())


class CoverageTests(SynchronousTestCase):
    """The union of a role's ranges covers a request's key or range."""

    def test_cases(self):
        """Keys, ranges, open ends, gaps and empty ranges."""
        p = [KeyPermission(Permission.READ, b"a", b"c"), KeyPermission(Permission.READ, b"c", b"e"),
             KeyPermission(Permission.READ, b"x")]
        self.assertTrue(covered(p, b"b", None))
        self.assertTrue(covered(p, b"a", b"e"))
        self.assertFalse(covered(p, b"a", b"f"))
        self.assertTrue(covered(p, b"x", None))
        self.assertFalse(covered(p, b"x", b"y"))
        self.assertFalse(covered(p, b"a", TO_THE_END))
        self.assertTrue(covered(p + [KeyPermission(Permission.READ, b"e", TO_THE_END)], b"b", TO_THE_END))
        self.assertTrue(covered(p, b"q", b"q"))  # an empty range
        self.assertFalse(covered([], b"a", None))


class FormatTests(SynchronousTestCase):
    """The byte formats round-trip and refuse what is not theirs."""

    def test_round_trips(self):
        """Users, roles and commands decode to what was encoded."""
        user = User("bob", b"rec", 7, ("a", "b"))
        self.assertEqual(encoded.decode_user("bob", encoded.encode_user(user)), user)
        role = Role("r", (KeyPermission(Permission.READ, b"a", b"b"), KeyPermission(Permission.WRITE, b"c")))
        self.assertEqual(encoded.decode_role("r", encoded.encode_role(role)), role)
        for request in (grant("r", Permission.READWRITE, b"k", TO_THE_END, as_user="root"),
                        command(AuthAction.USER_ADD, name="ünï", password=b"x" * 100),
                        command(AuthAction.ENABLE, token_key=KEY)):
            self.assertEqual(decode_request(encode_request(request)), request)

    def test_hostile_bytes_refused(self):
        """Truncated or reordered stored state, and commands with fields their action does not take."""
        data = encoded.encode_user(User("bob", b"rec", 7, ("a", "b")))
        for cut in range(len(data)):
            self.assertRaises(CorruptState, encoded.decode_user, "bob", data[:cut])
        self.assertRaises(CorruptState, encoded.decode_user, "bob",
                          encoded.encode_user(User("bob", b"", 1, ("b", "a"))))
        data = encode_request(command(AuthAction.ROLE_ADD, role="r"))
        for cut in range(len(data)):
            self.assertRaises(MalformedCommand, decode_request, data[:cut])
        self.assertRaises(InvalidArgument, encode_request, command(AuthAction.ROLE_ADD, role="r", name="u"))
        self.assertRaises(InvalidArgument, encode_request, command(AuthAction.ENABLE, token_key=b"short"))
        self.assertRaises(InvalidArgument, encode_request, command(AuthAction.USER_ADD, name="a\nb"))
        self.assertRaises(InvalidArgument, encode_request, grant("r", Permission.READ, b"b", b"a"))
        self.assertRaises(InvalidArgument, encode_request, Request(Op.PUT, b"k", user="x" * 200))


class CredentialTests(SynchronousTestCase):
    """Password records and tokens."""

    def setUp(self):
        state = MemoryState()
        for request in (command(AuthAction.USER_ADD, name=ROOT, password=hash_password("pw", CHEAP)),
                        command(AuthAction.ROLE_ADD, role=ROOT),
                        command(AuthAction.USER_GRANT_ROLE, name=ROOT, role=ROOT),
                        command(AuthAction.ENABLE, token_key=KEY)):
            machine.apply_batch(state, [encode_request(request)], 1)
        self.view = state
        self.state = load_state(state.auth_items())

    def test_password(self):
        """The right password matches its record; a wrong one, an empty record or garbage do not."""
        record = hash_password("s3cret", CHEAP)
        self.assertTrue(password_matches(record, "s3cret"))
        self.assertFalse(password_matches(record, "s3cre"))
        self.assertFalse(password_matches(b"", "s3cret"))
        self.assertFalse(password_matches(b"scrypt$x$1$1$00$00", "s3cret"))
        self.assertNotEqual(hash_password("s3cret", CHEAP), record)  # a new salt each time

    def test_token(self):
        """A token names its user until it expires; a forged or altered one names nobody."""
        token = issue_token(self.state, ROOT, 1000.0, 300)
        self.assertEqual(token_user(self.state, token, 1299.0), ROOT)
        self.assertIsNone(token_user(self.state, token, 1300.0))
        self.assertIsNone(token_user(self.state, token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], 1000.0))
        self.assertIsNone(token_user(self.state, "kvp1.garbage.x", 1000.0))
        self.assertIsNone(token_user(self.state, "", 1000.0))

    def test_token_of_changed_password_or_deleted_user(self):
        """A new password, or the user deleted and added again, ends the old tokens."""
        machine.apply_batch(self.view, [encode_request(command(AuthAction.USER_ADD, name="bob", as_user=ROOT))], 2)
        state = load_state(self.view.auth_items())
        token = issue_token(state, "bob", 0, 300)
        machine.apply_batch(self.view, [encode_request(command(AuthAction.USER_CHANGE_PASSWORD, name="bob",
                                                               password=b"new", as_user=ROOT))], 3)
        self.assertIsNone(token_user(load_state(self.view.auth_items()), token, 1))
        self.assertEqual(token_user(state, token, 1), "bob")


# --- a node -----------------------------------------------------------------------

from tests.test_service import make_cluster, run  # noqa: E402


def _sync(call, *args):
    return defer.maybeDeferred(call, *args)


class NodeTests(SynchronousTestCase):
    """A node checks credentials, runs auth changes through the log and answers once they hold."""

    def setUp(self):
        self.reactor, self.wire = make_cluster(3)
        self.now = [1000.0]
        rng = random.Random(5)
        for node in self.wire.services.values():
            node.auth = AuthPath(node.store, wall=lambda: self.now[0], cost=CHEAP, run_in_thread=_sync,
                                 random_bytes=lambda n: bytes(rng.getrandbits(8) for _ in range(n)))
            node.auth.reload()
        run(self.reactor, 1.5)

    def result(self, d, seconds=0.2):
        run(self.reactor, seconds)
        return self.successResultOf(d)

    def failure(self, d, seconds=0.2):
        run(self.reactor, seconds)
        return self.failureResultOf(d)

    def change(self, node, action, credential=None, password=None, **fields):
        return self.result(self.wire.services[node].auth_change(AuthCommand(action, **fields), 5, credential,
                                                                password))

    def enable(self):
        self.change(1, AuthAction.USER_ADD, name=ROOT, password="rootpw")
        self.change(1, AuthAction.ROLE_ADD, role=ROOT)
        self.change(1, AuthAction.USER_GRANT_ROLE, name=ROOT, role=ROOT)
        self.assertIsInstance(self.change(1, AuthAction.ENABLE, token_key=b"\0" * 32), AuthChanged)
        return Credential(self.result(self.wire.services[2].authenticate(ROOT, "rootpw")))

    def test_disabled_needs_no_credential(self):
        """While auth is disabled, writes and reads need no credential."""
        self.assertIsInstance(self.result(self.wire.services[1].submit(Request(Op.PUT, b"k", b"v"), 5)), Result)
        self.assertEqual(self.result(self.wire.services[2].get(b"k", 5)), b"v")

    def test_token_from_any_member_works_at_every_member(self):
        """A token another member issued names its user here; the key is the replicated one."""
        root = self.enable()
        for node in (1, 2, 3):
            d = self.wire.services[node].submit(Request(Op.PUT, b"k%d" % node, b"v"), 5, root)
            self.assertIsInstance(self.result(d), Result)
        keys = {bytes(n.auth.state.token_key) for n in self.wire.services.values()}
        self.assertEqual(len(keys), 1)
        self.assertNotEqual(keys, {b"\0" * 32})  # the node made its own key

    def test_missing_or_bad_credential_unauthenticated(self):
        """No credential, a forged token, an expired one: UNAUTHENTICATED, nothing written."""
        root = self.enable()
        node = self.wire.services[3]
        for credential in (None, Credential("kvp1.AAAA.BBBB"), Credential(common_name="nobody")):
            self.failure(node.submit(Request(Op.PUT, b"x", b"v"), 5, credential)).trap(Unauthenticated)
            self.failure(node.get(b"x", 5, credential=credential)).trap(Unauthenticated)
        self.now[0] += 301
        error = self.failure(node.submit(Request(Op.PUT, b"x", b"v"), 5, root)).value
        self.assertEqual(status_for(error).code.name, "UNAUTHENTICATED")
        self.assertIsNone(self.result(self.wire.services[1].get(b"x", 5, credential=self._fresh_root())))

    def _fresh_root(self):
        return Credential(self.result(self.wire.services[1].authenticate(ROOT, "rootpw")))

    def test_wrong_password(self):
        """A wrong password or an unknown user gets no token; while disabled, Authenticate is refused."""
        self.failure(self.wire.services[1].authenticate(ROOT, "x")).trap(AuthRefusedError)
        self.enable()
        self.failure(self.wire.services[1].authenticate(ROOT, "x")).trap(Unauthenticated)
        self.failure(self.wire.services[1].authenticate("ghost", "x")).trap(Unauthenticated)

    def test_reads_and_writes_by_permission(self):
        """A user reads and writes what its roles permit and gets PERMISSION_DENIED elsewhere."""
        root = self.enable()
        self.change(1, AuthAction.USER_ADD, root, "bobpw", name="bob")
        self.change(1, AuthAction.ROLE_ADD, root, role="app")
        self.change(1, AuthAction.ROLE_GRANT_PERMISSION, root, role="app",
                    permission=KeyPermission(Permission.READWRITE, b"app/", b"app0"))
        self.change(1, AuthAction.USER_GRANT_ROLE, root, name="bob", role="app")
        bob = Credential(self.result(self.wire.services[3].authenticate("bob", "bobpw")))
        node = self.wire.services[2]
        self.assertIsInstance(self.result(node.submit(Request(Op.PUT, b"app/1", b"v"), 5, bob)), Result)
        self.assertEqual(self.result(node.range(range_query(b"app/", b"app0"), 5, credential=bob)).count, 1)
        refused = self.result(node.submit(Request(Op.PUT, b"other", b"v"), 5, bob))
        self.assertEqual(status_for(refused).code.name, "PERMISSION_DENIED")
        self.failure(node.get(b"other", 5, credential=bob)).trap(PermissionDenied)
        self.failure(node.range(range_query(b"app/", TO_THE_END), 5, credential=bob)).trap(PermissionDenied)
        self.failure(node.auth_change(AuthCommand(AuthAction.ROLE_ADD, role="x"), 5, bob)).trap(PermissionDenied)
        self.assertRaises(PermissionDenied, node.auth_state, bob)
        # A deleted user's token names nobody.
        self.change(1, AuthAction.USER_DELETE, root, name="bob")
        self.failure(node.submit(Request(Op.PUT, b"app/2", b"v"), 5, bob)).trap(Unauthenticated)

    def test_user_added_authenticates_at_once(self):
        """The member that added a user answers only once its copy holds it: the user logs in at once."""
        root = self.enable()
        d = self.wire.services[2].auth_change(AuthCommand(AuthAction.USER_ADD, name="eve"), 5, root, "evepw")
        d.addCallback(lambda _: self.wire.services[2].authenticate("eve", "evepw"))
        self.assertTrue(self.result(d).startswith("kvp1."))

    def test_status_of_refusal(self):
        """An auth refusal is FAILED_PRECONDITION with etcd's message."""
        status = status_for(self.change(1, AuthAction.ROLE_DELETE, role="none"))
        self.assertEqual((status.code.name, status.message), ("FAILED_PRECONDITION", "etcdserver: role name not found"))
