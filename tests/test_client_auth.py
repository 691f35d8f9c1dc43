"""
The clients' authentication (L{kvpaxos.client.auth}): a client given a user
and password authenticates lazily, sends its token with every request,
renews it once when a request is answered UNAUTHENTICATED (sending the
same request again, session fields included), sends no token while auth
is disabled; and the auth management methods build the requests etcd's
model needs.  Against a fake cluster (tests.test_client) that checks
tokens; the real server's side is tests.test_auth and tests.test_auth_process.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.client import AsyncClient, Client, InvalidArgument, OutcomeUnknown
from kvpaxos.client.auth import Permission
from kvpaxos.client.errors import AuthRefused, PermissionDenied, RequestFailed, Unauthenticated
from kvpaxos.v1 import auth_pb2
from tests.fake_grpc import FakeRpcError, unavailable
from tests.test_client import A, B, C, FakeChannel, FakeCluster, FakeTime, LowRandom

PASSWORD = "s3cret"

_AUTH_CHANGES = {
    "AuthEnable", "AuthDisable", "UserAdd", "UserDelete", "UserChangePassword", "UserGrantRole",
    "UserRevokeRole", "RoleAdd", "RoleDelete", "RoleGrantPermission", "RoleRevokePermission",
}


#: What the server answers without a credential (as kvpaxos.api's servicers).
UNGUARDED = {"MemberList", "Status", "AuthStatus"}


class AuthChannel(FakeChannel):
    """A fake channel whose unary calls carry metadata to an L{AuthCluster}."""

    def unary_unary(self, path: str, request_serializer=None, response_deserializer=None, **_):
        rpc = path.rsplit("/", 1)[1]

        def call(request, timeout=None, metadata=None):
            request = type(request).FromString(request_serializer(request))
            response = self._cluster.serve_with(self._endpoint, rpc, request, timeout, metadata)
            return response_deserializer(response.SerializeToString())

        if not self._aio:
            return call

        async def acall(request, timeout=None, metadata=None):
            return call(request, timeout, metadata)

        return acall


class AuthCluster(FakeCluster):
    """
    A L{FakeCluster} with auth: C{Authenticate} issues tokens for
    C{PASSWORD} while C{enabled}; every other request (but L{UNGUARDED})
    needs a token in C{valid}; C{denied} RPCs answer PERMISSION_DENIED.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.valid: set[str] = set()
        self.issued = 0
        self.denied: set[str] = set()
        #: Every request: (rpc, the metadata it carried as a dict).
        self.carried: list[tuple[str, dict]] = []
        self.auth_requests: list[tuple[str, object]] = []
        self.change_errors: list[FakeRpcError] = []
        self.authenticate_barrier = None

    def channel(self, endpoint: str, aio: bool = False) -> AuthChannel:
        channel = AuthChannel(self, endpoint, aio)
        self.channels.append(channel)
        return channel

    def serve_with(self, endpoint, rpc, request, timeout, metadata):
        carried = dict(metadata or ())
        if rpc != "MemberList":
            self.carried.append((rpc, carried))
        if rpc == "Authenticate":
            return self._authenticate(endpoint, request)
        if rpc not in UNGUARDED and self.enabled and carried.get("token") not in self.valid:
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token",
                               errors.UNAUTHENTICATED)
        if rpc in self.denied:
            raise FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied",
                               errors.PERMISSION_DENIED)
        if rpc in _AUTH_CHANGES or rpc in ("AuthStatus", "UserGet", "UserList", "RoleGet", "RoleList"):
            self.auth_requests.append((rpc, request))
            if self.change_errors:
                raise self.change_errors.pop(0)
            return self._auth(endpoint, rpc, request)
        return self.serve(endpoint, rpc, request, timeout)

    def _authenticate(self, endpoint, request):
        if self.authenticate_barrier is not None:
            self.authenticate_barrier()
        if not self.enabled:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled",
                               errors.AUTH_NOT_ENABLED)
        if request.password != PASSWORD:
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED,
                               "etcdserver: authentication failed, invalid user ID or password",
                               errors.UNAUTHENTICATED)
        self.issued += 1
        token = f"token-{request.name}-{self.issued}"
        self.valid.add(token)
        return auth_pb2.AuthenticateResponse(header=self.header(endpoint), token=token, ttl=300)

    def _auth(self, endpoint, rpc, request):
        header = self.header(endpoint)
        if rpc in _AUTH_CHANGES:
            return auth_pb2.AuthChangeResponse(header=header, auth_revision=len(self.auth_requests))
        if rpc == "AuthStatus":
            return auth_pb2.AuthStatusResponse(header=header, enabled=self.enabled, auth_revision=4)
        if rpc == "UserGet":
            return auth_pb2.UserGetResponse(header=header, roles=["root", "rw"])
        if rpc == "UserList":
            return auth_pb2.UserListResponse(header=header, users=["alice", "root"])
        if rpc == "RoleGet":
            return auth_pb2.RoleGetResponse(header=header, perm=[
                auth_pb2.Permission(perm_type=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")])
        return auth_pb2.RoleListResponse(header=header, roles=["root", "rw"])


class _AuthCase(SynchronousTestCase):
    """A blocking client, user alice, over an L{AuthCluster} with fake time."""

    def setUp(self) -> None:
        self.cluster = AuthCluster()
        self.time = FakeTime()

    def make_client(self, **kwargs) -> Client:
        options = dict(timeout_s=5.0, channel_factory=self.cluster.channel, sleep=self.time.sleep,
                       clock=self.time.clock, rng=LowRandom(), refresh_s=None, user="alice", password=PASSWORD)
        options.update(kwargs)
        client = Client([A, B, C], **options)
        self.addCleanup(client.close)
        return client

    def tokens_sent(self, rpc: str) -> list:
        return [carried.get("token") for name, carried in self.cluster.carried if name == rpc]


class AuthClientTests(_AuthCase):
    """Tokens: taken lazily, sent, renewed once, none while auth is disabled."""

    def test_authenticates_once_and_sends_the_token(self) -> None:
        client = self.make_client()
        client.put(b"k", b"1")
        client.put(b"k", b"2")
        self.assertEqual(client.get(b"k"), b"2")
        self.assertEqual(self.cluster.issued, 1)
        self.assertEqual(self.tokens_sent("Authenticate"), [None])
        self.assertEqual(self.tokens_sent("Put"), ["token-alice-1"] * 2)
        self.assertEqual(self.tokens_sent("Get"), ["token-alice-1"])
        self.assertEqual(self.tokens_sent("OpenSession"), ["token-alice-1"])

    def test_an_expired_token_is_renewed_and_the_same_request_sent_again(self) -> None:
        client = self.make_client()
        client.put(b"k", b"1")
        self.cluster.valid.clear()  # the token expired
        client.put(b"k", b"2")
        self.assertEqual(self.cluster.data[b"k"], b"2")
        self.assertEqual(self.cluster.issued, 2)
        self.assertEqual(self.tokens_sent("Put"), ["token-alice-1", "token-alice-1", "token-alice-2"])
        puts = [request for _, rpc, request, _ in self.cluster.requests if rpc == "Put"]
        # The refused attempt never reached the fake's store: only two puts were served.
        self.assertEqual(len(puts), 2)
        self.assertEqual([k for k, _ in self.cluster.applied], [b"k", b"k"])

    def test_a_renewed_write_keeps_its_session_fields(self) -> None:
        seen = []
        original = self.cluster.serve_with

        def record(endpoint, rpc, request, timeout, metadata):
            if rpc == "Put":
                seen.append((request.client_id, request.sequence))
            return original(endpoint, rpc, request, timeout, metadata)

        self.cluster.serve_with = record
        client = self.make_client()
        client.put(b"k", b"1")
        self.cluster.valid.clear()
        client.put(b"k", b"2")
        self.assertEqual(seen, [(7, 1), (7, 2), (7, 2)])

    def test_a_wrong_password_fails_unauthenticated_and_sends_nothing_else(self) -> None:
        client = self.make_client(password="wrong")
        error = self.assertRaises(Unauthenticated, client.put, b"k", b"1")
        self.assertIn("invalid user ID or password", str(error))
        self.assertIsInstance(error, RequestFailed)
        self.assertIsInstance(error, errors.Unauthenticated)
        self.assertEqual(self.cluster.data, {})
        self.assertEqual([rpc for rpc, _ in self.cluster.carried], ["Authenticate"])

    def test_renewal_happens_once_per_call(self) -> None:
        client = self.make_client()
        client.put(b"k", b"1")
        original = self.cluster._authenticate

        def useless(endpoint, request):
            response = original(endpoint, request)
            self.cluster.valid.clear()  # a token that never works
            return response

        self.cluster._authenticate = useless
        self.cluster.valid.clear()
        self.assertRaises(Unauthenticated, client.put, b"k", b"2")
        self.assertEqual(self.cluster.issued, 2)
        self.assertEqual(self.cluster.data[b"k"], b"1")

    def test_no_token_while_auth_is_disabled_then_authenticates_once_enabled(self) -> None:
        self.cluster.enabled = False
        client = self.make_client()
        client.put(b"k", b"1")
        client.put(b"k", b"2")
        self.assertEqual(self.tokens_sent("Authenticate"), [None])
        self.assertEqual(self.tokens_sent("Put"), [None, None])
        self.cluster.enabled = True
        client.put(b"k", b"3")
        self.assertEqual(self.tokens_sent("Put"), [None, None, None, "token-alice-1"])
        self.assertEqual(self.cluster.data[b"k"], b"3")

    def test_permission_denied_is_its_own_error(self) -> None:
        self.cluster.denied.add("Put")
        client = self.make_client()
        error = self.assertRaises(PermissionDenied, client.put, b"k", b"1")
        self.assertIsInstance(error, errors.PermissionDenied)
        self.assertEqual(error.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.cluster.data, {})

    def test_a_client_with_a_user_sends_unary_rpcs(self) -> None:
        client = self.make_client(stream=True)
        client.put(b"k", b"1")
        client.get(b"k")
        self.assertEqual(self.cluster.streams_opened, [])
        self.assertEqual(set(self.cluster.ways), {"unary"})

    def test_a_client_without_a_user_sends_no_token(self) -> None:
        self.cluster.enabled = False
        client = self.make_client(user=None, password=None, stream=False)
        client.put(b"k", b"1")
        self.assertNotIn("Authenticate", [rpc for rpc, _ in self.cluster.carried])
        self.assertEqual(self.tokens_sent("Put"), [None])

    def test_a_renewal_is_not_an_attempt_that_may_have_applied(self) -> None:
        """
        A write refused UNAUTHENTICATED applied nothing: if its renewed
        resend then finds the session expired, it is sent once more in a
        fresh session (not reported as an unknown outcome).
        """
        client = self.make_client()
        client.put(b"k", b"1")
        self.cluster.valid.clear()
        self.cluster.sessions.clear()  # evicted while the client was idle
        client.put(b"k", b"2")
        self.assertEqual(self.cluster.data[b"k"], b"2")
        self.assertEqual([k for k, _ in self.cluster.applied], [b"k", b"k"])

    def test_a_refusal_after_an_attempt_that_may_have_applied_is_an_unknown_outcome(self) -> None:
        client = self.make_client()
        client.put(b"k", b"1")
        original = self.cluster.Put

        def applied_then_lost(endpoint, request):
            original(endpoint, request)  # applied, but the answer is lost
            self.cluster.denied.add("Put")  # and the permission revoked before the retry
            raise unavailable("connection reset", reason=None)

        self.cluster.Put = applied_then_lost
        error = self.assertRaises(OutcomeUnknown, client.put, b"k", b"2")
        self.assertIn("may have been applied", str(error))
        self.assertIsInstance(error.__cause__, PermissionDenied)
        self.assertEqual(self.cluster.data[b"k"], b"2")

    def test_one_call_authenticates_for_many_threads(self) -> None:
        client = self.make_client()
        client.put(b"k", b"0")
        self.cluster.valid.clear()
        threads = 8
        started = threading.Barrier(threads, timeout=10)
        errors_seen = []
        # Authenticate answers only once every thread found it needs a
        # token, so that all of them need one while the first is asked for.
        all_need, needing = threading.Event(), set()
        credentials = client._credentials
        current = credentials.current

        def counting():
            state = current()
            if state[0]:
                needing.add(threading.get_ident())
                if len(needing) == threads:
                    all_need.set()
            return state

        credentials.current = counting
        self.cluster.authenticate_barrier = lambda: all_need.wait(timeout=10)

        def put(i: int) -> None:
            try:
                started.wait()
                client.put(f"k{i}", "v")
            except BaseException as error:  # reported below
                errors_seen.append(error)

        workers = [threading.Thread(target=put, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        self.assertEqual(errors_seen, [])
        self.assertEqual(self.cluster.issued, 2)
        self.assertEqual(sorted(k for k in self.cluster.data if k != b"k"), sorted(f"k{i}".encode() for i in range(threads)))

    def test_status_and_member_list_need_no_token(self) -> None:
        client = self.make_client(password="wrong")
        self.assertEqual(client.status().header.member_id, 1)
        self.assertEqual(client.auth_status(), (True, 4))
        self.assertEqual(self.tokens_sent("Authenticate"), [])

    def test_changing_its_own_password_keeps_the_client_working(self) -> None:
        client = self.make_client()
        client.put(b"k", b"1")
        client.user_change_password("alice", "changed")
        self.assertEqual(client._credentials.password, "changed")
        self.cluster.valid.clear()
        original = PASSWORD
        globals()["PASSWORD"] = "changed"
        self.addCleanup(globals().__setitem__, "PASSWORD", original)
        client.put(b"k", b"2")
        self.assertEqual(self.cluster.data[b"k"], b"2")

    def test_unauthenticated_without_error_info_is_still_unauthenticated(self) -> None:
        for endpoint in (A, B, C):
            self.cluster.errors[endpoint] = [FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "from a proxy")]
        client = self.make_client(refresh_s=None)
        self.assertRaises(Unauthenticated, client.get, b"k")

    def test_a_user_needs_a_password_and_a_password_a_user(self) -> None:
        self.assertRaises(InvalidArgument, self.make_client, password=None)
        self.assertRaises(InvalidArgument, self.make_client, user=None)
        self.assertRaises(InvalidArgument, self.make_client, user="")


class AuthMethodTests(_AuthCase):
    """The management methods: their requests, their answers, and how they are retried."""

    def requests_of(self, rpc: str) -> list:
        return [request for name, request in self.cluster.auth_requests if name == rpc]

    def test_changes_return_the_auth_revision_and_go_without_a_session(self) -> None:
        client = self.make_client()
        self.assertEqual(client.role_add("rw"), 1)
        self.assertEqual(client.user_add("bob", "pw"), 2)
        self.assertEqual(client.user_add("carol", no_password=True), 3)
        self.assertEqual(client.user_grant_role("bob", "rw"), 4)
        self.assertEqual(client.user_revoke_role("bob", "rw"), 5)
        self.assertEqual(client.user_change_password("bob", "new"), 6)
        self.assertEqual(client.user_delete("bob"), 7)
        self.assertEqual(client.role_delete("rw"), 8)
        self.assertEqual(client.auth_enable(), 9)
        self.assertEqual(client.auth_disable(), 10)
        self.assertEqual(self.tokens_sent("OpenSession"), [])
        self.assertEqual(self.requests_of("UserAdd"), [
            auth_pb2.UserAddRequest(name="bob", password="pw"),
            auth_pb2.UserAddRequest(name="carol", no_password=True)])
        self.assertEqual(self.requests_of("UserGrantRole"), [auth_pb2.UserGrantRoleRequest(user="bob", role="rw")])
        self.assertEqual(self.requests_of("UserRevokeRole"), [auth_pb2.UserRevokeRoleRequest(name="bob", role="rw")])

    def test_permissions_by_key_range_and_prefix(self) -> None:
        client = self.make_client()
        client.role_grant_permission("rw", "readwrite", b"a", b"b")
        client.role_grant_permission("rw", "read", "app/", prefix=True)
        client.role_grant_permission("rw", "WRITE", b"k")
        client.role_revoke_permission("rw", "app/", prefix=True)
        self.assertEqual(self.requests_of("RoleGrantPermission"), [
            auth_pb2.RoleGrantPermissionRequest(name="rw", perm=auth_pb2.Permission(
                perm_type=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")),
            auth_pb2.RoleGrantPermissionRequest(name="rw", perm=auth_pb2.Permission(
                perm_type=auth_pb2.Permission.READ, key=b"app/", range_end=b"app0")),
            auth_pb2.RoleGrantPermissionRequest(name="rw", perm=auth_pb2.Permission(
                perm_type=auth_pb2.Permission.WRITE, key=b"k")),
        ])
        self.assertEqual(self.requests_of("RoleRevokePermission"), [
            auth_pb2.RoleRevokePermissionRequest(role="rw", key=b"app/", range_end=b"app0")])

    def test_reads_of_the_auth_state(self) -> None:
        client = self.make_client()
        self.assertEqual(client.auth_status(), (True, 4))
        self.assertEqual(client.user_get("alice"), ["root", "rw"])
        self.assertEqual(client.user_list(), ["alice", "root"])
        self.assertEqual(client.role_list(), ["root", "rw"])
        self.assertEqual(client.role_get("rw"), [Permission("readwrite", b"a", b"b")])

    def test_bad_arguments_are_refused_before_anything_is_sent(self) -> None:
        client = self.make_client()
        self.assertRaises(InvalidArgument, client.role_grant_permission, "rw", "all", b"k")
        self.assertRaises(InvalidArgument, client.role_grant_permission, "rw", "read", b"k", b"l", prefix=True)
        self.assertRaises(InvalidArgument, client.user_add, "", "pw")
        self.assertRaises(InvalidArgument, client.user_add, "bob", "")
        self.assertRaises(InvalidArgument, client.user_add, "bob")  # no password, and not no_password=True
        self.assertRaises(InvalidArgument, client.user_add, "bob", "pw", no_password=True)
        self.assertRaises(InvalidArgument, client.user_change_password, "bob", "")
        self.assertRaises(InvalidArgument, client.role_add, 7)
        self.assertEqual(self.cluster.carried, [])

    def test_a_refused_change_is_auth_refused(self) -> None:
        self.cluster.change_errors.append(FakeRpcError(
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name already exists", errors.AUTH_REFUSED))
        client = self.make_client()
        error = self.assertRaises(AuthRefused, client.user_add, "bob", "pw")
        self.assertIn("user name already exists", str(error))

    def test_a_change_refused_after_a_lost_answer_is_an_unknown_outcome(self) -> None:
        """
        An auth change whose answer was lost (applied) is sent again and
        refused (the user exists now): the client cannot tell, and says so.
        """
        client = self.make_client()
        original = self.cluster._auth

        def applied_then_lost(endpoint, rpc, request):
            original(endpoint, rpc, request)
            self.cluster.change_errors.append(FakeRpcError(
                grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name already exists", errors.AUTH_REFUSED))
            self.cluster._auth = original
            raise unavailable("connection reset", reason=None)

        self.cluster._auth = applied_then_lost
        error = self.assertRaises(OutcomeUnknown, client.user_add, "bob", "pw")
        self.assertIsInstance(error.__cause__, AuthRefused)

    def test_a_change_past_its_deadline_is_an_unknown_outcome(self) -> None:
        self.cluster.change_errors.append(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
        client = self.make_client()
        self.assertRaises(OutcomeUnknown, client.user_add, "bob", "pw")
        self.assertEqual(len(self.requests_of("UserAdd")), 1)

    def test_a_read_past_its_deadline_is_retried(self) -> None:
        self.cluster.change_errors.append(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
        client = self.make_client()
        self.assertEqual(client.user_list(), ["alice", "root"])
        self.assertEqual(len(self.requests_of("UserList")), 2)


class AsyncAuthClientTests(SynchronousTestCase):
    """The asyncio client: the same token handling, its auth methods awaitable."""

    def setUp(self) -> None:
        self.cluster = AuthCluster()
        self.time = FakeTime()

    def drive(self, coroutine_function):
        async def body():
            client = AsyncClient([A, B, C], timeout_s=5.0, channel_factory=self.cluster.aio_channel,
                                 sleep=self.time.async_sleep, clock=self.time.clock, rng=LowRandom(),
                                 refresh_s=None, user="alice", password=PASSWORD)
            async with client:
                return await coroutine_function(client)
        return asyncio.run(body())

    def test_renews_an_expired_token(self) -> None:
        async def body(client):
            await client.put(b"k", b"1")
            self.cluster.valid.clear()
            await client.put(b"k", b"2")
            return await client.get(b"k")

        self.assertEqual(self.drive(body), b"2")
        self.assertEqual(self.cluster.issued, 2)
        self.assertEqual(set(self.cluster.ways), {"unary"})

    def test_auth_methods_are_awaitable(self) -> None:
        async def body(client):
            return await client.role_add("rw"), await client.user_list(), await client.auth_status()

        self.assertEqual(self.drive(body), (1, ["alice", "root"], (True, 4)))

    def test_a_wrong_password(self) -> None:
        async def body(client):
            client._credentials.password = "wrong"
            await client.put(b"k", b"1")

        self.assertRaises(Unauthenticated, self.drive, body)
        self.assertEqual(self.cluster.data, {})
