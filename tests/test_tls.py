"""
TLS on the client, admin and peer ports (issue 13, part 1): the files are
checked with clear errors, every listener refuses what it must (plaintext,
a certificate of another CA, an expired one, none when one is asked for)
and keeps serving, and certificates are re-read for new connections
without a restart.  Certificates are made here with the C{cryptography}
package (L{kvpaxos.devca}).
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import subprocess
import sys

import grpc
from cryptography import x509
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvpaxos import devca
from kvpaxos.client import open_channel
from kvpaxos.config import ConfigError, build
from kvpaxos.tap import Options
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.tls import TLSError, TLSFiles, grpc_channel_credentials, grpc_server_credentials
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

HOSTS = ("localhost", "127.0.0.1")


class Certificates:
    """A CA and certificates it issued, written as PEM files in C{directory}."""

    def __init__(self, directory: str) -> None:
        directory = os.path.abspath(directory)  # the nodes run elsewhere
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = devca.make_ca()
        devca.write(self.ca, self.path("ca.pem"), self.path("ca-key.pem"))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def issue(self, name: str, hosts=HOSTS, **kwargs) -> tuple[str, str]:
        """Write C{name}.pem and C{name}-key.pem; return their paths."""
        issued = devca.issue(self.ca, name, hosts, **kwargs)
        paths = self.path(f"{name}.pem"), self.path(f"{name}-key.pem")
        devca.write(issued, *paths)
        return paths


def serial_of(pem_path: str) -> int:
    with open(pem_path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


class TLSFilesTests(SynchronousTestCase):
    """Each bad file is refused with an error that names it and says what is wrong."""

    def setUp(self):
        self.certs = Certificates(self.mktemp())
        self.cert, self.key = self.certs.issue("node1")

    def test_good_files_load(self):
        loaded = TLSFiles(self.cert, self.key, self.certs.path("ca.pem")).load()
        self.assertIn(b"BEGIN CERTIFICATE", loaded.cert)
        self.assertIn(b"PRIVATE KEY", loaded.key)
        self.assertIn(b"BEGIN CERTIFICATE", loaded.ca)

    def test_missing_file(self):
        error = self.assertRaises(TLSError, TLSFiles(self.cert + ".gone", self.key).load)
        self.assertIn("cert_file", str(error))
        self.assertIn("cannot be read", str(error))

    def test_not_pem(self):
        with open(self.key, "w") as f:
            f.write("not a key\n")
        error = self.assertRaises(TLSError, TLSFiles(self.cert, self.key).load)
        self.assertIn("key_file", str(error))
        self.assertIn("not a PEM file", str(error))

    def test_key_of_another_certificate(self):
        _, other_key = self.certs.issue("node2")
        error = self.assertRaises(TLSError, TLSFiles(self.cert, other_key).load)
        self.assertIn("is not the key of cert_file", str(error))

    def test_expired_certificate(self):
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
        cert, key = self.certs.issue("old", start=past, days=1)
        error = self.assertRaises(TLSError, TLSFiles(cert, key).load)
        self.assertIn("expired on", str(error))

    def test_not_yet_valid(self):
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=10)
        cert, key = self.certs.issue("early", start=future)
        error = self.assertRaises(TLSError, TLSFiles(cert, key).load)
        self.assertIn("is not valid before", str(error))

    def test_ca_file_without_certificates(self):
        ca = self.certs.path("bad-ca.pem")
        with open(ca, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
        error = self.assertRaises(TLSError, TLSFiles(self.cert, self.key, ca).load)
        self.assertIn("trusted_ca_file", str(error))

    def test_client_certificates_need_a_ca(self):
        error = self.assertRaises(TLSError, grpc_server_credentials, TLSFiles(self.cert, self.key), True)
        self.assertIn("client_cert_auth needs trusted_ca_file", str(error))

    def test_admin_cli_with_a_bad_file(self):
        """An admin command with a --cacert that does not load says so and exits 2, before connecting."""
        import io

        from twisted.internet.testing import MemoryReactorClock

        from kvpaxos.client import cli

        out, err = io.BytesIO(), io.BytesIO()
        status = cli.main(["--cacert", self.certs.path("nope.pem"), "member", "list", "--admin", "127.0.0.1:1"],
                          stdout=out, stderr=err, admin_reactor=MemoryReactorClock())
        self.assertEqual(status, 2)
        self.assertIn(b"--cacert", err.getvalue())
        self.assertIn(b"cannot be read", err.getvalue())

    def test_client_side_names(self):
        """The client library's errors name its own flags."""
        error = self.assertRaises(TLSError, grpc_channel_credentials, self.certs.path("nope.pem"))
        self.assertIn("--cacert", str(error))
        error = self.assertRaises(TLSError, grpc_channel_credentials, None, self.cert, None)
        self.assertIn("--cert and --key go together", str(error))


class TLSConfigTests(SynchronousTestCase):
    """The TLS keys that go together, and the files read once at startup."""

    def test_pairs(self):
        for values, message in (
            ({"cert_file": "c"}, "cert_file and key_file go together"),
            ({"trusted_ca_file": "ca"}, "trusted_ca_file needs cert_file"),
            ({"cert_file": "c", "key_file": "k", "client_cert_auth": True}, "client_cert_auth needs trusted_ca_file"),
            ({"peer_cert_file": "c", "peer_key_file": "k"}, "go together"),
        ):
            error = self.assertRaises(ConfigError, build, values)
            self.assertIn(message, str(error))

    def test_keys(self):
        node = build({"cert_file": "c.pem", "key_file": "k.pem", "trusted_ca_file": "ca.pem",
                      "client_cert_auth": "true", "peer_cert_file": "p.pem", "peer_key_file": "pk.pem",
                      "peer_trusted_ca_file": "pca.pem"})
        self.assertEqual(node.client_tls, TLSFiles("c.pem", "k.pem", "ca.pem"))
        self.assertTrue(node.client_cert_auth)
        self.assertEqual(node.peer_tls.cert_file, "p.pem")
        self.assertEqual(node.peer_tls.names[0], "peer_cert_file")
        self.assertIsNone(build({}).client_tls)
        self.assertIsNone(build({}).peer_tls)

    def test_bad_file_is_a_usage_error(self):
        """twistd kvpaxos with a certificate that does not load stops before binding anything, naming the file."""
        certs = Certificates(self.mktemp())
        cert, key = certs.issue("node1")
        _, other_key = certs.issue("node2")
        options = Options()
        error = self.assertRaises(
            usage.UsageError, options.parseOptions,
            ["--peer-cert-file", cert, "--peer-key-file", other_key, "--peer-trusted-ca-file", certs.path("ca.pem")])
        self.assertIn("peer_key_file", str(error))
        self.assertIn("is not the key of", str(error))


class DevCATests(SynchronousTestCase):
    """kvpaxos-devca writes a CA, node certificates naming the local hosts and a client certificate."""

    def test_writes_a_working_set(self):
        directory = self.mktemp()
        out = self.capture(directory)
        self.assertEqual(out, 0)
        names = sorted(os.listdir(directory))
        self.assertEqual(names, sorted(["ca.pem", "ca-key.pem", "client.pem", "client-key.pem", "peer-ca.pem",
                                        "peer-ca-key.pem"] + [f"node{n}{part}.pem" for n in (1, 2) for part in
                                                              ("", "-key", "-peer", "-peer-key")]))
        # The peer CA signs member certificates only: the client's is not one.
        peer = TLSFiles(os.path.join(directory, "node1-peer.pem"), os.path.join(directory, "node1-peer-key.pem"),
                        os.path.join(directory, "peer-ca.pem"))
        peer.load()
        with open(os.path.join(directory, "client.pem"), "rb") as f, \
                open(os.path.join(directory, "peer-ca.pem"), "rb") as p:
            self.assertNotEqual(x509.load_pem_x509_certificate(f.read()).issuer,
                                x509.load_pem_x509_certificate(p.read()).subject)
        for key in ("ca-key.pem", "client-key.pem", "node1-key.pem"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, key)).st_mode), 0o600)
        # Every file loads, and the node certificate names 127.0.0.1.
        TLSFiles(os.path.join(directory, "node1.pem"), os.path.join(directory, "node1-key.pem"),
                 os.path.join(directory, "ca.pem")).load()
        with open(os.path.join(directory, "node1.pem"), "rb") as f:
            node = x509.load_pem_x509_certificate(f.read())
        sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("127.0.0.1", [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)])
        with open(os.path.join(directory, "client.pem"), "rb") as f:
            client = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value, "root")

    def test_refuses_to_overwrite(self):
        directory = self.mktemp()
        self.assertEqual(self.capture(directory), 0)
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            before = f.read()
        self.assertEqual(self.capture(directory), 1)
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self.capture(directory, "--force"), 0)

    def capture(self, directory, *more) -> int:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return devca.main([directory, "--nodes", "2", *more])


def tls_settings(certs: Certificates, peers: Certificates, node_id: int) -> dict:
    cert, key = certs.issue(f"node{node_id}")
    peer_cert, peer_key = peers.issue(f"node{node_id}-peer")
    return {
        "cert_file": cert, "key_file": key, "trusted_ca_file": certs.path("ca.pem"), "client_cert_auth": True,
        "peer_cert_file": peer_cert, "peer_key_file": peer_key, "peer_trusted_ca_file": peers.path("ca.pem"),
    }


def handshake(port: int, cafile: str, cert=None, key=None) -> bytes:
    """
    Connect to C{port} over TLS trusting C{cafile}, presenting C{cert} if
    given, and read what the server says to one byte: the server's alert
    ends the handshake (TLS 1.3 sends it after the client's Finished).

    @raise ssl.SSLError or ConnectionError: the server refused.
    """
    context = ssl.create_default_context(cafile=cafile)
    if cert is not None:
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.settimeout(5)
            tls.sendall(b"\x00")
            return tls.recv(1)


class TLSClusterTests(TestCase):
    """Three real twistd nodes with TLS on every port (127.0.0.1, ports picked at run time)."""

    def start(self, size=3, node_settings=None):
        self.certs = Certificates(self.mktemp())
        self.peers = Certificates(self.mktemp())
        client = self.certs.issue("root", hosts=(), server=False)
        settings = {i: tls_settings(self.certs, self.peers, i) for i in range(1, size + 1)}
        for node_id, more in (node_settings or {}).items():
            settings[node_id].update(more)
        cluster = ProcessCluster(self.mktemp(), size=size, node_settings=settings,
                                 client_tls=(self.certs.path("ca.pem"), *client))
        self.addCleanup(cluster.stop)
        cluster.start()
        self.cluster = cluster
        return cluster

    def channel(self, node, cacert=None, cert=None, key=None, plaintext=False):
        credentials = None if plaintext else grpc_channel_credentials(cacert, cert, key)
        channel = open_channel(node.endpoint, credentials)
        self.addCleanup(channel.close)
        return kv_pb2_grpc.KVStub(channel)

    def test_clients_with_certificates(self):
        """The harness's clients, the CLI and the admin port work over TLS with a client certificate."""
        cluster = self.start()
        leader = cluster.nodes[cluster.wait_for_leader(timeout_s=20)]
        leader.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        ca, (cert, key) = self.certs.path("ca.pem"), cluster.client_tls[1:]
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", "--endpoints", leader.endpoint, "--cacert", ca,
             "--cert", cert, "--key", key, "get", "k"], capture_output=True, timeout=60, env=cluster._env)
        self.assertEqual((done.returncode, done.stdout), (0, b"v\n"), done.stderr)
        status, members, stderr = cluster.admin(leader.id, "member", "list")
        self.assertEqual(status, 0, stderr)
        self.assertEqual(sorted(m["member_id"] for m in members["members"]), [1, 2, 3])

    def test_refused_clients_change_nothing(self):
        """
        Plaintext, no client certificate, one of another CA, an expired
        one, and a CA that did not sign the server's: each is refused
        (UNAVAILABLE: the handshake fails), writes nothing, and the node
        keeps serving.
        """
        cluster = self.start()
        leader = cluster.nodes[cluster.wait_for_leader(timeout_s=20)]
        leader.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"good"), timeout=5)
        ca = self.certs.path("ca.pem")
        other = Certificates(self.mktemp())
        stranger = other.issue("root", hosts=(), server=False)
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
        expired = self.certs.issue("expired", hosts=(), server=False, start=past, days=1)
        # An expired certificate is refused by the library before it is sent; the
        # server's refusal is what matters: build those credentials by hand.
        with open(expired[0], "rb") as c, open(expired[1], "rb") as k, open(ca, "rb") as r:
            expired_credentials = grpc.ssl_channel_credentials(r.read(), k.read(), c.read())
        stubs = {
            "plaintext": self.channel(leader, plaintext=True),
            "no certificate": self.channel(leader, ca),
            "another CA's certificate": self.channel(leader, ca, *stranger),
            "a CA that did not sign the server's": self.channel(leader, other.path("ca.pem"), *cluster.client_tls[1:]),
        }
        channel = grpc.secure_channel(leader.endpoint, expired_credentials)
        self.addCleanup(channel.close)
        stubs["an expired certificate"] = kv_pb2_grpc.KVStub(channel)
        for what, stub in stubs.items():
            with self.assertRaises(grpc.RpcError, msg=what) as raised:
                stub.Put(kv_pb2.PutRequest(key=b"k", value=b"bad"), timeout=3)
            self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE, what)
        self.assertEqual(leader.kv().Get(kv_pb2.GetRequest(key=b"k"), timeout=5).value, b"good")
        self.assertIsNone(leader.process.poll())

    def test_admin_port_refuses_plaintext_and_strangers(self):
        """
        The admin CLI without TLS flags gets a clear error from a TLS admin
        port; a client with no certificate, or another CA's, is refused;
        the port keeps serving.
        """
        cluster = self.start(size=1)
        node = cluster.nodes[1]
        cluster.wait_for_leader(timeout_s=20)
        other = Certificates(self.mktemp())
        for what, presented in (("no certificate", ()), ("another CA's", other.issue("root", hosts=(), server=False))):
            with self.assertRaises((ssl.SSLError, ConnectionError), msg=what):
                handshake(node.admin_port, self.certs.path("ca.pem"), *presented)
        done = subprocess.run(
            [sys.executable, "-m", "kvpaxos.client.cli", "--admin", f"127.0.0.1:{node.admin_port}", "member",
             "list"], capture_output=True, timeout=60, env=cluster._env)
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"127.0.0.1:%d" % node.admin_port, done.stderr)
        self.assertIn(b"TLS", done.stderr)
        status, members, stderr = cluster.admin(1, "member", "list")
        self.assertEqual(status, 0, stderr)

    def test_peer_links_refuse_unknown_and_plaintext_peers(self):
        """
        Node 3's peer certificate is another CA's: nodes 1 and 2 elect a
        leader and commit writes without it, node 3 never links or learns
        them.  A plaintext AMP box to a peer port is dropped, and the node
        keeps serving.
        """
        other = Certificates(self.mktemp())
        cert, key = other.issue("node3")
        cluster = self.start(node_settings={3: {"peer_cert_file": cert, "peer_key_file": key,
                                                "peer_trusted_ca_file": other.path("ca.pem")}})
        # Probes of node 1's peer port: no certificate, another CA's, and a
        # client's (the client CA is not the peer CA): each refused.
        client = cluster.client_tls[1:]
        for what, presented in (("no certificate", ()), ("another CA's", (cert, key)), ("a client's", client)):
            with self.assertRaises((ssl.SSLError, ConnectionError), msg=what):
                handshake(cluster.nodes[1].peer_port, self.peers.path("ca.pem"), *presented)
        leader = cluster.wait_for_leader(timeout_s=20, among=[1, 2])
        cluster.nodes[leader].kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        chosen = cluster.nodes[leader].status().chosen_index
        self.assertLess(cluster.nodes[3].status().applied_index, chosen)
        self.assertEqual(cluster.nodes[3].status().leader_id, 0)
        # Plaintext to a TLS peer port: an AMP box gets a TLS alert (content
        # type 0x15) or nothing, never an AMP answer or error box.
        with socket.create_connection(("127.0.0.1", cluster.nodes[1].peer_port), timeout=5) as raw:
            raw.sendall(b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x05Hello\x00\x00")
            raw.settimeout(5)
            try:
                answer = raw.recv(4096)
            except (ConnectionResetError, socket.timeout):
                answer = b""
        self.assertTrue(answer == b"" or answer[:1] == b"\x15", answer)
        cluster.nodes[leader].kv().Put(kv_pb2.PutRequest(key=b"k", value=b"w"), timeout=5)

    def test_certificates_reloaded_without_restart(self):
        """
        Replacing node 1's certificate (same CA) changes what new
        connections to its gRPC and admin ports are served, with no
        restart; a file replaced by garbage is logged and the last good
        certificate kept.
        """
        cluster = self.start(size=1)
        node = cluster.nodes[1]
        cluster.wait_for_leader(timeout_s=20)
        config = build_config(node.config_path)
        before = serial_of(config.cert_file)
        ports = (node.client_port, node.admin_port)
        self.assertEqual([self.served_serial(port) for port in ports], [before, before])
        fresh = devca.issue(self.certs.ca, "node1", HOSTS)
        devca.write(fresh, config.cert_file, config.key_file)
        after = fresh.certificate.serial_number
        self.assertNotEqual(after, before)
        # The AMP port loads the new files off its reactor, for the connections after.
        cluster.wait_for(lambda: [self.served_serial(port) for port in ports] == [after, after], 10,
                         "the new certificate served")
        node.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        with open(config.cert_file, "w") as f:
            f.write("garbage\n")
        self.assertEqual([self.served_serial(port) for port in ports], [after, after])
        cluster.wait_for(lambda: "TLS files changed but were not taken" in node.log(), 10, "the warning")

    def served_serial(self, port: int) -> int:
        ca, cert, key = self.cluster.client_tls
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        # Offering ALPN, as HTTP/2 clients do: the AMP ports go on without
        # it (Twisted's own callback failed such a handshake).
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number


def build_config(path: str):
    from kvpaxos.config import load_toml

    return build(load_toml(path))
