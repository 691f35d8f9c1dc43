"""
Where clients find kvpaxos nodes, and the gRPC channel settings both ends
share: the default client port, parsing of C{host:port,host:port} endpoint
lists, and channel options sized for the largest legal request.

No request logic lives here; the client (L{kvpaxos.client}), the CLI
(L{kvpaxos.cli}) and the server (L{kvpaxos.api.server}) import these
constants so they cannot drift apart.
"""

from __future__ import annotations

import grpc
import grpc.aio

from kvpaxos.kv.commands import MAX_KEY_BYTES, MAX_VALUE_BYTES

#: The port a node serves clients on unless configured otherwise (etcd's
#: client port, so operators find it where they expect it).
DEFAULT_CLIENT_PORT = 2379
#: The endpoint the CLI talks to when given none.
DEFAULT_ENDPOINT = f"127.0.0.1:{DEFAULT_CLIENT_PORT}"

#: The largest gRPC message either end sends or accepts: a maximal value and
#: key plus framing, with room to spare (4 MiB).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
assert MAX_MESSAGE_BYTES > MAX_VALUE_BYTES + MAX_KEY_BYTES + 1024

#: Options for every kvpaxos channel and server.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


class BadEndpoint(ValueError):
    """An endpoint string is not C{host:port} (the caller's fault)."""


def parse_endpoint(text: str) -> str:
    """
    Return C{text} as a gRPC target C{host:port}.

    An empty host (C{":2379"}) means all interfaces (C{"[::]:2379"}) — the
    seed's C{--addr=:5001} form.  IPv6 hosts are written in brackets
    (C{"[::1]:2379"}).  Port 0 is allowed (a server binds an ephemeral port).

    @raise BadEndpoint: C{text} has no port, or a port that is not a number
        in 0..65535.
    """
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BadEndpoint(f"endpoint {text!r} is not host:port")
    if host.count(":") and not (host.startswith("[") and host.endswith("]")):
        raise BadEndpoint(f"endpoint {text!r}: write an IPv6 host in brackets")
    if not host:
        host = "[::]"
    return f"{host}:{int(port)}"


def parse_endpoints(text: str) -> list[str]:
    """
    Return the endpoints in the comma-separated list C{text}, in order and
    without duplicates.

    @raise BadEndpoint: the list is empty or an entry is not C{host:port}.
    """
    endpoints: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        endpoint = parse_endpoint(item)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise BadEndpoint("no endpoints given")
    return endpoints


def open_channel(endpoint: str) -> grpc.Channel:
    """Return an insecure gRPC channel to C{endpoint} with L{CHANNEL_OPTIONS}."""
    return grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


def open_aio_channel(endpoint: str) -> grpc.aio.Channel:
    """
    Return an insecure C{grpc.aio} channel to C{endpoint} with
    L{CHANNEL_OPTIONS}.  Call it inside the running event loop the channel
    will be used from.
    """
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
