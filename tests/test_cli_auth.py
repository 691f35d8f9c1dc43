"""
Tests for the C{kvpaxos} command's auth commands and options
(L{kvpaxos.client.auth_cli}): parsing of C{--user}/C{--password} and of
every C{user}, C{role} and C{auth} command, the usage errors, the password
prompt (an injected getpass and isatty: no terminal), etcdctl's output lines
and the JSON objects, and C{auth enable}'s root setup.  Against
L{AuthStore}, a L{tests.test_client_auth.AuthCluster} that keeps users and
roles and refuses changes as etcd does.
"""

from __future__ import annotations

import io
import json
import random

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.client import cli
from kvpaxos.client.auth_cli import AuthCommand
from kvpaxos.v1 import auth_pb2
from tests.fake_grpc import FakeRpcError
from tests.test_client import FakeTime
from tests.test_client_auth import _AUTH_CHANGES, AuthCluster

P = auth_pb2.Permission


def refused(message: str) -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {message}", errors.AUTH_REFUSED)


class AuthStore(AuthCluster):
    """
    An L{AuthCluster} whose auth RPCs keep a table of users (their
    passwords and roles) and roles (their permissions), refuse as etcd does,
    and authenticate each user by its own password.  Auth starts disabled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.passwords: dict[str, object] = {}
        self.users: dict[str, list[str]] = {}
        self.roles: dict[str, list] = {}
        self.revision = 0
        #: Every Authenticate: (name, password).
        self.authenticated: list[tuple[str, str]] = []

    def rpcs(self) -> list[str]:
        """The auth RPCs served (or refused), in order."""
        return [rpc for rpc, _ in self.auth_requests]

    def serve_with(self, endpoint, rpc, request, timeout, metadata):
        if rpc == "AuthStatus":  # anyone may ask, with a token or without (auth.proto)
            self.carried.append((rpc, dict(metadata or ())))
            self.auth_requests.append((rpc, request))
            return self._auth(endpoint, rpc, request)
        return super().serve_with(endpoint, rpc, request, timeout, metadata)

    def _authenticate(self, endpoint, request):
        self.authenticated.append((request.name, request.password))
        if not self.enabled:
            return super()._authenticate(endpoint, request)
        if request.name not in self.users or self.passwords[request.name] != request.password:
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED,
                               "etcdserver: authentication failed, invalid user ID or password", errors.UNAUTHENTICATED)
        self.issued += 1
        token = f"token-{request.name}-{self.issued}"
        self.valid.add(token)
        return auth_pb2.AuthenticateResponse(header=self.header(endpoint), token=token, ttl=300)

    def _auth(self, endpoint, rpc, request):
        answer = getattr(self, "_" + rpc)(request)
        if rpc in _AUTH_CHANGES:
            self.revision += 1
            return auth_pb2.AuthChangeResponse(header=self.header(endpoint), auth_revision=self.revision)
        answer.header.CopyFrom(self.header(endpoint))
        return answer

    def _user(self, name: str) -> list[str]:
        if name not in self.users:
            raise refused("user name not found")
        return self.users[name]

    def _role(self, name: str) -> list:
        if name not in self.roles:
            raise refused("role name not found")
        return self.roles[name]

    def _UserAdd(self, request) -> None:
        if request.name in self.users:
            raise refused("user name already exists")
        self.users[request.name] = []
        self.passwords[request.name] = None if request.no_password else request.password

    def _UserDelete(self, request) -> None:
        self._user(request.name)
        del self.users[request.name], self.passwords[request.name]

    def _UserChangePassword(self, request) -> None:
        self._user(request.name)
        self.passwords[request.name] = request.password

    def _UserGrantRole(self, request) -> None:
        roles = self._user(request.user)
        self._role(request.role)
        if request.role not in roles:
            roles.append(request.role)
            roles.sort()

    def _UserRevokeRole(self, request) -> None:
        roles = self._user(request.name)
        if request.role not in roles:
            raise refused("role is not granted to the user")
        roles.remove(request.role)

    def _UserGet(self, request):
        return auth_pb2.UserGetResponse(roles=self._user(request.name))

    def _UserList(self, request):
        return auth_pb2.UserListResponse(users=sorted(self.users))

    def _RoleAdd(self, request) -> None:
        if request.name in self.roles:
            raise refused("role name already exists")
        self.roles[request.name] = []

    def _RoleDelete(self, request) -> None:
        self._role(request.role)
        del self.roles[request.role]
        for roles in self.users.values():
            if request.role in roles:
                roles.remove(request.role)

    def _RoleGet(self, request):
        return auth_pb2.RoleGetResponse(perm=self._role(request.role))

    def _RoleList(self, request):
        return auth_pb2.RoleListResponse(roles=sorted(self.roles))

    def _RoleGrantPermission(self, request) -> None:
        permissions = self._role(request.name)
        permissions[:] = [p for p in permissions if (p.key, p.range_end) != (request.perm.key, request.perm.range_end)]
        permissions.append(request.perm)

    def _RoleRevokePermission(self, request) -> None:
        permissions = self._role(request.role)
        kept = [p for p in permissions if (p.key, p.range_end) != (request.key, request.range_end)]
        if len(kept) == len(permissions):
            raise refused("permission is not granted to the role")
        permissions[:] = kept

    def _AuthEnable(self, request) -> None:
        if "root" not in self.users:
            raise refused("root user does not exist")
        if "root" not in self.users["root"]:
            raise refused("root user does not have root role")
        self.enabled = True

    def _AuthDisable(self, request) -> None:
        self.enabled = False

    def _AuthStatus(self, request):
        return auth_pb2.AuthStatusResponse(enabled=self.enabled, auth_revision=self.revision)


class AuthCliCase(SynchronousTestCase):
    """Runs L{cli.main} against an L{AuthStore} (endpoint a:1), with fake time, getpass and isatty."""

    def setUp(self) -> None:
        self.cluster = AuthStore()
        self.time = FakeTime()
        self.terminal = False
        self.answers: list = []
        self.prompts: list[str] = []
        self.stdout = self.stderr = b""

    def getpass(self, prompt: str) -> str:
        self.prompts.append(prompt)
        self.assertTrue(self.terminal, "asked for a password with no terminal")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run_cli(self, *argv: str) -> int:
        out, err = io.BytesIO(), io.BytesIO()
        status = cli.main(
            ["--endpoints=a:1", *argv], channel_factory=self.cluster.channel, sleep=self.time.sleep,
            clock=self.time.clock, rng=random.Random(1), stdout=out, stderr=err,
            getpass=self.getpass, isatty=lambda: self.terminal)
        self.stdout, self.stderr = out.getvalue(), err.getvalue()
        return status

    def run_json(self, *argv: str) -> dict:
        self.assertEqual(self.run_cli("--json", *argv), cli.EXIT_OK, self.stderr)
        self.assertEqual(self.stdout.count(b"\n"), 1)
        return json.loads(self.stdout)

    def assertPrints(self, argv: tuple, text: str) -> None:
        """Assert that C{argv} exits 0 and prints exactly C{text}."""
        self.assertEqual((self.run_cli(*argv), self.stdout.decode(), self.stderr), (cli.EXIT_OK, text, b""))

    def assertUsageError(self, *argv: str, says: str) -> None:
        """Assert that C{argv} is a usage error: status 2, one error line, nothing sent."""
        self.assertEqual(self.run_cli(*argv), cli.EXIT_USAGE)
        self.assertEqual(self.stdout, b"")
        lines = self.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("kvpaxos: error: "), lines[0])
        self.assertIn(says, lines[0])
        self.assertEqual(self.cluster.carried, [])

    def assertFails(self, *argv: str, says: str) -> None:
        """Assert that C{argv} exits 1 with one error line saying C{says}."""
        self.assertEqual(self.run_cli(*argv), cli.EXIT_FAILED)
        self.assertEqual(self.stdout, b"")
        self.assertEqual(self.stderr.count(b"\n"), 1, self.stderr)
        self.assertTrue(self.stderr.startswith(b"kvpaxos: error: "), self.stderr)
        self.assertIn(says, self.stderr.decode())

    def add_root(self, enabled: bool = True) -> None:
        """The user root (password C{pw}) with the role root, and auth enabled."""
        self.cluster.users["root"], self.cluster.passwords["root"] = ["root"], "pw"
        self.cluster.roles["root"] = []
        self.cluster.enabled = enabled


class UserOptionTests(SynchronousTestCase):
    """C{--user} and C{--password}: parsed, split and placed as etcdctl takes them."""

    def parse(self, *argv: str) -> cli.Invocation:
        return cli.parse(list(argv), io.BytesIO(), io.BytesIO())

    def credentials(self, *argv: str) -> tuple:
        invocation = self.parse(*argv)
        return invocation.user, invocation.password

    def test_no_user(self) -> None:
        """Without --user there is neither user nor password."""
        self.assertEqual(self.credentials("get", "k"), (None, None))

    def test_name_and_password(self) -> None:
        """--user NAME:PASSWORD splits at the colon."""
        self.assertEqual(self.credentials("--user", "alice:s3cret", "get", "k"), ("alice", "s3cret"))

    def test_password_with_colons(self) -> None:
        """The split is at the first colon: the password may hold more."""
        self.assertEqual(self.credentials("--user=alice:a:b:", "get", "k"), ("alice", "a:b:"))

    def test_name_alone(self) -> None:
        """--user NAME leaves the password to be asked for (None)."""
        self.assertEqual(self.credentials("--user", "alice", "user", "list"), ("alice", None))

    def test_password_option_takes_the_name_whole(self) -> None:
        """With --password, --user is the whole name, colons and all."""
        self.assertEqual(self.credentials("--user", "a:b", "--password", "p:q", "get", "k"), ("a:b", "p:q"))

    def test_after_the_command(self) -> None:
        """--user and --password are taken after the command too."""
        self.assertEqual(self.credentials("get", "k", "--user", "alice:pw"), ("alice", "pw"))
        self.assertEqual(self.credentials("--user", "alice", "role", "list", "--password", "pw"), ("alice", "pw"))
        self.assertEqual(self.credentials("user", "get", "bob", "--user=alice:pw"), ("alice", "pw"))

    def test_seed_form(self) -> None:
        """The seed's --action form takes --user too."""
        self.assertEqual(self.credentials("--user=alice:pw", "--action=get", "--key=k"), ("alice", "pw"))


class CommandParseTests(SynchronousTestCase):
    """Every user, role and auth command and flag becomes its L{AuthCommand}."""

    def command(self, *argv: str) -> AuthCommand:
        invocation = cli.parse(list(argv), io.BytesIO(), io.BytesIO())
        self.assertEqual((invocation.action, invocation.key, invocation.value), (invocation.auth.action, None, None))
        return invocation.auth

    def test_user_add(self) -> None:
        """user add NAME[:PASSWORD], --new-user-password (NAME whole) and --no-password."""
        self.assertEqual(self.command("user", "add", "alice:p:w"),
                         AuthCommand("user add", name="alice", password="p:w"))
        self.assertEqual(self.command("user", "add", "alice"), AuthCommand("user add", name="alice"))
        self.assertEqual(self.command("user", "add", "a:b", "--new-user-password", "pw"),
                         AuthCommand("user add", name="a:b", password="pw"))
        self.assertEqual(self.command("user", "add", "bob", "--no-password"),
                         AuthCommand("user add", name="bob", no_password=True))

    def test_user_commands(self) -> None:
        """user delete, get [--detail], list, grant-role, revoke-role and passwd."""
        self.assertEqual(self.command("user", "delete", "bob"), AuthCommand("user delete", name="bob"))
        self.assertEqual(self.command("user", "get", "bob"), AuthCommand("user get", name="bob"))
        self.assertEqual(self.command("user", "get", "bob", "--detail"),
                         AuthCommand("user get", name="bob", detail=True))
        self.assertEqual(self.command("user", "list"), AuthCommand("user list"))
        self.assertEqual(self.command("user", "grant-role", "bob", "rw"),
                         AuthCommand("user grant-role", name="bob", role="rw"))
        self.assertEqual(self.command("user", "revoke-role", "bob", "rw"),
                         AuthCommand("user revoke-role", name="bob", role="rw"))
        self.assertEqual(self.command("user", "passwd", "bob"), AuthCommand("user passwd", name="bob"))
        self.assertEqual(self.command("user", "passwd", "bob", "--new-user-password=x"),
                         AuthCommand("user passwd", name="bob", password="x"))

    def test_role_commands(self) -> None:
        """role add, delete, get and list."""
        for verb in ("add", "delete", "get"):
            self.assertEqual(self.command("role", verb, "rw"), AuthCommand(f"role {verb}", name="rw"))
        self.assertEqual(self.command("role", "list"), AuthCommand("role list"))

    def test_grant_permission(self) -> None:
        """grant-permission (or grant): a type in any case, KEY, [KEY, END), --prefix, --from-key."""
        grant = "role grant-permission"
        self.assertEqual(self.command("role", "grant-permission", "rw", "READ", "k"),
                         AuthCommand(grant, name="rw", kind="read", key=b"k"))
        self.assertEqual(self.command("role", "grant", "rw", "write", "a", "b"),
                         AuthCommand(grant, name="rw", kind="write", key=b"a", end=b"b"))
        self.assertEqual(self.command("role", "grant", "rw", "readwrite", "app/", "--prefix"),
                         AuthCommand(grant, name="rw", kind="readwrite", key=b"app/", prefix=True))
        self.assertEqual(self.command("role", "grant", "rw", "read", "m", "--from-key"),
                         AuthCommand(grant, name="rw", kind="read", key=b"m", end=b"\0"))

    def test_empty_key_is_etcdctls_nul(self) -> None:
        """An empty KEY is etcdctl's "\\0": with --prefix or --from-key, every key."""
        for flag in ("--prefix", "--from-key"):
            self.assertEqual(self.command("role", "grant", "rw", "read", "", flag),
                             AuthCommand("role grant-permission", name="rw", kind="read", key=b"\0", end=b"\0"))
        self.assertEqual(self.command("role", "grant", "rw", "read", "").key, b"\0")

    def test_revoke_permission(self) -> None:
        """revoke-permission (or revoke): KEY, [KEY, END), --prefix, --from-key."""
        revoke = "role revoke-permission"
        self.assertEqual(self.command("role", "revoke-permission", "rw", "k"),
                         AuthCommand(revoke, name="rw", key=b"k"))
        self.assertEqual(self.command("role", "revoke", "rw", "a", "b"),
                         AuthCommand(revoke, name="rw", key=b"a", end=b"b"))
        self.assertEqual(self.command("role", "revoke", "rw", "p", "--prefix"),
                         AuthCommand(revoke, name="rw", key=b"p", prefix=True))
        self.assertEqual(self.command("role", "revoke", "rw", "p", "--from-key"),
                         AuthCommand(revoke, name="rw", key=b"p", end=b"\0"))

    def test_auth_commands(self) -> None:
        """auth enable, disable and status."""
        for verb in ("enable", "disable", "status"):
            self.assertEqual(self.command("auth", verb), AuthCommand(f"auth {verb}"))

    def test_global_options_after_the_command(self) -> None:
        """--json, --timeout and --endpoints after an auth command are taken."""
        invocation = cli.parse(["role", "list", "--json", "--timeout=2", "--endpoints=b:1"], io.BytesIO(), io.BytesIO())
        self.assertEqual((invocation.json, invocation.timeout_s, invocation.endpoints), (True, 2.0, ["b:1"]))


class UsageTests(AuthCliCase):
    """Bad auth command lines: exit 2, one line, nothing sent."""

    def test_password_without_user(self) -> None:
        """--password without --user is a usage error."""
        self.assertUsageError("--password", "pw", "get", "k", says="--password needs --user")

    def test_empty_user_or_password(self) -> None:
        """An empty user name or password in --user is a usage error."""
        self.assertUsageError("--user", ":pw", "get", "k", says="user name is empty")
        self.assertUsageError("--user", "alice:", "get", "k", says="the password is empty")
        self.assertUsageError("user", "add", "alice:", says="the password after ':' is empty")
        self.assertUsageError("user", "add", ":pw", says="user name is empty")
        self.assertUsageError("user", "passwd", "bob", "--new-user-password=", says="the password is empty")

    def test_bad_names(self) -> None:
        """A role name with a control character is refused before anything is sent."""
        self.assertUsageError("role", "add", "a\tb", says="role name must be")

    def test_both_password_flags(self) -> None:
        """user add takes --new-user-password or --no-password, not both."""
        self.assertUsageError("user", "add", "bob", "--no-password", "--new-user-password=x", says="not both")

    def test_bad_permission_type(self) -> None:
        """A permission type other than read, write and readwrite is a usage error."""
        self.assertUsageError("role", "grant", "rw", "all", "k", says="invalid permission type 'all'")

    def test_end_with_prefix_or_from_key(self) -> None:
        """END does not go with --prefix or --from-key, nor --prefix with --from-key."""
        self.assertUsageError("role", "grant", "rw", "read", "a", "b", "--prefix", says="unexpected END with --prefix")
        self.assertUsageError("role", "revoke", "rw", "a", "b", "--from-key", says="unexpected END with --from-key")
        self.assertUsageError("role", "grant", "rw", "read", "a", "--prefix", "--from-key", says="mutually exclusive")

    def test_end_before_key(self) -> None:
        """An END that does not come after KEY is a usage error."""
        self.assertUsageError("role", "grant", "rw", "read", "b", "a", says="END must come after KEY")

    def test_missing_arguments(self) -> None:
        """A group without an action, an unknown action, a missing argument: usage errors."""
        self.assertUsageError("user", says="required")
        self.assertUsageError("role", "frob", says="invalid choice")
        self.assertUsageError("user", "grant-role", "bob", says="ROLE")
        self.assertUsageError("auth", "enable", "now", says="unrecognized arguments")

    def test_no_terminal_for_the_user_password(self) -> None:
        """--user NAME with no password and no terminal says how to give one."""
        self.assertUsageError("--user", "alice", "get", "k",
                              says="give --user alice:PASSWORD or --password PASSWORD")
        self.assertEqual(self.prompts, [])

    def test_no_terminal_for_a_new_password(self) -> None:
        """user add and passwd with no password and no terminal say how to give one."""
        self.assertUsageError("user", "add", "bob",
                              says="give bob:PASSWORD, --new-user-password PASSWORD or --no-password")
        self.assertUsageError("user", "passwd", "bob", says="give --new-user-password PASSWORD")

    def test_help(self) -> None:
        """--help names the groups, and each group its actions."""
        self.assertEqual(self.run_cli("--help"), cli.EXIT_OK)
        for group in (b"user", b"role", b"auth", b"--user NAME[:PASSWORD]", b"--password PASSWORD"):
            self.assertIn(group, self.stdout)
        self.assertEqual(self.run_cli("role", "--help"), cli.EXIT_OK)
        self.assertIn(b"grant-permission (grant)", self.stdout)
        self.assertIn(b"revoke-permission (revoke)", self.stdout)


class PromptTests(AuthCliCase):
    """Passwords asked for on a terminal (an injected getpass)."""

    def setUp(self) -> None:
        super().setUp()
        self.terminal = True

    def test_user_password(self) -> None:
        """--user NAME on a terminal asks "Password: " and authenticates with the answer."""
        self.add_root()
        self.answers = ["pw"]
        self.assertPrints(("--user", "root", "user", "list"), "root\n")
        self.assertEqual(self.prompts, ["Password: "])
        self.assertEqual(self.cluster.authenticated, [("root", "pw")])

    def test_new_user_password_asked_twice(self) -> None:
        """user add NAME asks for the password and its confirmation, as etcdctl does."""
        self.answers = ["pw", "pw"]
        self.assertPrints(("user", "add", "bob"), "User bob created\n")
        self.assertEqual(self.prompts, ["Password of bob: ", "Type password of bob again for confirmation: "])
        self.assertEqual(self.cluster.passwords["bob"], "pw")

    def test_new_password_then_user_password(self) -> None:
        """The command's password is asked for before --user's (etcdctl's order)."""
        self.add_root()
        self.cluster.users["bob"], self.cluster.passwords["bob"] = [], "old"
        self.answers = ["new", "new", "pw"]
        self.assertPrints(("--user=root", "user", "passwd", "bob"), "Password updated\n")
        self.assertEqual(self.prompts, ["Password of bob: ", "Type password of bob again for confirmation: ",
                                        "Password: "])
        self.assertEqual(self.cluster.passwords["bob"], "new")

    def test_answers_that_differ(self) -> None:
        """Two different answers are a usage error, and nothing is sent."""
        self.answers = ["pw", "wp"]
        self.assertUsageError("user", "add", "bob", says="given passwords are different")

    def test_empty_or_no_answer(self) -> None:
        """An empty answer, or end of input, is a usage error."""
        self.answers = [""]
        self.assertUsageError("--user=root", "get", "k", says="the password is empty")
        self.answers = [EOFError()]
        self.assertUsageError("user", "passwd", "bob", says="no password read")

    def test_given_passwords_are_not_asked_for(self) -> None:
        """A password given on the command line is not asked for, nor is --no-password's."""
        self.add_root()
        self.assertPrints(("--user=root:pw", "user", "add", "bob", "--no-password"), "User bob created\n")
        self.assertPrints(("--user=root", "--password=pw", "user", "add", "carol:x"), "User carol created\n")
        self.assertEqual(self.prompts, [])
        self.assertEqual((self.cluster.passwords["bob"], self.cluster.passwords["carol"]), (None, "x"))


class UserOutputTests(AuthCliCase):
    """The user commands: etcdctl's lines, and --json."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster.roles.update({"r1": [], "r2": [P(perm_type=P.READ, key=b"k")]})

    def test_add(self) -> None:
        """user add prints "User NAME created"; --json gives the auth revision."""
        self.assertPrints(("user", "add", "alice:pw"), "User alice created\n")
        self.assertEqual(self.run_json("user", "add", "bob", "--no-password"),
                         {"user": "bob", "no_password": True, "auth_revision": 2})
        self.assertEqual(self.cluster.auth_requests[-1][1], auth_pb2.UserAddRequest(name="bob", no_password=True))

    def test_delete_and_passwd(self) -> None:
        """user delete and passwd print etcdctl's lines."""
        self.cluster.users["alice"], self.cluster.passwords["alice"] = [], "pw"
        self.assertPrints(("user", "passwd", "alice", "--new-user-password=new"), "Password updated\n")
        self.assertEqual(self.cluster.passwords["alice"], "new")
        self.assertEqual(self.run_json("user", "passwd", "alice", "--new-user-password=x"),
                         {"user": "alice", "auth_revision": 2})
        self.assertPrints(("user", "delete", "alice"), "User alice deleted\n")
        self.assertEqual(self.cluster.users, {})

    def test_grant_and_revoke_role(self) -> None:
        """user grant-role and revoke-role print etcdctl's lines."""
        self.cluster.users["alice"], self.cluster.passwords["alice"] = [], "pw"
        self.assertPrints(("user", "grant-role", "alice", "r1"), "Role r1 is granted to user alice\n")
        self.assertEqual(self.run_json("user", "grant-role", "alice", "r2"),
                         {"user": "alice", "role": "r2", "auth_revision": 2})
        self.assertPrints(("user", "revoke-role", "alice", "r1"), "Role r1 is revoked from user alice\n")
        self.assertEqual(self.cluster.users["alice"], ["r2"])

    def test_get_and_list(self) -> None:
        """user get prints the user and its roles on one line; user list one name a line."""
        self.cluster.users.update({"alice": ["r1", "r2"], "bob": []})
        self.assertPrints(("user", "get", "alice"), "User: alice\nRoles: r1 r2\n")
        self.assertPrints(("user", "get", "bob"), "User: bob\nRoles:\n")
        self.assertEqual(self.run_json("user", "get", "alice"), {"user": "alice", "roles": ["r1", "r2"]})
        self.assertPrints(("user", "list"), "alice\nbob\n")
        self.assertEqual(self.run_json("user", "list"), {"users": ["alice", "bob"]})

    def test_get_detail(self) -> None:
        """user get --detail prints each role as role get does."""
        self.cluster.users["alice"] = ["r1", "r2"]
        self.assertPrints(("user", "get", "alice", "--detail"),
                          "User: alice\n\nRole r1\nKV Read:\nKV Write:\n\nRole r2\nKV Read:\n\tk\nKV Write:\n")
        self.assertEqual(self.run_json("user", "get", "alice", "--detail")["permissions"],
                         {"r1": [], "r2": [{"type": "read", "key": "k", "range_end": ""}]})


class RoleOutputTests(AuthCliCase):
    """The role commands: etcdctl's lines, and --json."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster.roles["rw"] = []

    def test_add_delete_list(self) -> None:
        """role add and delete print etcdctl's lines; role list one name a line."""
        self.assertPrints(("role", "add", "ro"), "Role ro created\n")
        self.assertPrints(("role", "list"), "ro\nrw\n")
        self.assertEqual(self.run_json("role", "list"), {"roles": ["ro", "rw"]})
        self.assertEqual(self.run_json("role", "delete", "ro"), {"role": "ro", "auth_revision": 2})
        self.assertPrints(("role", "delete", "rw"), "Role rw deleted\n")
        self.assertEqual(self.cluster.roles, {})

    def test_grant_sends_the_range(self) -> None:
        """grant-permission prints "Role NAME updated" and sends the key and range end of each form."""
        for argv in (("k",), ("a", "b"), ("app/", "--prefix"), ("m", "--from-key")):
            self.assertPrints(("role", "grant", "rw", "readwrite", *argv), "Role rw updated\n")
        self.assertEqual(self.cluster.roles["rw"], [
            P(perm_type=P.READWRITE, key=b"k"), P(perm_type=P.READWRITE, key=b"a", range_end=b"b"),
            P(perm_type=P.READWRITE, key=b"app/", range_end=b"app0"),
            P(perm_type=P.READWRITE, key=b"m", range_end=b"\0"),
        ])
        self.assertEqual(self.run_json("role", "grant-permission", "rw", "write", "app/", "--prefix"),
                         {"role": "rw", "type": "write", "key": "app/", "range_end": "app0", "auth_revision": 5})

    def test_get(self) -> None:
        """role get prints etcdctl's sections: a key, [a, b), [a, <open ended>, and a prefix marked."""
        self.cluster.roles["rw"] = [
            P(perm_type=P.READ, key=b"k"), P(perm_type=P.READWRITE, key=b"a", range_end=b"c"),
            P(perm_type=P.READ, key=b"app/", range_end=b"app0"), P(perm_type=P.WRITE, key=b"z", range_end=b"\0"),
        ]
        self.assertPrints(("role", "get", "rw"),
                          "Role rw\nKV Read:\n\tk\n\t[a, c)\n\t[app/, app0) (prefix app/)\n"
                          "KV Write:\n\t[a, c)\n\t[z, <open ended>\n")
        self.assertEqual(self.run_json("role", "get", "rw")["permissions"], [
            {"type": "read", "key": "k", "range_end": ""}, {"type": "readwrite", "key": "a", "range_end": "c"},
            {"type": "read", "key": "app/", "range_end": "app0"}, {"type": "write", "key": "z", "range_end": "\0"},
        ])

    def test_binary_key_in_json(self) -> None:
        """A key that is not UTF-8 is given in base64 in --json."""
        self.cluster.roles["rw"] = [P(perm_type=P.READ, key=b"\xff")]
        self.assertEqual(self.run_json("role", "get", "rw")["permissions"],
                         [{"type": "read", "key_base64": "/w==", "range_end": ""}])

    def test_revoke(self) -> None:
        """revoke-permission prints etcdctl's line for a key, a range, an open end and a prefix."""
        for argv in (("k",), ("a", "b"), ("m", "--from-key"), ("app/", "--prefix")):
            self.run_cli("role", "grant", "rw", "read", *argv)
        self.assertPrints(("role", "revoke", "rw", "k"), "Permission of key k is revoked from role rw\n")
        self.assertPrints(("role", "revoke-permission", "rw", "a", "b"),
                          "Permission of range [a, b) is revoked from role rw\n")
        self.assertPrints(("role", "revoke", "rw", "m", "--from-key"),
                          "Permission of range [m, <open ended> is revoked from role rw\n")
        self.assertEqual(self.run_json("role", "revoke", "rw", "app/", "--prefix"),
                         {"role": "rw", "key": "app/", "range_end": "app0", "auth_revision": 8})
        self.assertEqual(self.cluster.roles["rw"], [])


class AuthOutputTests(AuthCliCase):
    """auth enable (with etcdctl's root setup), disable and status."""

    def test_enable_adds_and_grants_the_root_role(self) -> None:
        """With a user root and no role root, auth enable adds the role, grants it, then enables."""
        self.cluster.users["root"], self.cluster.passwords["root"] = [], "pw"
        self.assertPrints(("auth", "enable"), "Authentication Enabled\n")
        self.assertEqual(self.cluster.rpcs(), ["UserList", "RoleList", "RoleAdd", "UserGet", "UserGrantRole",
                                               "AuthEnable"])
        self.assertEqual((self.cluster.enabled, self.cluster.users["root"]), (True, ["root"]))

    def test_enable_json(self) -> None:
        """auth enable --json says what it set up, and the auth revision."""
        self.cluster.users["root"], self.cluster.passwords["root"] = [], "pw"
        self.cluster.roles["root"] = []
        self.assertEqual(self.run_json("auth", "enable"),
                         {"enabled": True, "auth_revision": 2, "root_role_created": False, "root_role_granted": True})

    def test_enable_with_root_ready(self) -> None:
        """When the user root holds the role root, auth enable changes nothing else."""
        self.add_root(enabled=False)
        self.assertPrints(("auth", "enable"), "Authentication Enabled\n")
        self.assertEqual(self.cluster.rpcs(), ["UserList", "RoleList", "UserGet", "AuthEnable"])

    def test_enable_without_a_root_user(self) -> None:
        """With no user root, auth enable fails, says to add it, and changes nothing."""
        self.cluster.roles["rw"] = []
        self.assertFails("auth", "enable", says="needs a user root: run `kvpaxos user add root` first")
        self.assertEqual(self.cluster.rpcs(), ["UserList"])
        self.assertEqual((self.cluster.enabled, sorted(self.cluster.roles)), (False, ["rw"]))

    def test_status_and_disable(self) -> None:
        """auth status prints etcdctl's two lines; auth disable (as root) its one."""
        self.assertPrints(("auth", "status"), "Authentication Status: false\nAuthRevision: 0\n")
        self.add_root()
        self.cluster.revision = 3
        self.assertEqual(self.run_json("--user=root:pw", "auth", "status"), {"enabled": True, "auth_revision": 3})
        self.assertPrints(("--user=root:pw", "auth", "disable"), "Authentication Disabled\n")
        self.assertFalse(self.cluster.enabled)
        self.assertEqual(self.run_json("auth", "status"), {"enabled": False, "auth_revision": 4})
        self.assertIn(("root", "pw"), self.cluster.authenticated)


class ErrorTests(AuthCliCase):
    """Refused changes and missing or wrong credentials: exit 1, one line."""

    def test_refused_change(self) -> None:
        """A change the store refuses exits 1 with its message."""
        self.cluster.users["alice"], self.cluster.passwords["alice"] = [], "pw"
        self.assertFails("user", "add", "alice:pw",
                         says="a:1: FAILED_PRECONDITION: etcdserver: user name already exists")
        self.assertFails("user", "grant-role", "alice", "nope", says="etcdserver: role name not found")
        self.assertFails("role", "revoke", "nope", "k", says="etcdserver: role name not found")

    def test_wrong_password(self) -> None:
        """A wrong password exits 1 with the UNAUTHENTICATED message, and nothing else is sent."""
        self.add_root()
        self.assertEqual(self.run_cli("--user=root:wrong", "user", "list"), cli.EXIT_FAILED)
        self.assertEqual(self.stderr, b"kvpaxos: error: a:1: UNAUTHENTICATED: etcdserver: authentication failed,"
                                      b" invalid user ID or password\n")
        self.assertEqual(self.cluster.rpcs(), [])

    def test_no_user_while_enabled(self) -> None:
        """A command without --user once auth is enabled exits 1, saying to give one."""
        self.add_root()
        self.assertFails("get", "k", says="UNAUTHENTICATED: etcdserver: invalid auth token (give --user NAME[:PASSWORD])")

    def test_no_tls_hint_on_an_answer(self) -> None:
        """An answer that names certificates gets no TLS hint: the node answered."""
        self.add_root()
        self.cluster.change_errors.append(refused("user has no password (it uses a client certificate)"))
        self.assertEqual(self.run_cli("--user=root:pw", "user", "passwd", "root", "--new-user-password=x"),
                         cli.EXIT_FAILED)
        self.assertEqual(self.stderr, b"kvpaxos: error: a:1: FAILED_PRECONDITION: etcdserver: user has no password"
                                      b" (it uses a client certificate)\n")

    def test_permission_denied(self) -> None:
        """A user without the right role exits 1 with PERMISSION_DENIED."""
        self.add_root()
        self.cluster.users["alice"], self.cluster.passwords["alice"] = [], "pw"
        self.cluster.denied.add("UserList")
        self.assertFails("--user=alice:pw", "auth", "enable", says="PERMISSION_DENIED: etcdserver: permission denied")
        self.assertEqual(self.cluster.rpcs(), [])

    def test_kv_commands_carry_the_token(self) -> None:
        """A KV command with --user authenticates and sends its token."""
        self.add_root()
        self.assertPrints(("--user=root:pw", "put", "k", "v"), "OK\n")
        self.assertEqual([carried.get("token") for rpc, carried in self.cluster.carried if rpc == "Put"],
                         ["token-root-1"])
