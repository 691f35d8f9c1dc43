"""
L{RequestCalls}: the requests a follower makes of its leader on a peer
connection, mixed into L{kvpaxos.node.peer_protocol.PeerProtocol}: the
responders for L{Forward} and L{ForwardChunk} (commands to propose),
L{ReadIndex} (a confirmed read index), L{LeaseKeepAlive} and
L{LeaseTimeToLive} (a lease's deadline, issue 14), and the calls that make
them.

What the node does with them is the write and read paths'; the
connection's state (C{handler}, C{_commands}, C{_stream_ids},
C{_check_identified}, C{_answer}, C{_call}, C{drop}) is the protocol's.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.protocols import amp

from kvpaxos.node.peer_commands import (
    ChunkError,
    Forward,
    ForwardChunk,
    LeaseKeepAlive,
    LeaseTimeToLive,
    PeerRequestError,
    ReadIndex,
    forward_outcome,
)
from kvpaxos.node.leases import LeaseTime
from kvpaxos.node.peer_flow import forward_calls


class RequestCalls(amp.CommandLocator):
    """The forward, read-index and lease responders and calls of a L{PeerProtocol}."""

    @Forward.responder
    def _forward(self, commands):
        self._check_identified("Forward")
        return self._answer(self.handler.proposals_forwarded, commands).addCallback(
            lambda _: {}
        )

    @ForwardChunk.responder
    def _forward_chunk(self, stream, index, last, data):
        self._check_identified("ForwardChunk")
        try:
            whole = self._commands.add(stream, index, last, data)
        except ChunkError as e:
            self.drop(str(e))
            raise PeerRequestError(str(e))
        if whole is None:
            return {}
        return self._answer(self.handler.proposals_forwarded, [whole]).addCallback(
            lambda _: {}
        )

    @ReadIndex.responder
    def _read_index(self):
        self._check_identified("ReadIndex")
        return self._answer(self.handler.read_index_requested).addCallback(
            lambda index: {"index": index}
        )

    @LeaseKeepAlive.responder
    def _lease_keep_alive(self, lease):
        self._check_identified("LeaseKeepAlive")
        return self._answer(self.handler.lease_keep_alive_requested, lease).addCallback(
            lambda ttl: {"ttl": ttl}
        )

    @LeaseTimeToLive.responder
    def _lease_time_to_live(self, lease):
        self._check_identified("LeaseTimeToLive")

        def answered(time):
            if time is None:
                return {"granted_ttl": -1, "remaining_s": -1}
            return {"granted_ttl": time.granted_ttl, "remaining_s": time.remaining_s}

        return self._answer(self.handler.lease_time_to_live_requested, lease).addCallback(answered)

    # --- the calls -----------------------------------------------------------

    def forward(self, commands: list[bytes]) -> Deferred:
        """
        Forward C{commands} to the peer to propose, in order, in as many
        calls as AMP's value cap requires.  The Deferred fires with None once
        the peer took all of them, or fails with L{ForwardFailed}, which says
        which commands were certainly not proposed (their call was answered
        NOT_LEADER) and which may have been.
        """
        for command in commands:
            if type(command) is not bytes:
                name = type(command).__name__
                raise TypeError(f"a command must be bytes, not {name}")
        calls = [
            (self._call(command, **arguments), decides)
            for command, arguments, decides in forward_calls(commands, self._stream_ids)
        ]
        if not calls:
            return succeed(None)
        outcomes = DeferredList([d for d, _ in calls], consumeErrors=True)
        return outcomes.addCallback(forward_outcome, [decided for _, decided in calls])

    def read_index(self) -> Deferred:
        """
        Ask the peer for a confirmed read index: a Deferred firing with it,
        or failing as L{forward} does.
        """

        def check(response):
            index = response["index"]
            if index < 0:
                raise PeerRequestError(f"peer answered read index {index}")
            return index

        return self._call(ReadIndex).addCallback(check)


    def lease_keep_alive(self, lease: int) -> Deferred:
        """
        Carry a keep-alive of lease C{lease} to the peer (the leader): a
        Deferred firing with the lease's TTL (0: no such lease), or failing
        as L{read_index} does.
        """

        def check(response):
            ttl = response["ttl"]
            if ttl < 0:
                raise PeerRequestError(f"peer answered lease TTL {ttl}")
            return ttl

        return self._call(LeaseKeepAlive, lease=lease).addCallback(check)

    def lease_time_to_live(self, lease: int) -> Deferred:
        """
        Ask the peer (the leader) how long lease C{lease} has to live: a
        Deferred firing with a L{LeaseTime}, or None if there is no such
        lease; or failing as L{read_index} does.
        """

        def check(response):
            ttl, remaining = response["granted_ttl"], response["remaining_s"]
            if ttl == -1 and remaining == -1:
                return None
            if ttl < 0 or remaining < 0:
                raise PeerRequestError(f"peer answered lease TTL {ttl}, {remaining} s left")
            return LeaseTime(ttl, remaining)

        return self._call(LeaseTimeToLive, lease=lease).addCallback(check)
