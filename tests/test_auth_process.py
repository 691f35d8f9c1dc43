"""
Authentication on real twistd nodes over gRPC (127.0.0.1, ephemeral
ports; every process killed by the harness): users, roles and permissions
made with the client library, tokens checked by every member (the token key
is replicated), a wrong password, a deleted user's token and an expired
token refused with UNAUTHENTICATED, a request outside the user's
permissions with PERMISSION_DENIED, nothing changed by any of them, the
library renewing an expired token by itself; and, with client_cert_auth,
the client certificate's common name as the user.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
from twisted.trial.unittest import TestCase

from kvpaxos.client import Client, open_channel
from kvpaxos.client.errors import PermissionDenied, Unauthenticated
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.tls import grpc_channel_credentials
from kvpaxos.v1 import auth_pb2, auth_pb2_grpc, kv_pb2, kv_pb2_grpc
from tests.test_tls import Certificates, tls_settings

#: Seconds a token lasts on these nodes: short, so that expiry is seen.
TOKEN_TTL_S = 3


def set_up_users(admin: Client, root_password=None) -> None:
    """Root (with the root role), role rw (readwrite on app/...), alice with rw; then enable auth."""
    admin.user_add("root", root_password, no_password=root_password is None)
    admin.role_add("root")
    admin.user_grant_role("root", "root")
    admin.role_add("rw")
    admin.role_grant_permission("rw", "readwrite", "app/", prefix=True)
    if root_password is None:
        admin.user_add("alice", no_password=True)
    else:
        admin.user_add("alice", "alice-pw")
    admin.user_grant_role("alice", "rw")
    admin.auth_enable()


class TokenTests(TestCase):
    """Three nodes, auth by password and token."""

    def setUp(self) -> None:
        self.cluster = ProcessCluster(self.mktemp(), size=3, settings={"auth_token_ttl": TOKEN_TTL_S})
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.cluster.wait_for_leader(timeout_s=30)
        self.endpoints = [node.endpoint for node in self.cluster.nodes.values()]

    def client(self, endpoints=None, **kwargs) -> Client:
        client = Client(endpoints or self.endpoints, timeout_s=10, **kwargs)
        self.addCleanup(client.close)
        return client

    def stubs(self, node_id: int):
        channel = open_channel(self.cluster.nodes[node_id].endpoint)
        self.addCleanup(channel.close)
        return kv_pb2_grpc.KVStub(channel), auth_pb2_grpc.AuthStub(channel)

    def token(self, node_id: int, name: str, password: str) -> str:
        _, auth = self.stubs(node_id)
        return auth.Authenticate(auth_pb2.AuthenticateRequest(name=name, password=password), timeout=10).token

    def put_with(self, node_id: int, token: str, key: bytes, value: bytes):
        kv, _ = self.stubs(node_id)
        return kv.Put(kv_pb2.PutRequest(key=key, value=value), metadata=(("token", token),), timeout=10)

    def value(self, key: bytes):
        return self.client(user="root", password="root-pw").get(key)

    def test_tokens_passwords_and_permissions(self) -> None:
        set_up_users(self.client(), "root-pw")
        nobody = self.client(refresh_s=None)
        self.assertRaises(Unauthenticated, nobody.put, "app/x", "no user")
        self.assertRaises(Unauthenticated, nobody.get, "app/x")
        wrong = self.client(user="alice", password="not-hers")
        error = self.assertRaises(Unauthenticated, wrong.put, "app/x", "wrong password")
        self.assertIn("invalid user ID or password", str(error))

        alice = self.client([self.cluster.nodes[2].endpoint], user="alice", password="alice-pw", refresh_s=None)
        alice.put("app/x", "1")
        self.assertEqual(alice.get("app/x"), b"1")
        self.assertRaises(PermissionDenied, alice.put, "other", "outside her range")
        self.assertRaises(PermissionDenied, alice.get, "other")
        self.assertRaises(PermissionDenied, alice.user_list)
        self.assertEqual(self.value(b"other"), None)

        # A token from one member works on every other: the key is replicated.
        token = self.token(1, "alice", "alice-pw")
        self.put_with(3, token, b"app/y", b"from node 3")
        self.assertEqual(self.value(b"app/y"), b"from node 3")

        # It expires after the TTL (bounded wait), and the library renews its own.
        def expired():
            try:
                self.put_with(2, token, b"app/late", b"before expiry")
            except grpc.RpcError as error:
                return error.code() is grpc.StatusCode.UNAUTHENTICATED
            return False

        self.cluster.wait_for(expired, timeout_s=TOKEN_TTL_S * 5, what="the token to expire")
        alice.put("app/x", "2")
        self.assertEqual(self.value(b"app/x"), b"2")
        self.assertEqual(self.value(b"app/y"), b"from node 3")

    def test_a_deleted_users_token_and_a_changed_password(self) -> None:
        root = self.client(user="root", password="root-pw")
        set_up_users(self.client(), "root-pw")
        root.user_add("bob", "bob-pw")
        root.user_grant_role("bob", "rw")
        bob = self.token(1, "bob", "bob-pw")
        self.put_with(1, bob, b"app/b", b"1")
        root.user_delete("bob")
        with self.assertRaises(grpc.RpcError) as raised:
            self.put_with(2, bob, b"app/b", b"2")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(root.get("app/b"), b"1")

        alice_token = self.token(1, "alice", "alice-pw")
        root.user_change_password("alice", "new-pw")
        with self.assertRaises(grpc.RpcError) as raised:
            self.put_with(3, alice_token, b"app/a", b"old password")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.client(user="alice", password="new-pw").put("app/a", "new password")
        self.assertEqual(root.get("app/a"), b"new password")
        # Every node is still serving.
        self.assertEqual(sorted(self.cluster.running()), [1, 2, 3])

    def test_auth_disabled_again(self) -> None:
        set_up_users(self.client(), "root-pw")
        root = self.client(user="root", password="root-pw")
        self.assertEqual(root.auth_status()[0], True)
        root.auth_disable()
        anyone = self.client()
        anyone.put("other", "no auth")
        self.assertEqual(anyone.get("other"), b"no auth")
        self.assertEqual(anyone.auth_status()[0], False)

    def test_the_cli_with_a_user(self) -> None:
        set_up_users(self.client(), "root-pw")
        endpoint = self.cluster.nodes[1].endpoint

        def cli(*argv):
            return subprocess.run([sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", endpoint, *argv],
                                  capture_output=True, timeout=60, env=dict(os.environ, **self.cluster._env))

        done = cli("--user", "alice:alice-pw", "put", "app/cli", "v")
        self.assertEqual((done.returncode, done.stdout), (0, b"OK\n"), done.stderr)
        done = cli("--user", "alice:alice-pw", "get", "app/cli")
        self.assertEqual((done.returncode, done.stdout), (0, b"v\n"), done.stderr)
        done = cli("put", "app/cli", "no user")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"UNAUTHENTICATED", done.stderr)
        done = cli("--user", "alice:alice-pw", "put", "other", "v")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"permission denied", done.stderr)


class CertificateNameTests(TestCase):
    """One node with client_cert_auth: a certificate's common name is its user."""

    def test_common_name_is_the_user(self) -> None:
        certs, peers = Certificates(self.mktemp()), Certificates(self.mktemp())
        root_cert = certs.issue("root", hosts=(), server=False)
        cluster = ProcessCluster(self.mktemp(), size=1, node_settings={1: tls_settings(certs, peers, 1)},
                                 client_tls=(certs.path("ca.pem"), *root_cert))
        self.addCleanup(cluster.stop)
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        endpoint, ca = cluster.nodes[1].endpoint, certs.path("ca.pem")

        def client(name: str) -> Client:
            cert = certs.issue(name, hosts=(), server=False)
            made = Client([endpoint], timeout_s=10, cacert=ca, cert=cert[0], key=cert[1], refresh_s=None)
            self.addCleanup(made.close)
            return made

        root = client("root")
        set_up_users(root)  # users without passwords: by certificate only
        alice, mallory = client("alice"), client("mallory")
        alice.put("app/x", "by certificate")
        self.assertRaises(PermissionDenied, alice.put, "other", "x")
        self.assertRaises(Unauthenticated, mallory.put, "app/x", "no such user")
        self.assertEqual(root.get("app/x"), b"by certificate")
        self.assertEqual(root.user_list(), ["alice", "root"])
        # A password user cannot log in by password when it has none.
        channel = open_channel(endpoint, grpc_channel_credentials(ca, *root_cert))
        self.addCleanup(channel.close)
        with self.assertRaises(grpc.RpcError) as raised:
            auth_pb2_grpc.AuthStub(channel).Authenticate(auth_pb2.AuthenticateRequest(name="alice", password=""),
                                                         timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
