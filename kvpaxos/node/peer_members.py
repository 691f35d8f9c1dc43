"""
L{MembershipCalls}: the membership commands of a peer connection (issue
11), mixed into L{kvpaxos.node.peer_protocol.PeerProtocol}: the responders
for L{MemberChange} (a follower carries an operator's change to the leader)
and L{Join} (a node not yet a member asks to be added, before any Hello),
and the call that carries a change.

What the node decides about them is L{kvpaxos.node.membership}'s; the
connection's handshake state (C{peer_id}, C{_cluster_id},
C{_check_identified}) is the protocol's.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.protocols import amp

from kvpaxos.node.interfaces import MembershipRejected, NotLeaderError, Unavailable
from kvpaxos.node.peer_commands import (
    DESCRIPTION_MAX,
    MEMBER_CHANGE_KINDS,
    MEMBER_MAX,
    Join,
    MemberChange,
    NotLeaderOnWire,
    PeerRequestError,
    WrongCluster,
    not_leader,
)

_log = Logger()

#: The longest wait a MemberChange may ask of the peer (an hour), and a Join.
_TIMEOUT_MS_MAX = 3_600_000
_JOIN_TIMEOUT_MS_MAX = 120_000


class MembershipCalls(amp.CommandLocator):
    """The membership responders and calls of a L{PeerProtocol}."""



    def _member_answer(self, call: Callable, *args) -> Deferred:
        """
        Run a membership call; its errors cross as L{MemberChange}'s: a
        L{NotLeaderError} as NOT_LEADER (before Unavailable, its base),
        L{MembershipRejected} and L{Unavailable} as themselves, anything
        else as PEER_ERROR.
        """

        def wire_error(failure):
            if failure.check(NotLeaderError):
                leader = failure.value.leader
                raise NotLeaderOnWire("" if leader is None else str(int(leader)))
            if failure.check(MembershipRejected):
                raise MembershipRejected(str(failure.value)[:DESCRIPTION_MAX])
            if failure.check(Unavailable):
                raise Unavailable(str(failure.value)[:DESCRIPTION_MAX])
            _log.failure("peer membership request failed", failure, peer=self._peer())
            what = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            raise PeerRequestError(what[:DESCRIPTION_MAX])

        return maybeDeferred(call, *args).addErrback(wire_error)

    @MemberChange.responder
    def _member_change(self, kind, node, peer, client, force, timeout_ms):
        self._check_identified("MemberChange")
        if kind not in MEMBER_CHANGE_KINDS or not 0 < timeout_ms <= _TIMEOUT_MS_MAX:
            raise PeerRequestError(f"bad MemberChange: kind {kind!r}, timeout {timeout_ms} ms")
        return self._member_answer(
            self.handler.member_change_requested, kind, node, peer, client, force,
            timeout_ms / 1000.0,
        ).addCallback(lambda slot: {"slot": slot})

    @Join.responder
    def _join(self, cluster, member, peer, client, timeout_ms):
        if cluster != self._cluster_id:
            raise WrongCluster(
                f"cluster id {cluster:x} is not this cluster's ({self._cluster_id:x}):"
                f" node {member} was pointed at another cluster's members"
            )
        if not 0 < member <= MEMBER_MAX or not 0 < timeout_ms <= _JOIN_TIMEOUT_MS_MAX:
            raise PeerRequestError(f"bad Join: member {member}, timeout {timeout_ms} ms")
        if self.peer_id is None and self._clock is not None:
            # A Join stands in for the Hello: the connection may stay while
            # the change is made, and a little longer, not forever.
            self._cancel_hello_deadline()
            self._hello_deadline = self._clock.callLater(
                timeout_ms / 1000.0 + self._timeout_s, self.drop, "Join connection kept too long"
            )
        return self._member_answer(
            self.handler.join_requested, member, peer, client, timeout_ms / 1000.0
        ).addCallback(lambda _: {})

    def member_change(self, kind: str, node: int, peer: str, client: str, force: bool,
                      timeout_s: float) -> Deferred:
        """
        Carry a membership change to the peer (the leader): a Deferred
        firing with the slot it was chosen in, or failing with
        L{NotLeaderError} (certainly not proposed), L{MembershipRejected},
        L{Unavailable}, L{PeerRequestError} or a timeout after C{timeout_s}
        (plus a margin: the peer answers within C{timeout_s}).
        """
        try:
            d = self.callRemote(
                MemberChange, kind=kind, node=node, peer=peer, client=client, force=force,
                timeout_ms=max(1, int(timeout_s * 1000)),
            )
        except Exception:
            return fail()
        if self._clock is not None:
            d.addTimeout(timeout_s + 1.0, self._clock)
        return d.addCallback(lambda answer: answer["slot"]).addErrback(not_leader)

