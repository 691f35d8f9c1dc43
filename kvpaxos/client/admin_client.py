"""
A client of a node's admin port: L{parse_admin_addresses} (the C{--admin}
list), L{tcp_connector} (an AMP connection over TCP with Twisted's AMP
client) and L{AdminCalls} (one command to one admin address, bounded in
time, its every failure one L{AdminFailed} sentence).  The commands are the
admin API's contract, L{kvpaxos.api.admin}; this package never imports
L{kvpaxos.admin} (C{tests/test_import_rules.py}).

Nothing here prints or parses a command line: that is
L{kvpaxos.client.admin_cli}'s.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, error as neterror
from twisted.python.failure import Failure
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.protocols import amp

from kvpaxos.api.admin import NotLeader, Rejected, Unavailable
from kvpaxos.api.endpoints import BadEndpoint, join_host_port, split_host_port
from kvpaxos.tls import ClientTLS, TLSClientEndpoint, handshake_failure
from kvpaxos.client.errors import ClientError

__all__ = ["AdminCalls", "AdminFailed", "Connector", "parse_admin_addresses", "tcp_connector"]

#: address -> a Deferred firing with a connected C{amp.AMP} (or failing).
Connector = Callable[[str], defer.Deferred]


class AdminFailed(ClientError):
    """
    An admin request failed: refused, unreachable, timed out; the message
    says which and why.  C{unsent}: no connection was made, so nothing was
    sent (another address may be tried).
    """

    def __init__(self, message: str, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


def parse_admin_addresses(text: str) -> list[str]:
    """
    Return the admin addresses of C{text}, a comma-separated list of
    C{host:port} (blank entries skipped), in order and without duplicates.

    @raise BadEndpoint: the list is empty, or an entry is not C{host:port}
        with a host and a port in 1..65535.
    """
    addresses: list[str] = []
    for item in (item for item in text.split(",") if item.strip()):
        host, port = split_host_port(item)
        if not host or port == 0:
            raise BadEndpoint(f"admin address {item.strip()!r} needs a host and a port in 1..65535")
        address = join_host_port(host, port)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise BadEndpoint("no admin address given")
    return addresses


def tcp_connector(reactor, timeout_s: float, tls=None) -> Connector:
    """
    Return a L{Connector} that opens AMP connections over TCP with
    C{reactor}; over TLS with C{tls} (a L{kvpaxos.tls.TLSFiles}: the CA
    that signs the node's certificate, and this client's if it asks).
    """

    client_tls = ClientTLS(tls) if tls is not None else None

    def connect(address: str) -> defer.Deferred:
        host, port = split_host_port(address)
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout_s)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout_s)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout_s)
        if client_tls is not None:
            endpoint = TLSClientEndpoint(endpoint, host, client_tls)
        return connectProtocol(endpoint, amp.AMP())

    return connect


def _described(address: str, command: type, failure) -> AdminFailed:
    """The one sentence for C{failure} of C{command} sent to C{address}."""
    value = failure.value
    text = str(value) or type(value).__name__
    if isinstance(value, Rejected):
        return AdminFailed(f"{address}: rejected: {text}")
    if isinstance(value, Unavailable):
        return AdminFailed(f"{address}: unavailable: {text}")
    if isinstance(value, NotLeader):
        return AdminFailed(f"{address}: not the leader: {text}")
    if isinstance(value, amp.UnhandledCommand):
        return AdminFailed(f"{address}: the node does not offer {command.__name__}")
    if isinstance(value, amp.UnknownRemoteError):
        return AdminFailed(f"{address}: the node failed to answer {command.__name__}: {text}")
    if isinstance(value, neterror.ConnectionRefusedError):
        return AdminFailed(f"{address}: cannot connect: connection refused", unsent=True)
    if isinstance(value, (neterror.ConnectError, neterror.DNSLookupError)):
        return AdminFailed(f"{address}: cannot connect: {text}", unsent=True)
    if isinstance(value, (neterror.ConnectionDone, neterror.ConnectionLost)):
        return AdminFailed(f"{address}: the connection closed before {command.__name__} was answered"
                           " (if the port serves TLS: give --cacert, and --cert and --key if it asks for"
                           " a client certificate)")
    tls = handshake_failure(value)
    if tls is not None:
        return AdminFailed(f"{address}: TLS handshake failed: {tls}", unsent=True)
    return AdminFailed(f"{address}: {command.__name__} failed: {text}")



class _Connect:
    """What L{_described} names when opening a connection failed."""

    arguments: list = []


class AdminCalls:
    """
    Sends admin commands, each on a connection of its own, each bounded by
    C{timeout_s} (connecting included).

    @param connect: opens a connection (L{tcp_connector}, or an in-memory
        one in tests).
    @param clock: C{IReactorTime}: the timeouts, and the round-trip times
        L{timed} measures.
    """

    def __init__(self, connect: Connector, clock, timeout_s: float) -> None:
        self._connect = connect
        self.clock = clock
        self.timeout_s = timeout_s

    def call(self, address: str, command: type, **arguments: Any) -> defer.Deferred:
        """
        Send C{command} to C{address}: a Deferred firing with its response
        (a dict), or failing with L{AdminFailed}.  A command that timed out
        may still be carried out by the node (the message says so for a
        change).
        """
        return self.timed(address, command, **arguments).addCallback(lambda answer: answer[0])

    def timed(self, address: str, command: type, **arguments: Any) -> defer.Deferred:
        """As L{call}, firing with C{(response, round_trip_s)}: the time from sending to the answer."""

        async def exchange():
            protocol = await self._connect(address)
            try:
                sent = self.clock.seconds()
                response = await protocol.callRemote(command, **arguments)
                return response, self.clock.seconds() - sent
            finally:
                if protocol.transport is not None:
                    protocol.transport.loseConnection()

        def failed(failure):
            if failure.check(defer.TimeoutError, defer.CancelledError):
                changes = "; the change may still be carried out" if command.arguments else ""
                raise AdminFailed(f"{address}: no answer to {command.__name__} within {self.timeout_s:g}s{changes}")
            raise _described(address, command, failure)

        d = defer.ensureDeferred(exchange())
        d.addTimeout(self.timeout_s, self.clock)
        return d.addErrback(failed)

    async def connection(self, address: str):
        """
        Return an open AMP connection to C{address}, for several commands
        (L{on}); the caller closes it.  Raises L{AdminFailed}.
        """
        d = defer.ensureDeferred(self._connect(address))
        d.addTimeout(self.timeout_s, self.clock)
        try:
            return await d
        except (defer.TimeoutError, defer.CancelledError):
            raise AdminFailed(f"{address}: cannot connect within {self.timeout_s:g}s", unsent=True) from None
        except Exception:
            raise _described(address, _Connect, Failure()) from None

    async def on(self, protocol, address: str, command: type, **arguments: Any) -> dict:
        """Send C{command} on C{protocol} (from L{connection}), bounded by C{timeout_s}; raises L{AdminFailed}."""
        d = protocol.callRemote(command, **arguments)
        d.addTimeout(self.timeout_s, self.clock)
        try:
            return await d
        except (defer.TimeoutError, defer.CancelledError):
            raise AdminFailed(f"{address}: no answer to {command.__name__} within {self.timeout_s:g}s") from None
        except Exception:
            raise _described(address, command, Failure()) from None
