"""
Where clients find kvpaxos nodes, and the gRPC channel settings both ends
share: the default client port, the one C{host:port} parser (for the node's
configuration, the gRPC server and the client), and channel options sized
for the largest legal request.

No request logic lives here, and nothing of kvpaxos beyond the API's own
leaves (L{kvpaxos.api.errors}, L{kvpaxos.api.limits}) is imported.
"""

from __future__ import annotations

from typing import Iterable, Union

from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import MAX_MESSAGE_BYTES

#: The port a node serves clients on unless configured otherwise (etcd's
#: client port, so operators find it where they expect it).
DEFAULT_CLIENT_PORT = 2379
#: The endpoint the CLI talks to when given none.
DEFAULT_ENDPOINT = f"127.0.0.1:{DEFAULT_CLIENT_PORT}"

#: Options for every kvpaxos channel and server.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


class BadEndpoint(InvalidArgument):
    """An address is not C{host:port} (the caller's fault)."""


def split_host_port(text: str) -> tuple[str, int]:
    """
    Return C{(host, port)} of C{text}, C{host:port}: the host without
    brackets (C{"[::1]:2379"} gives C{("::1", 2379)}), empty for C{":2379"}
    (every interface).  Port 0 is allowed (a server binds an ephemeral port).

    @raise BadEndpoint: not a string, no port, a port that is not a number
        in 0..65535, or an IPv6 host not in brackets.
    """
    if not isinstance(text, str):
        raise BadEndpoint(f"address {text!r} is not host:port")
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BadEndpoint(f"endpoint {text!r} is not host:port")
    if int(port) > 65535:
        raise BadEndpoint(f"endpoint {text!r}: port must be 0..65535, got {int(port)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or ":" not in host:
            raise BadEndpoint(f"endpoint {text!r}: only an IPv6 host goes in brackets")
    elif ":" in host or "[" in host or "]" in host:
        raise BadEndpoint(f"endpoint {text!r}: write an IPv6 host in brackets")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """Return C{host:port}, an IPv6 host in brackets (the form gRPC targets take)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> str:
    """
    Return C{text} as a gRPC target C{host:port}.

    An empty host (C{":2379"}) means all interfaces (C{"[::]:2379"}) — the
    seed's C{--addr=:5001} form.  IPv6 hosts are written in brackets
    (C{"[::1]:2379"}).

    @raise BadEndpoint: as L{split_host_port}.
    """
    host, port = split_host_port(text)
    return join_host_port(host or "::", port)


def parse_endpoints(endpoints: Union[str, Iterable[str]]) -> list[str]:
    """
    Return the endpoints of C{endpoints} — a comma-separated list (blank
    entries skipped) or a sequence of C{host:port} strings — in order and
    without duplicates.

    @raise BadEndpoint: the list is empty or an entry is not C{host:port}.
    """
    items = [item for item in endpoints.split(",") if item.strip()] if isinstance(endpoints, str) else endpoints
    parsed: list[str] = []
    for item in items:
        endpoint = parse_endpoint(item)
        if endpoint not in parsed:
            parsed.append(endpoint)
    if not parsed:
        raise BadEndpoint("no endpoints given")
    return parsed
