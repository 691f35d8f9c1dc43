"""
L{AddressPublishing}: how a leader puts the members' addresses into the
replicated member set (issue 11).  Members report their addresses in the
handshake (C{peer_addresses_reported}); the leader proposes an UPDATE, one
at a time, for a member whose client address the set lacks or has
otherwise, or whose peer address it lacks.  A mixin of
L{kvpaxos.node.membership.Membership}, over the state declared in its
C{__init__}.
"""

from __future__ import annotations

from kvpaxos.node.member_checks import _reachable
from kvpaxos.paxos import ChangeKind, ConfigChange, ConfigError, NotLeader, ProposalRejected
from kvpaxos.paxos.config import MemberAddress


class AddressPublishing:
    """The address-publishing half of L{kvpaxos.node.membership.Membership}."""

    def peer_addresses_reported(self, member: int, peer: str, client: str) -> None:
        """Member C{member} reported its addresses in a handshake."""
        self._reported[member] = (peer, client)

    def _publish_addresses(self) -> None:
        """
        As leader, propose one UPDATE (one at a time; a refused one never
        again) for the lowest member whose reported client address differs
        from the member set's, or whose peer address it lacks: a known peer
        address is what peers reach it at, never replaced by what the
        member says of itself (maybe a bind address).
        """
        replica = self._replica
        if not replica.is_leader or self._stopping():
            self._own_published = False  # the next leadership publishes it again
            return
        if self._updating is not None:
            if replica.ticks - self._updating[1] < 4 * replica.options.election_ticks:
                return
            self._updating = None  # lost with a leadership: ask again
        config = replica.config
        reports = dict(self._reported)
        reports[self.node_id] = self._own
        for node in sorted(config.members):
            peer, client = reports.get(node, ("", ""))
            have = config.address(node)
            if node == self.node_id and not self._own_published:
                have = MemberAddress(have.peer, "")
            change = ConfigChange(
                ChangeKind.UPDATE, node,
                peer if _reachable(peer) and not have.peer else "",
                client if _reachable(client) and client != have.client else "",
            )
            if not (change.peer or change.client) or change in self._refused_updates:
                continue
            try:
                self._guard(self._propose, change, False)
            except (ProposalRejected, NotLeader):
                return  # another change in flight: the next tick tries again
            except ConfigError as error:
                self._refused_updates.add(change)
                self.log.warn("node {node}'s addresses not published: {e}", node=node, e=error)
                continue
            self._updating = (change, replica.ticks)
            self.log.info("publishing node {node}'s addresses: {change}", node=node, change=change)
            self._schedule()
            return
