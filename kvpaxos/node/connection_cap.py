"""
Limits against connection floods (issue 13, part 6), shared by the peer and
admin ports: L{ConnectionCap}, a wrapping factory that keeps at most a
given number of connections open and closes one more at once (before any
TLS handshake or protocol work), and L{Refusals}, which counts a kind of
refusal and logs the first and then every power of ten, so that a flood
cannot flood the log.

Accepting stays fast: a refused connection costs the reactor one accept
and one close; the listeners also take a deep accept backlog
(L{LISTEN_BACKLOG}), so that a burst of connections does not overflow the
kernel's queue and leave clients waiting for their SYN to be sent again
(a second each: Twisted's default backlog of 50 held the AMP ports to
about 60 new connections a second under a flood).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

_log = Logger()

#: The accept backlog of every listener the node opens with Twisted.
LISTEN_BACKLOG = 1024


class Refusals:
    """Counts one kind of refusal; logs the first and then every power of ten."""

    def __init__(self, message: str) -> None:
        self.count = 0
        self._message = message

    def __call__(self, **fields) -> None:
        self.count += 1
        if str(self.count).rstrip("0") == "1":  # 1, 10, 100, ...
            _log.warn(self._message + " ({count} so far)", count=self.count, **fields)


class ConnectionCap(WrappingFactory):
    """
    C{wrapped}'s connections, at most C{limit} open at once: one more is
    closed as it is accepted, and counted in C{refused} (logged as
    C{"refused a {what} connection from {peer}: {limit} are open"}).
    """

    protocol = ProtocolWrapper
    noisy = False

    def __init__(self, wrapped, limit: int, what: str) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.refused = Refusals(f"refused a {what} connection from {{peer}}: {{limit}} are open")

    def buildProtocol(self, addr):
        if len(self.protocols) >= self.limit:
            self.refused(peer=addr, limit=self.limit)
            return None
        return super().buildProtocol(addr)

    @property
    def open(self) -> int:
        """The connections open now."""
        return len(self.protocols)
