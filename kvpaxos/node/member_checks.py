"""
The node's checks of a membership request's fields (the caller's fault when
they fail, L{MembershipRejected}): a member id, and an address that a peer
or a client can reach (parsed by the API's one parser).
"""

from __future__ import annotations

from kvpaxos.api.endpoints import BadEndpoint, split_host_port
from kvpaxos.node.interfaces import MembershipRejected

#: Hosts that name every interface: a bind address, not one a peer or a
#: client can reach, so never published.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def check_address(address: str, what: str) -> str:
    """
    Return C{address} if it is a reachable C{host:port} (the API's one
    parser; a host that names every interface and port 0 are refused).

    @raise MembershipRejected: it is not (the caller's fault).
    """
    try:
        host, port = split_host_port(address)
    except BadEndpoint as error:
        raise MembershipRejected(f"the {what} address is malformed: {error}") from None
    if host in _WILDCARD_HOSTS or port == 0:
        raise MembershipRejected(f"the {what} address {address!r} names no reachable host and port")
    return address.strip()


def _reachable(address: str) -> bool:
    try:
        check_address(address, "")
    except MembershipRejected:
        return False
    return True


def _check_node_id(node_id: int) -> None:
    if not 0 < node_id < 2**32:
        raise MembershipRejected(f"node id {node_id} is not a positive 32-bit number")
