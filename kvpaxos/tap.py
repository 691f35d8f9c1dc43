"""
The twistd plugin's options and service: the one place that wires the
layers together.

C{twistd -n kvpaxos} with no arguments runs a one-node cluster with its data
in C{./kvpaxos-data}, serving gRPC clients on 127.0.0.1:2379.  See
L{kvpaxos.config} for the flags and the TOML file.

A node that stops on a fatal error (the replica's C{fatal_error}) exits
with status 1 and says why on stderr (L{exit_if_fatal}), so that a
supervisor restarts it; any other stop keeps twistd's own exit status.
"""

from __future__ import annotations

import os
import sys

from twisted.application import internet, service
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from kvpaxos.config import ConfigError, build, load_toml

_log = Logger()

#: Each flag and the configuration (TOML) key it sets.
_FLAGS = {
    "id": "id", "addr": "addr", "peers": "peers", "client": "client", "admin": "admin", "etcd-addr": "etcd_addr",
    "data": "data", "storage": "storage", "cluster-token": "cluster_token",
    "join": "join", "auto-promote": "auto_promote", "auto-promote-beats": "auto_promote_beats",
    "promote-lag-slots": "promote_lag_slots", "metrics-addr": "metrics_addr", "log-format": "log_format",
    "quota-bytes": "quota_bytes", "auth-token-ttl": "auth_token_ttl",
    "history-revisions": "history_revisions", "history-age": "history_age",
    "cert-file": "cert_file", "key-file": "key_file", "trusted-ca-file": "trusted_ca_file",
    "client-cert-auth": "client_cert_auth", "peer-cert-file": "peer_cert_file",
    "peer-key-file": "peer_key_file", "peer-trusted-ca-file": "peer_trusted_ca_file",
}
#: Flags that take no value, and the key each sets to true.
_SWITCHES = {"force-new-cluster": "force_new_cluster"}


class Options(usage.Options):
    """twistd kvpaxos [options]"""

    synopsis = "[options]"
    longdesc = (
        "Run one kvpaxos node. Flags override the --config file. With no "
        "arguments: a one-node cluster, data in ./kvpaxos-data, gRPC on "
        "127.0.0.1:2379, peers on 127.0.0.1:2380, admin on 127.0.0.1:2381."
    )
    optFlags = [
        ["force-new-cluster", None,
         "Disaster recovery: make this member the only one of a new cluster, with its data, then start"
         " (run once; restart without it)."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["id", None, None, "This node's id, a positive integer [default: 1]."],
        ["addr", None, None, "Peer (AMP) address host:port; ':port' means all interfaces [default: 127.0.0.1:2380]."],
        ["peers", None, None, "The other members: ID=host:port,ID=host:port."],
        ["client", None, None, "gRPC client address host:port [default: 127.0.0.1:2379]."],
        ["admin", None, None, "AMP admin address host:port [default: 127.0.0.1:2381]."],
        ["etcd-addr", None, None,
         "Serve etcd's v3 gRPC API (etcdctl, clientv3) on host:port too, with the client port's TLS"
         " [default: off]."],
        ["data", None, None, "Data directory [default: ./kvpaxos-data]."],
        ["storage", None, None, "Storage provider: lmdb, memory, or an installed plugin [default: lmdb]."],
        ["cluster-token", None, None,
         "Names this cluster apart from others with the same member ids; the same on"
         " every member, like etcd's --initial-cluster-token [default: kvpaxos]."],
        ["join", None, None,
         "Join an existing cluster through these client addresses of its members,"
         " host:port[,host:port...] (with an empty data directory; ignored once joined)."],
        ["auto-promote", None, None,
         "true: the leader promotes a learner once it stayed caught up [default: false]."],
        ["auto-promote-beats", None, None,
         "Heartbeats a learner must stay caught up before it is promoted [default: 10]."],
        ["promote-lag-slots", None, None,
         "A learner within this many slots of the leader is caught up [default: 1000]."],
        ["metrics-addr", None, None,
         "Serve Prometheus /metrics and /health over HTTP on host:port (e.g. 127.0.0.1:2382)"
         " [default: off]."],
        ["log-format", None, None,
         "text, or json: one JSON object per line with the member id [default: text]."],
        ["quota-bytes", None, None,
         "Space quota: past this many bytes of store pages in use, writes that grow the store are"
         " refused until deletes bring it under; 0: none [default: 8 GiB]."],
        ["auth-token-ttl", None, None,
         "Seconds a token from Auth.Authenticate lasts once auth is enabled [default: 300]."],
        ["history-revisions", None, None,
         "Revisions of the history of writes kept for watchers; the leader compacts the rest;"
         " 0: no count limit [default: 10000]."],
        ["history-age", None, None,
         "Seconds of the history of writes kept for watchers; 0: no age limit [default: 0]."],
        ["cert-file", None, None, "TLS certificate (PEM) of the gRPC and admin ports [default: plaintext]."],
        ["key-file", None, None, "TLS private key (PEM) of --cert-file."],
        ["trusted-ca-file", None, None, "CA certificates (PEM) that sign clients' certificates."],
        ["client-cert-auth", None, None,
         "true: a client of the gRPC and admin ports must present a certificate"
         " --trusted-ca-file signed [default: false]."],
        ["peer-cert-file", None, None, "TLS certificate (PEM) of the peer links [default: plaintext]."],
        ["peer-key-file", None, None, "TLS private key (PEM) of --peer-cert-file."],
        ["peer-trusted-ca-file", None, None,
         "CA certificates (PEM) that sign every member's peer certificate (peer links are mutual TLS)."],
    ]

    def postOptions(self) -> None:
        from kvpaxos.storage.providers import store_factories

        try:
            values = load_toml(self["config"]) if self["config"] else {}
            for flag, key in _FLAGS.items():
                if self[flag] is not None:
                    values[key] = self[flag]
            for flag, key in _SWITCHES.items():
                if self[flag]:
                    values[key] = True
            self.node = build(values)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        self._check_tls()
        names = sorted(store_factories())
        if self.node.storage not in names:
            raise usage.UsageError(
                f"unknown storage {self.node.storage!r}; installed: {', '.join(names)}"
            )
        if self.node.log_format == "json" and self.parent is not None:
            self._log_json(self.parent)

    def _check_tls(self) -> None:
        """Read the TLS files once now, so that a bad one is a usage error naming it."""
        from kvpaxos.tls import TLSError

        for files in (self.node.client_tls, self.node.peer_tls):
            if files is not None:
                try:
                    files.load()
                except TLSError as error:
                    raise usage.UsageError(str(error)) from None

    def _log_json(self, twistd) -> None:
        """
        twistd picks its log observer from its own --logger, which it
        imports once these options are parsed: name kvpaxos.logs's there,
        with twistd's own rules for where a log goes.
        """
        from kvpaxos import logs

        if twistd.get("logger"):
            raise usage.UsageError("--log-format json sets twistd's --logger itself: give one or the other")
        if twistd.get("syslog"):
            raise usage.UsageError("--log-format json writes to a file or standard output, not to syslog")
        path = twistd.get("logfile")
        if not twistd.get("nodaemon"):
            if path == "-":
                raise usage.UsageError("a daemon cannot log to standard output: use --nodaemon, or --logfile FILE")
            path = path or "twistd.log"  # where twistd's own daemon logs go
        logs.configure(self.node.node_id, path)
        twistd["logger"] = logs.OBSERVER


def _tag_with_node(node_id: int):
    """
    Return a log observer that puts the node id in every event's system
    field, so every line twistd writes (to stdout, journald) names the node.
    It must be added before twistd's own observer, i.e. in makeService.
    """
    prefix = f"node{node_id}"

    def observer(event: dict) -> None:
        system = event.get("log_system")
        if system is None or system == "-":
            event["log_system"] = prefix
        elif not str(system).startswith(prefix):
            event["log_system"] = f"{prefix},{system}"

    return observer


def peer_network(node, replica, reactor):
    """
    Return the L{kvpaxos.node.peers.PeerNetwork} of C{node} (a
    L{kvpaxos.config.NodeConfig}) for C{replica}: its links to the initial
    peers, its cluster id and the timing it reports to them.
    """
    from kvpaxos.node.peers import PeerNetwork

    # The timing reported is the replica's own: the one it compares its
    # peers' reports with before serving lease reads.  The links start at
    # the file's peers; the replica points them at the stored member set
    # (and its cluster id) as it starts (kvpaxos.node.membership).
    return PeerNetwork(
        node.node_id,
        {peer_id: (a.host, a.port) for peer_id, a in node.peers.items()},
        replica,
        reactor,
        cluster_id=node.cluster_id,
        timing=replica.timing,
        addresses=(str(node.peer), str(node.client)),
        endpoint_for=peer_endpoint_for(node),
        connections_max=node.peer_connections_max,
        buffer_bytes=node.peer_buffer_bytes,
    )


def peer_endpoint_for(node):
    """
    Return how C{node} connects to a peer, C{(reactor, host, port) ->
    endpoint}: over mutual TLS with its peer files if it has them (re-read at
    every connection), else None (plain TCP).
    """
    from kvpaxos.node.peers import tcp_endpoint
    from kvpaxos.tls import ClientTLS, TLSClientEndpoint

    files = node.peer_tls
    if files is None:
        return None
    tls = ClientTLS(files, _tls_warning)  # loaded here, before the reactor runs
    return lambda reactor, host, port: TLSClientEndpoint(
        tcp_endpoint(reactor, host, port), host, tls, warn=_tls_warning)


def _force_new_cluster(store, node) -> None:
    """Rewrite C{store} as the only member of a new cluster (kvpaxos.node.recovery), or exit 1 saying why."""
    from kvpaxos.node.recovery import RecoveryRefused, force_new_cluster

    try:
        line = force_new_cluster(store, node.node_id, str(node.peer), str(node.client))
    except RecoveryRefused as error:
        store.close()
        sys.stderr.write(f"kvpaxos: fatal: {error}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    _log.warn("{line}", line=line)


def _tls_warning(line: str) -> None:
    """Log a TLS file or link problem, from any thread (grpc calls its fetcher in its own)."""
    from twisted.internet import reactor

    reactor.callFromThread(_log.warn, "{line}", line=line)


def exit_if_fatal(replica, exit=os._exit, stderr=None) -> None:
    """
    Run after the reactor has shut down (an C{"after", "shutdown"} trigger):
    if C{replica} stopped on a fatal error (its C{fatal_error}, a str), write
    C{kvpaxos: fatal: <reason>} in one line to C{stderr} (by default the
    process's own, not twistd's redirect into the log) and end the process
    with C{exit(1)}.  Otherwise do nothing: twistd exits as usual (0, or 143
    after SIGTERM).

    Why C{os._exit}: twistd has no way to set an exit status.  Its runner
    returns normally once the reactor stops (status 0); the one other path,
    re-raising the signal that stopped the reactor (C{_exitSignal}), is
    private and would report a signal, not a failure.  A C{SystemExit}
    raised here is caught and logged by the reactor's trigger loop.  By the
    C{after} phase the services have stopped (the store is closed, the
    writer thread joined) and the reactor's thread pool is stopped, and log
    files are unbuffered; what the exit skips is twistd's removal of a pid
    file (the next twistd removes a stale one), later triggers, C{atexit}
    handlers, and Python's wait for non-daemon threads, which a stuck gRPC
    thread would otherwise turn into a node that is dead but never exits.
    """
    reason = getattr(replica, "fatal_error", None)
    if reason is None:
        return
    line = " ".join(str(reason).split()) or "(no reason given)"
    for stream in (sys.stdout, sys.stderr, sys.__stdout__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    out = stderr if stderr is not None else sys.__stderr__
    if out is not None:
        try:
            out.write(f"kvpaxos: fatal: {line}\n")
            out.flush()
        except (OSError, ValueError):
            pass
    exit(1)


def makeService(options: Options) -> service.MultiService:
    """Wire storage, replica, peers, gRPC and admin into one service."""
    from twisted.internet import reactor

    from kvpaxos.admin.server import admin_factory
    from kvpaxos.api.http import metrics_site
    from kvpaxos.api.server import GrpcServer
    from kvpaxos.node.metrics import NodeMetrics
    from kvpaxos.encoding.errors import StoreFormatError
    from kvpaxos.node.joining import Joiner
    from kvpaxos.node.service import ReplicaService
    from kvpaxos.node.auth import AuthPath
    from kvpaxos.node.compactor import HistoryLimits
    from kvpaxos.paxos import Options as CoreOptions
    from kvpaxos.storage.providers import find_store_factory
    from kvpaxos.tls import ServerTLS, grpc_channel_credentials, grpc_server_credentials
    from kvpaxos.node.connection_cap import LISTEN_BACKLOG

    from kvpaxos.node.clock import run_timers_on

    node = options.node
    globalLogPublisher.addObserver(_tag_with_node(node.node_id))
    # Every timed call (ticks, timeouts, reconnects) on the monotonic clock,
    # before any is scheduled: a wall-clock step must not stall the node.
    run_timers_on(reactor)
    os.makedirs(node.data, exist_ok=True)
    try:
        store = find_store_factory(node.storage).open(node.data, node.seed_config())
    except StoreFormatError as error:
        # A data directory of another format: one line saying why and what
        # to do, exit status 1, nothing bound and nothing written.
        line = " ".join(str(error).split())
        sys.stderr.write(f"kvpaxos: fatal: {line}\n")
        sys.stderr.flush()
        raise SystemExit(1)

    if node.force_new_cluster:
        _force_new_cluster(store, node)
    top = service.MultiService()
    replica = ReplicaService(
        node.node_id,
        store,
        reactor,
        CoreOptions(
            election_ticks=node.election_ticks,
            heartbeat_ticks=node.heartbeat_ticks,
            lease_drift_ticks=node.lease_drift_ticks,
            snapshot_interval=node.snapshot_interval,
            promote_lag_slots=node.promote_lag_slots,
            auto_promote=node.auto_promote,
            auto_promote_beats=node.auto_promote_beats,
        ),
        tick_s=node.tick_ms / 1000.0,
        lease_reads=node.lease_reads,
        addresses=(str(node.peer), str(node.client)),
        quota_bytes=node.quota_bytes,
        auth=AuthPath(store, token_ttl_s=node.auth_token_ttl),
    )
    replica.history_limits = HistoryLimits(node.history_revisions, float(node.history_age))
    peers = peer_network(node, replica, reactor)
    replica.peers = peers
    # A fatal stop must not look like a clean one to systemd (Restart=on-failure).
    reactor.addSystemEventTrigger("after", "shutdown", exit_if_fatal, replica)
    # Children start in this order: the replica reads its acceptor state
    # back before the peer listener can deliver anything to it.
    replica.setServiceParent(top)
    peers.setServiceParent(top)
    # Mutual TLS: a peer without a certificate the peer CA signed is refused.
    peer_tls = ServerTLS(node.peer_tls, True, _tls_warning) if node.peer_tls is not None else None
    internet.TCPServer(
        node.peer.port, peers.listener_factory(peer_tls), interface=node.peer.host, backlog=LISTEN_BACKLOG,
    ).setServiceParent(top)
    metrics = NodeMetrics()
    replica.metrics = metrics
    credentials = etcd_credentials = client_tls = None
    if node.client_tls is not None:
        credentials = grpc_server_credentials(node.client_tls, node.client_cert_auth, _tls_warning)
        if node.etcd is not None:  # one credentials object per port
            etcd_credentials = grpc_server_credentials(node.client_tls, node.client_cert_auth, _tls_warning)
        client_tls = ServerTLS(node.client_tls, node.client_cert_auth, _tls_warning)
    GrpcServer(replica, str(node.client), reactor, metrics=metrics, credentials=credentials,
               cert_names_user=node.client_cert_auth, etcd_address=str(node.etcd) if node.etcd else None,
               etcd_credentials=etcd_credentials, peer_tls=node.peer_tls is not None).setServiceParent(top)
    if node.metrics is not None:
        internet.TCPServer(
            node.metrics.port, metrics_site(metrics), interface=node.metrics.host, backlog=LISTEN_BACKLOG,
        ).setServiceParent(top)
    internet.TCPServer(
        node.admin.port,
        admin_factory(replica, client_tls, node.admin_connections_max, node.admin_buffer_bytes),
        interface=node.admin.host, backlog=LISTEN_BACKLOG,
    ).setServiceParent(top)
    if node.join:
        # After the replica (its store's member set is read) and the peers.
        join_credentials = None
        if node.client_tls is not None:
            join_credentials = grpc_channel_credentials(node.trusted_ca_file, node.cert_file, node.key_file)
        Joiner(
            node.node_id, (str(node.peer), str(node.client)), list(node.join),
            lambda: bool(replica.replica.config.voters), peers, reactor,
            credentials=join_credentials, endpoint_for=peer_endpoint_for(node),
        ).setServiceParent(top)
    return top
