"""
A node's configuration: what the command-line flags or a TOML file say,
checked and turned into a L{NodeConfig}.

Flags follow the seed project (C{--id=1 --addr=:5001
--peers=2=localhost:5002,3=localhost:5003}); a TOML file (C{--config}) holds
the same keys::

    id = 1
    addr = "127.0.0.1:2380"          # peer (AMP) address
    client = "127.0.0.1:2379"        # gRPC address
    admin = "127.0.0.1:2381"         # AMP admin address
    etcd_addr = "127.0.0.1:2479"     # etcd's v3 gRPC API (--etcd-addr; off by default)
    data = "/var/lib/kvpaxos/1"
    storage = "lmdb"
    cluster_token = "kvpaxos"        # the same on every member (--cluster-token)
    join = ["10.0.0.1:2379"]         # or "h:p,h:p": client addresses of members (--join)
    auto_promote = false             # the leader promotes a caught-up learner
    auto_promote_beats = 10          # ... once it stayed caught up this many heartbeats
    promote_lag_slots = 1000         # a learner this close to the leader is caught up
    cert_file = "node1.pem"          # TLS on the gRPC and admin ports (--cert-file) ...
    key_file = "node1-key.pem"       # ... and its key (--key-file)
    trusted_ca_file = "ca.pem"       # the CA of clients' certificates (--trusted-ca-file)
    client_cert_auth = true          # clients must present one (--client-cert-auth)
    auth_token_ttl = 300             # seconds an Authenticate token lasts (--auth-token-ttl)
    history_revisions = 10000        # revisions of history kept for watchers (0: no count limit)
    history_age = 0                  # seconds of history kept (0: no age limit; with both, the less)
    peer_cert_file = "node1.pem"     # mutual TLS on the peer links: all three
    peer_key_file = "node1-key.pem"
    peer_trusted_ca_file = "ca.pem"
    [peers]
    2 = "127.0.0.1:22380"
    3 = "127.0.0.1:32380"

The cluster id (L{NodeConfig.cluster_id}) is derived from C{cluster_token}
and the initial members, as etcd derives its cluster ID from
C{--initial-cluster-token} and the initial cluster: every peer link starts
by comparing it, so a node started with another token or another seed set
is refused by this cluster's members.

C{join} (issue 11) makes a node with an empty data directory join an
existing cluster instead of seeding one: its seed member set is empty, so
it neither takes C{peers} (refused together) nor counts itself a voter;
its peer and client addresses must be ones the members can reach.

Every mistake raises L{ConfigError} with a sentence saying what is wrong;
nothing here touches the network or the disk.
"""

from __future__ import annotations

import hashlib
import struct
import tomllib
from dataclasses import dataclass, field, replace
from typing import Optional

from kvpaxos.api.endpoints import BadEndpoint, join_host_port, split_host_port

DEFAULT_CLIENT = "127.0.0.1:2379"
DEFAULT_PEER = "127.0.0.1:2380"
DEFAULT_ADMIN = "127.0.0.1:2381"
DEFAULT_DATA = "kvpaxos-data"
DEFAULT_CLUSTER_TOKEN = "kvpaxos"
#: etcd's --quota-backend-bytes ceiling: 8 GiB.
DEFAULT_QUOTA_BYTES = 8 << 30
#: etcd's --auth-token-ttl default, in seconds; and the longest taken (a day).
DEFAULT_AUTH_TOKEN_TTL = 300
MAX_AUTH_TOKEN_TTL = 86400
#: Revisions of history kept by default (kvpaxos.node.compactor's).
DEFAULT_HISTORY_REVISIONS = 10_000

#: Keys a TOML file may hold.
_TOML_KEYS = {
    "id", "addr", "client", "admin", "etcd_addr", "data", "storage", "peers",
    "tick_ms", "election_ticks", "heartbeat_ticks", "lease_reads", "lease_drift_ticks",
    "snapshot_interval", "cluster_token",
    "join", "auto_promote", "auto_promote_beats", "promote_lag_slots", "metrics_addr", "log_format",
    "quota_bytes", "auth_token_ttl", "history_revisions", "history_age", "peer_connections_max", "peer_buffer_bytes", "admin_connections_max", "admin_buffer_bytes",
    *("cert_file", "key_file", "trusted_ca_file", "client_cert_auth",
                     "peer_cert_file", "peer_key_file", "peer_trusted_ca_file"),
}

#: The TLS file keys (issue 13, part 1), etcd's names with underscores.
_TLS_FILE_KEYS = ("cert_file", "key_file", "trusted_ca_file", "peer_cert_file", "peer_key_file",
                  "peer_trusted_ca_file")


class ConfigError(ValueError):
    """The configuration is wrong (the operator's fault)."""


@dataclass(frozen=True)
class Address:
    """
    A host (an IPv6 one without brackets) and a TCP port; an empty host
    in C{:5001} means every interface.  C{str()} is C{host:port} with an
    IPv6 host in brackets, as gRPC and L{parse_address} take it.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start."""

    node_id: int = 1
    peer: Address = Address("127.0.0.1", 2380)
    client: Address = Address("127.0.0.1", 2379)
    admin: Address = Address("127.0.0.1", 2381)
    data: str = DEFAULT_DATA
    storage: str = "lmdb"
    peers: dict = field(default_factory=dict)
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    #: Lease reads: opt-in for the whole cluster (set it on every node).
    lease_reads: bool = False
    lease_drift_ticks: int = 2
    #: Applied slots between log compactions (etcd's --snapshot-count).
    snapshot_interval: int = 10_000
    #: Names one cluster among others with the same member ids (etcd's
    #: --initial-cluster-token): the same on every member.
    cluster_token: str = DEFAULT_CLUSTER_TOKEN
    #: Client addresses of existing members to join through (C{--join});
    #: empty: seed a new cluster (or restart from the store).
    join: tuple = ()
    #: The leader promotes a learner that stayed within promote_lag_slots
    #: of its chosen index for auto_promote_beats heartbeats.
    auto_promote: bool = False
    auto_promote_beats: int = 10
    #: A learner within this many slots of the leader's chosen index is
    #: caught up (MemberPromote is refused otherwise).
    promote_lag_slots: int = 1000
    #: Where /metrics and /health are served over HTTP (None: off).
    metrics: Optional[Address] = None
    #: Where etcd's v3 gRPC API is served (None: off), with the client
    #: port's TLS (kvpaxos.api.etcd).
    etcd: Optional[Address] = None
    #: "text" (twistd's), or "json": one JSON object per line (kvpaxos.logs).
    log_format: str = "text"
    #: The space quota in bytes of store pages in use (0: none): past it,
    #: writes that would grow the store are refused (RESOURCE_EXHAUSTED).
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    #: Seconds a token from Auth.Authenticate lasts (etcd's --auth-token-ttl).
    auth_token_ttl: int = DEFAULT_AUTH_TOKEN_TTL
    #: The history of writes kept for watchers (issue 14): the last this
    #: many revisions and the last this many seconds (0: no such limit);
    #: the leader compacts the rest (kvpaxos.node.compactor).
    history_revisions: int = DEFAULT_HISTORY_REVISIONS
    history_age: int = 0
    #: Make this member the only one of a new cluster, with its data, before
    #: it starts (etcd's --force-new-cluster; kvpaxos.node.recovery).
    force_new_cluster: bool = False
    #: Limits against floods (issue 13, part 6): connections open at once on
    #: the peer and admin ports, and the bytes one connection may buffer (a
    #: peer's partial messages; one admin box).
    peer_connections_max: int = 64
    peer_buffer_bytes: int = 16 * 1024 * 1024
    admin_connections_max: int = 64
    admin_buffer_bytes: int = 64 * 1024
    #: TLS on the client (gRPC) and admin ports: this node's certificate and
    #: key, the CA that signs its clients' certificates, and whether a
    #: client must present one (etcd's --cert-file, --key-file,
    #: --trusted-ca-file, --client-cert-auth).  None: plaintext.
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    trusted_ca_file: Optional[str] = None
    client_cert_auth: bool = False
    #: Mutual TLS on the peer links, both ways (etcd's --peer-cert-file,
    #: --peer-key-file, --peer-trusted-ca-file): all three or none.
    peer_cert_file: Optional[str] = None
    peer_key_file: Optional[str] = None
    peer_trusted_ca_file: Optional[str] = None

    @property
    def client_tls(self):
        """The L{kvpaxos.tls.TLSFiles} of the client and admin ports, or None (plaintext)."""
        from kvpaxos.tls import TLSFiles

        if self.cert_file is None:
            return None
        return TLSFiles(self.cert_file, self.key_file, self.trusted_ca_file)

    @property
    def peer_tls(self):
        """The L{kvpaxos.tls.TLSFiles} of the peer links, or None (plaintext)."""
        from kvpaxos.tls import TLSFiles

        if self.peer_cert_file is None:
            return None
        return TLSFiles(self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file,
                        names=("peer_cert_file", "peer_key_file", "peer_trusted_ca_file"))

    @property
    def voters(self) -> frozenset:
        """The initial member set: this node and its peers."""
        return frozenset(self.peers) | {self.node_id}

    @property
    def cluster_id(self) -> int:
        """
        This cluster's id, a u64 the same on every member: the first 8
        bytes, big-endian, of SHA-256 over the UTF-8 C{cluster_token}, a
        zero byte, and each initial voter id as a big-endian u32 in
        ascending order.  Peer links refuse a node whose id differs.
        """
        digest = hashlib.sha256()
        digest.update(self.cluster_token.encode("utf-8") + b"\0")
        for voter in sorted(self.voters):
            digest.update(struct.pack(">I", voter))
        return int.from_bytes(digest.digest()[:8], "big")


    def seed_config(self):
        """
        The member set a new cluster starts from (a store that already has
        one keeps its own): the voters, the peer address of each and this
        node's client address (the others' are learned when they report
        them), and the cluster id.
        """
        from kvpaxos.paxos.config import Config, MemberAddress

        if self.join:
            return Config(frozenset())  # learned from the cluster (kvpaxos.node.joining)
        addresses = {peer: MemberAddress(str(a)) for peer, a in self.peers.items()}
        addresses[self.node_id] = MemberAddress(str(self.peer), str(self.client))
        return Config(self.voters).with_addresses(addresses).with_cluster_id(self.cluster_id)


def parse_address(text: str, what: str) -> Address:
    """
    Parse C{host:port} with the API's one parser
    (L{kvpaxos.api.endpoints.split_host_port}, which the gRPC server and
    the client use too): C{:port} means every interface (C{0.0.0.0}), an
    IPv6 host is written in brackets (C{[::1]:2379}).

    @raise ConfigError: not an address.
    """
    try:
        host, port = split_host_port(text)
    except BadEndpoint as error:
        raise ConfigError(f"{what} must be host:port: {error}") from None
    return Address(host or "0.0.0.0", port)


def parse_node_id(value, what: str = "id") -> int:
    """Parse a positive node id."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0 or number >= 2**31:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return number


def parse_peers(text: str) -> dict:
    """
    Parse C{2=host:port,3=host:port} into {2: Address, 3: Address}.

    @raise ConfigError: a malformed entry or a repeated id.
    """
    peers: dict = {}
    if not text:
        return peers
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node, sep, addr = item.partition("=")
        if not sep:
            raise ConfigError(f"peer {item!r} must be ID=host:port")
        node_id = parse_node_id(node, f"peer id in {item!r}")
        if node_id in peers:
            raise ConfigError(f"peer {node_id} is given twice")
        peers[node_id] = parse_address(addr, f"address of peer {node_id}")
    return peers


def parse_join(value) -> tuple:
    """
    Parse C{join}: C{host:port,host:port} (a flag) or a list of
    C{host:port} (TOML) into a tuple of C{host:port} strings.

    @raise ConfigError: an entry is no address, names every interface, or
        the list is empty.
    """
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"join must be host:port[,host:port...], got {value!r}")
    addresses = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"join must be host:port[,host:port...], got {value!r}")
        address = parse_address(item, f"join address {item!r}")
        if address.host in ("0.0.0.0", "::") or address.port == 0:
            raise ConfigError(f"join address {item!r} must name a member's host and port")
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise ConfigError("join needs at least one host:port")
    return tuple(addresses)


def parse_bool(value, key: str) -> bool:
    """Parse a boolean flag or TOML value."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        value = value.lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def load_toml(path: str) -> dict:
    """Read a TOML configuration file into flag-style values."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    unknown = sorted(set(table) - _TOML_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}")
    values = dict(table)
    peers = values.get("peers")
    if peers is not None:
        if not isinstance(peers, dict):
            raise ConfigError(f"{path}: [peers] must be a table of ID = \"host:port\"")
        values["peers"] = ",".join(f"{k}={v}" for k, v in peers.items())
    return values


def build(values: dict) -> NodeConfig:
    """
    Turn flag-style C{values} (strings or TOML scalars; missing keys take
    defaults) into a checked L{NodeConfig}.
    """
    config = NodeConfig()
    changes = {}
    if values.get("id") is not None:
        changes["node_id"] = parse_node_id(values["id"])
    for key, attribute in (("addr", "peer"), ("client", "client"), ("admin", "admin")):
        if values.get(key) is not None:
            changes[attribute] = parse_address(values[key], key)
    if values.get("data") is not None:
        if not isinstance(values["data"], str) or not values["data"]:
            raise ConfigError("data must be a directory path")
        changes["data"] = values["data"]
    if values.get("storage") is not None:
        changes["storage"] = str(values["storage"])
    if values.get("cluster_token") is not None:
        token = values["cluster_token"]
        if not isinstance(token, str) or not token:
            raise ConfigError(f"cluster_token must be a non-empty string, got {token!r}")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"cluster_token must be valid text, got {token!r}") from None
        changes["cluster_token"] = token
    if values.get("peers") is not None:
        changes["peers"] = parse_peers(values["peers"])
    for key in _TLS_FILE_KEYS:
        if values.get(key) not in (None, ""):
            if not isinstance(values[key], str):
                raise ConfigError(f"{key} must be a file path, got {values[key]!r}")
            changes[key] = values[key]
    for key in ("lease_reads", "auto_promote", "client_cert_auth", "force_new_cluster"):
        # force_new_cluster: the flag's only (no TOML key): a key left in a file would force again at every start.
        if values.get(key) is not None:
            changes[key] = parse_bool(values[key], key)
    if values.get("join") is not None:
        changes["join"] = parse_join(values["join"])
    if values.get("metrics_addr") not in (None, ""):
        changes["metrics"] = parse_address(values["metrics_addr"], "metrics_addr")
    if values.get("etcd_addr") not in (None, ""):
        changes["etcd"] = parse_address(values["etcd_addr"], "etcd_addr")
    if values.get("log_format") is not None:
        if values["log_format"] not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {values['log_format']!r}")
        changes["log_format"] = values["log_format"]
    for key in ("tick_ms", "election_ticks", "heartbeat_ticks", "lease_drift_ticks",
                "snapshot_interval", "auto_promote_beats", "promote_lag_slots", "quota_bytes",
                "auth_token_ttl", "history_revisions", "history_age", "peer_connections_max", "peer_buffer_bytes", "admin_connections_max", "admin_buffer_bytes"):
        if values.get(key) is not None:
            try:
                changes[key] = int(values[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be an integer") from None
    config = replace(config, **changes)
    if config.node_id in config.peers:
        raise ConfigError(f"node {config.node_id} lists itself among its peers")
    if config.tick_ms <= 0:
        raise ConfigError("tick_ms must be positive")
    if config.election_ticks < 2 or not 1 <= config.heartbeat_ticks < config.election_ticks:
        raise ConfigError("need election_ticks >= 2 and 1 <= heartbeat_ticks < election_ticks")
    if not 1 <= config.lease_drift_ticks < config.election_ticks:
        # One tick at least: tick quantisation alone costs one (see
        # kvpaxos.paxos.replica.Options).
        raise ConfigError(
            "need 1 <= lease_drift_ticks < election_ticks (one tick covers tick"
            " quantisation; each more covers clock drift)"
        )
    if config.snapshot_interval < 1:
        raise ConfigError("snapshot_interval must be at least 1")
    if config.auto_promote_beats < 1:
        raise ConfigError("auto_promote_beats must be at least 1")
    if config.promote_lag_slots < 0:
        raise ConfigError("promote_lag_slots must not be negative")
    if config.quota_bytes != 0 and config.quota_bytes < (1 << 20):
        raise ConfigError(f"quota_bytes must be 0 (no quota) or at least 1 MiB ({1 << 20}), got {config.quota_bytes}")
    if config.history_revisions < 0 or config.history_age < 0:
        raise ConfigError("history_revisions and history_age must not be negative (0: no such limit)")
    if not 1 <= config.auth_token_ttl <= MAX_AUTH_TOKEN_TTL:
        raise ConfigError(f"auth_token_ttl must be from 1 to {MAX_AUTH_TOKEN_TTL} seconds, got {config.auth_token_ttl}")
    if config.join:
        if config.peers:
            raise ConfigError(
                "join and peers exclude each other: peers seed a new cluster,"
                " join adds this node to an existing one"
            )
        for key, address in (("addr", config.peer), ("client", config.client)):
            if address.host in ("0.0.0.0", "::") or address.port == 0:
                raise ConfigError(
                    f"with join, {key} must be an address the members can reach, not {address}"
                )
    _check_limits(config)
    _check_tls(config)
    ports = [(a.host, a.port) for a in (config.peer, config.client, config.admin, config.etcd)
             if a is not None and a.port]
    if len(set(ports)) != len(ports):
        raise ConfigError("addr, client, admin and etcd_addr must be different addresses")
    return config


def _check_tls(config: NodeConfig) -> None:
    """The TLS keys that go together (the files themselves are read at startup)."""
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError("cert_file and key_file go together: give both or neither")
    if config.trusted_ca_file is not None and config.cert_file is None:
        raise ConfigError("trusted_ca_file needs cert_file and key_file: the ports it guards serve TLS")
    if config.client_cert_auth and config.trusted_ca_file is None:
        raise ConfigError("client_cert_auth needs trusted_ca_file, the CA that signs the clients' certificates")
    peer = (config.peer_cert_file, config.peer_key_file, config.peer_trusted_ca_file)
    if any(p is not None for p in peer) and not all(p is not None for p in peer):
        raise ConfigError(
            "peer_cert_file, peer_key_file and peer_trusted_ca_file go together: peer links are"
            " mutual TLS, each side presenting its certificate and checking the other's"
        )


def _check_limits(config: NodeConfig) -> None:
    """The flood limits: enough for the cluster's own traffic."""
    from kvpaxos.node.peer_commands import PEER_BUFFER_BYTES_MIN

    for key in ("peer_connections_max", "admin_connections_max"):
        if getattr(config, key) < 4:
            raise ConfigError(f"{key} must be at least 4, got {getattr(config, key)}")
    if config.peer_buffer_bytes < PEER_BUFFER_BYTES_MIN:
        raise ConfigError(
            f"peer_buffer_bytes must be at least 8 MiB ({PEER_BUFFER_BYTES_MIN}): a peer's largest message"
            f" (a Txn of 2 MiB, forwarded or accepted) must fit; got {config.peer_buffer_bytes}")
    if config.admin_buffer_bytes < 4096:
        raise ConfigError(f"admin_buffer_bytes must be at least 4096, got {config.admin_buffer_bytes}")
