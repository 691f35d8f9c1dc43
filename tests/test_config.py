"""
Tests for node configuration (L{kvpaxos.config}) and the twistd options
(L{kvpaxos.tap.Options}): flags in the seed's style, TOML files, and clear
errors for every mistake.
"""

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.endpoints import BadEndpoint, parse_endpoint
from kvpaxos.api.server import GrpcServer
from kvpaxos.config import Address, ConfigError, NodeConfig, build, load_toml, parse_peers
from kvpaxos.tap import Options


class BuildTests(SynchronousTestCase):
    """build() turns flag values into a checked NodeConfig."""

    def test_defaults(self):
        """No values give a one-node cluster on loopback with data in ./kvpaxos-data."""
        config = build({})
        self.assertEqual(config, NodeConfig())
        self.assertEqual(config.voters, frozenset({1}))
        self.assertEqual(config.client, Address("127.0.0.1", 2379))
        self.assertEqual(config.data, "kvpaxos-data")

    def test_seed_style_flags(self):
        """The seed's --id/--addr/--peers form is understood; ':port' means every interface."""
        config = build({"id": "1", "addr": ":5001", "peers": "2=localhost:5002,3=localhost:5003"})
        self.assertEqual(config.node_id, 1)
        self.assertEqual(config.peer, Address("0.0.0.0", 5001))
        self.assertEqual(
            config.peers, {2: Address("localhost", 5002), 3: Address("localhost", 5003)}
        )
        self.assertEqual(config.voters, frozenset({1, 2, 3}))

    def test_bad_values(self):
        """Each malformed value raises ConfigError naming what is wrong."""
        cases = {
            "id": ({"id": "zero"}, "id must be a positive integer"),
            "negative id": ({"id": "-3"}, "id must be a positive integer"),
            "address": ({"addr": "nowhere"}, "addr must be host:port"),
            "port": ({"client": "h:99999"}, "port must be 0..65535"),
            "peer form": ({"peers": "2:h:1"}, "must be ID=host:port"),
            "peer twice": ({"peers": "2=h:1,2=h:2"}, "given twice"),
            "self peer": ({"id": "2", "peers": "2=h:1"}, "lists itself"),
            "same ports": ({"client": "127.0.0.1:2380"}, "must be different"),
            "ticks": ({"election_ticks": 1}, "election_ticks"),
        }
        for name, (values, message) in cases.items():
            error = self.assertRaises(ConfigError, build, values)
            self.assertIn(message, str(error), name)

    def test_ipv6_addresses(self):
        """An IPv6 host in brackets is accepted by the config and serves the gRPC edge as it is (one parser for both)."""
        config = build({"client": "[::1]:2379", "addr": "[::1]:2380", "peers": "2=[::1]:22380"})
        self.assertEqual((config.client, config.peer, config.peers[2]),
                         (Address("::1", 2379), Address("::1", 2380), Address("::1", 22380)))
        self.assertEqual(str(config.client), "[::1]:2379")
        self.assertEqual(parse_endpoint(str(config.client)), "[::1]:2379")
        self.assertEqual(GrpcServer(None, str(config.client), None).address, "[::1]:2379")

    def test_addresses_refused_alike(self):
        """An address the gRPC edge would refuse is refused by the config, before any store is opened."""
        for text in ("::1:2379", "[x]:1", "h:99999", "nowhere", "h:port"):
            self.assertRaises(BadEndpoint, parse_endpoint, text)
            error = self.assertRaises(ConfigError, build, {"client": text})
            self.assertIn(repr(text), str(error))

    def test_lease_reads(self):
        """lease_reads is a boolean, off by default, and its drift must fit in the election timeout."""
        self.assertFalse(build({}).lease_reads)
        self.assertTrue(build({"lease_reads": True}).lease_reads)
        self.assertTrue(build({"lease_reads": "yes"}).lease_reads)
        self.assertIn("true or false", str(self.assertRaises(ConfigError, build, {"lease_reads": 3})))
        error = self.assertRaises(ConfigError, build, {"lease_drift_ticks": 10})
        self.assertIn("lease_drift_ticks", str(error))
        # Tick quantisation alone costs one tick: 0 is refused (issue 9, hole 6).
        error = self.assertRaises(ConfigError, build, {"lease_drift_ticks": 0})
        self.assertIn("1 <= lease_drift_ticks", str(error))
        self.assertEqual(build({"lease_drift_ticks": 1}).lease_drift_ticks, 1)

    def test_snapshot_interval(self):
        """snapshot_interval is 10,000 slots by default, settable, and at least 1."""
        self.assertEqual(build({}).snapshot_interval, 10_000)
        self.assertEqual(build({"snapshot_interval": 50}).snapshot_interval, 50)
        error = self.assertRaises(ConfigError, build, {"snapshot_interval": 0})
        self.assertIn("snapshot_interval", str(error))
        error = self.assertRaises(ConfigError, build, {"snapshot_interval": "often"})
        self.assertIn("snapshot_interval must be an integer", str(error))

    def test_cluster_token(self):
        """cluster_token is "kvpaxos" by default, settable, and a non-empty string."""
        self.assertEqual(build({}).cluster_token, "kvpaxos")
        self.assertEqual(build({"cluster_token": "blue"}).cluster_token, "blue")
        for bad in ("", 7):
            error = self.assertRaises(ConfigError, build, {"cluster_token": bad})
            self.assertIn("cluster_token must be a non-empty string", str(error))
        error = self.assertRaises(ConfigError, build, {"cluster_token": "\udcff"})
        self.assertIn("cluster_token must be valid text", str(error))

    def test_cluster_id(self):
        """The cluster id is a u64 fixed by the token and the sorted initial voters, whoever computes it."""
        three = {"peers": "2=h:2,3=h:3"}
        one = build(dict(three, id="1"))
        self.assertEqual(one.cluster_id, build({"id": "3", "peers": "2=h:2,1=h:1"}).cluster_id)
        # sha256(b"kvpaxos\x00" + u32be(1, 2, 3))[:8], pinned: a change would split running clusters.
        self.assertEqual(one.cluster_id, 0xD8774361EEFB01E6)
        self.assertTrue(0 <= one.cluster_id < 2**64)
        others = {
            build(dict(three, id="1", cluster_token="other")).cluster_id,
            build({"id": "1", "peers": "2=h:2,4=h:4"}).cluster_id,
            build({"id": "1", "peers": "2=h:2"}).cluster_id,
            one.cluster_id,
        }
        self.assertEqual(len(others), 4)

    def test_parse_peers_empty(self):
        """An empty --peers means no peers."""
        self.assertEqual(parse_peers(""), {})


class TomlTests(SynchronousTestCase):
    """--config FILE.toml holds the same keys as the flags."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_sample_config(self):
        """The shipped etc/kvpaxos/node2.toml describes node 2 of a 3-node cluster."""
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = build(load_toml(os.path.join(root, "etc", "kvpaxos", "node2.toml")))
        self.assertEqual(config.node_id, 2)
        self.assertEqual(config.voters, frozenset({1, 2, 3}))
        self.assertEqual(config.client, Address("127.0.0.1", 22379))

    def test_sample_configs_one_cluster(self):
        """The three shipped node configs name one cluster: the same token, the same cluster id."""
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        configs = [
            build(load_toml(os.path.join(root, "etc", "kvpaxos", f"node{n}.toml")))
            for n in (1, 2, 3)
        ]
        self.assertEqual({c.cluster_token for c in configs}, {"kvpaxos-local"})
        self.assertEqual(len({c.cluster_id for c in configs}), 1)
        self.assertEqual(len({c.node_id for c in configs}), 3)

    def test_unknown_key(self):
        """An unknown key is an error, not silently ignored."""
        error = self.assertRaises(ConfigError, load_toml, self.write('id = 1\ncolour = "red"\n'))
        self.assertIn("unknown keys colour", str(error))

    def test_not_toml(self):
        """A file that is not TOML is reported as such."""
        error = self.assertRaises(ConfigError, load_toml, self.write("id = = 1\n"))
        self.assertIn("not valid TOML", str(error))

    def test_missing_file(self):
        """A missing file is reported with its path."""
        error = self.assertRaises(ConfigError, load_toml, "/nonexistent/kvpaxos.toml")
        self.assertIn("/nonexistent/kvpaxos.toml", str(error))


    def test_auth_token_ttl(self):
        """auth_token_ttl: 300 s by default (etcd's), from 1 s to a day, an integer."""
        self.assertEqual(NodeConfig().auth_token_ttl, 300)
        self.assertEqual(build({"auth_token_ttl": "60"}).auth_token_ttl, 60)
        for bad, message in (("0", "from 1 to 86400"), ("86401", "from 1 to 86400"), ("soon", "must be an integer")):
            error = self.assertRaises(ConfigError, build, {"auth_token_ttl": bad})
            self.assertIn(message, str(error))


class OptionsTests(SynchronousTestCase):
    """twistd kvpaxos options give UsageError, never a traceback, on bad input."""

    def test_auth_token_ttl_flag(self):
        """--auth-token-ttl sets it; the TOML key too."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("auth_token_ttl = 30\n")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.node.auth_token_ttl, 30)
        options = Options()
        options.parseOptions(["--auth-token-ttl=45"])
        self.assertEqual(options.node.auth_token_ttl, 45)
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--auth-token-ttl=-1"])

    def test_no_arguments(self):
        """With no arguments the options describe the default one-node cluster."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.node, NodeConfig())

    def test_flags_override_file(self):
        """A flag given with --config overrides the file's value."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('id = 4\nclient = "127.0.0.1:4000"\n')
        options = Options()
        options.parseOptions(["--config", path, "--client=127.0.0.1:4001"])
        self.assertEqual(options.node.node_id, 4)
        self.assertEqual(options.node.client, Address("127.0.0.1", 4001))

    def test_metrics_addr(self):
        """metrics_addr (and --metrics-addr) turns the HTTP metrics on; off by default; a bad one is a UsageError."""
        self.assertIsNone(NodeConfig().metrics)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('metrics_addr = "127.0.0.1:9100"\n')
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.node.metrics, Address("127.0.0.1", 9100))
        options = Options()
        options.parseOptions(["--config", path, "--metrics-addr=127.0.0.1:9101"])
        self.assertEqual(options.node.metrics, Address("127.0.0.1", 9101))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--metrics-addr=nope"])
        self.assertIn("metrics_addr must be host:port", str(error))

    def test_etcd_addr(self):
        """etcd_addr (and --etcd-addr) serves etcd's API there; off by default; bad or taken ones are refused."""
        self.assertIsNone(NodeConfig().etcd)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('etcd_addr = "127.0.0.1:2479"\n')
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.node.etcd, Address("127.0.0.1", 2479))
        options = Options()
        options.parseOptions(["--config", path, "--etcd-addr=:2579"])
        self.assertEqual(options.node.etcd, Address("0.0.0.0", 2579))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--etcd-addr=nope"])
        self.assertIn("etcd_addr must be host:port", str(error))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--etcd-addr=127.0.0.1:2379"])
        self.assertIn("must be different addresses", str(error))

    def test_cluster_token_flag(self):
        """--cluster-token sets cluster_token and overrides the file's."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('cluster_token = "from-file"\n')
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.node.cluster_token, "from-file")
        options = Options()
        options.parseOptions(["--config", path, "--cluster-token=from-flag"])
        self.assertEqual(options.node.cluster_token, "from-flag")

    def test_bad_flag_is_usage_error(self):
        """A bad value is a UsageError carrying the ConfigError's sentence."""
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--id=abc"])
        self.assertIn("id must be a positive integer", str(error))

    def test_unknown_storage(self):
        """An unknown storage provider is a UsageError listing the installed ones."""
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--storage=floppy"])
        self.assertIn("unknown storage 'floppy'", str(error))
        self.assertIn("lmdb", str(error))


class MembershipKeysTests(SynchronousTestCase):
    """Issue 11's keys: join, auto_promote, auto_promote_beats, promote_lag_slots."""

    def test_defaults(self):
        """Without them a node seeds (or restarts) a cluster and never promotes on its own."""
        config = build({})
        self.assertEqual(
            (config.join, config.auto_promote, config.auto_promote_beats, config.promote_lag_slots),
            ((), False, 10, 1000),
        )

    def test_join_flag(self):
        """--join takes client addresses, comma separated, and makes the seed member set empty."""
        config = build({"join": "10.0.0.1:2379, [::1]:2379,10.0.0.1:2379"})
        self.assertEqual(config.join, ("10.0.0.1:2379", "[::1]:2379"))
        self.assertEqual(config.seed_config().voters, frozenset())
        self.assertEqual(build({}).seed_config().voters, frozenset({1}))

    def test_join_toml_list(self):
        """In TOML, join is a list of addresses (or the flag's string)."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('join = ["10.0.0.1:2379", "10.0.0.2:2379"]\nauto_promote = true\n'
                    'auto_promote_beats = 5\npromote_lag_slots = 50\n')
        config = build(load_toml(path))
        self.assertEqual(config.join, ("10.0.0.1:2379", "10.0.0.2:2379"))
        self.assertEqual((config.auto_promote, config.auto_promote_beats, config.promote_lag_slots),
                         (True, 5, 50))

    def test_join_errors(self):
        """Malformed join addresses, wildcard ones, an empty list, or join with peers are refused."""
        for value, text in (("nohost", "host:port"), ("h:1,", "host:port"), ([], "at least one"),
                            ("0.0.0.0:2379", "must name"), (":2379", "must name"),
                            ("h:99999", "port"), (5, "host:port"), ([1], "host:port")):
            error = self.assertRaises(ConfigError, build, {"join": value})
            self.assertIn(text, str(error))
        error = self.assertRaises(ConfigError, build, {"join": "h:1", "peers": "2=h:2"})
        self.assertIn("exclude each other", str(error))
        error = self.assertRaises(ConfigError, build, {"join": "h:1", "addr": ":2380"})
        self.assertIn("members can reach", str(error))

    def test_promotion_keys_errors(self):
        """auto_promote is a boolean; the counts are integers in range."""
        self.assertTrue(build({"auto_promote": "yes"}).auto_promote)
        for values, text in (({"auto_promote": 3}, "true or false"),
                             ({"auto_promote_beats": 0}, "at least 1"),
                             ({"auto_promote_beats": "x"}, "integer"),
                             ({"promote_lag_slots": -1}, "not be negative")):
            self.assertIn(text, str(self.assertRaises(ConfigError, build, values)))

    def test_flags(self):
        """Each key is a flag too."""
        options = Options()
        options.parseOptions(["--join=10.0.0.1:2379", "--auto-promote=true",
                              "--auto-promote-beats=3", "--promote-lag-slots=7"])
        node = options.node
        self.assertEqual((node.join, node.auto_promote, node.auto_promote_beats, node.promote_lag_slots),
                         (("10.0.0.1:2379",), True, 3, 7))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--join=nope"])
        self.assertIn("host:port", str(error))
