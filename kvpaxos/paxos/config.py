"""
The member set of the cluster (L{Config}) and its changes (L{ConfigChange}),
replicated through the log one voter at a time so that consecutive member
sets' quorums intersect.  The member set carries each member's addresses
(L{MemberAddress}: where its peers and its clients reach it) and the
cluster's id, so that a restarted or newly added member takes them from the
replicated state, never from a configuration file (which only seeds a new
cluster).  The core only carries addresses; it never connects to one.

A L{ConfigChange} is a slot value like a batch of commands; it governs the
slots after its own one, once it is chosen (the learner tracks the member
set in force per slot, see L{kvpaxos.paxos.learner}).  Values only: no I/O,
no knowledge of messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ChangeKind(enum.Enum):
    """What a L{ConfigChange} does to the member set."""

    ADD_VOTER = "add-voter"
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"
    #: Set a member's addresses (the non-empty ones given); the voters and
    #: learners stay as they are.
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class MemberAddress:
    """
    Where a member is reached: C{peer} (its AMP peer listener) and
    C{client} (its gRPC server), each C{host:port}, or C{""} while not
    known (a seed member's client address until it reports it).
    """

    peer: str = ""
    client: str = ""


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """
    One change of the member set, replicated through the log.  It governs the
    slots after its own one, and only once it is chosen.
    """

    kind: ChangeKind
    node: int
    #: For ADD_VOTER, ADD_LEARNER and UPDATE: the member's addresses ("" is
    #: none given: for UPDATE, left as it is).
    peer: str = ""
    client: str = ""


class ConfigError(ValueError):
    """
    A configuration change that cannot apply to the current member set
    (caller misuse: adding a member twice, removing the last voter, ...).
    """


@dataclass(frozen=True, slots=True)
class Config:
    """
    The member set: C{voters} form quorums, C{learners} receive the log but
    neither vote nor lead.  A node that is in neither set takes no part.
    """

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    #: (node, L{MemberAddress}) of the members whose addresses are known, in
    #: ascending node order (a tuple, so that a Config stays hashable).
    addresses: tuple = ()
    #: The cluster's id (L{kvpaxos.config.NodeConfig.cluster_id} when it was
    #: seeded); 0 before a joining node has the member set.
    cluster_id: int = 0
    #: The nodes removed and not added again since: a member refuses their
    #: links as REMOVED_MEMBER (so one that missed its removal learns it,
    #: however long after) and the core ignores their messages.  Replicated,
    #: so a member that restarted or joined since the removal knows it too.
    removed: frozenset[int] = frozenset()

    @property
    def members(self) -> frozenset[int]:
        """Every node that receives the log."""
        return self.voters | self.learners

    def address(self, node: int) -> MemberAddress:
        """Return C{node}'s addresses (empty ones if not known)."""
        for member, address in self.addresses:
            if member == node:
                return address
        return MemberAddress()

    def peer_addresses(self) -> dict[int, str]:
        """Return {node: peer address} of every member whose peer address is known."""
        return {node: a.peer for node, a in self.addresses if a.peer}

    def with_addresses(self, addresses: dict) -> Config:
        """Return this member set with C{addresses} ({node: MemberAddress}) as its addresses."""
        return Config(
            self.voters, self.learners,
            tuple(sorted((n, a) for n, a in addresses.items() if n in self.members)),
            self.cluster_id, self.removed,
        )

    def with_cluster_id(self, cluster_id: int) -> Config:
        """Return this member set with C{cluster_id}."""
        return Config(self.voters, self.learners, self.addresses, cluster_id, self.removed)

    @property
    def quorum(self) -> int:
        """The number of voters that make a majority."""
        return len(self.voters) // 2 + 1

    def is_quorum(self, nodes) -> bool:
        """Return whether C{nodes} contains a majority of the voters."""
        return len(self.voters.intersection(nodes)) >= self.quorum

    def check(self, change: ConfigChange) -> None:
        """
        Raise L{ConfigError} unless C{change} applies to this member set and
        changes the voters by at most one node.
        """
        node = change.node
        kind = change.kind
        if not 0 < node < 2**32:
            raise ConfigError(f"node id {node} is not a positive 32-bit number")
        if kind in (ChangeKind.ADD_VOTER, ChangeKind.ADD_LEARNER):
            if node in self.members:
                raise ConfigError(f"node {node} is already a member")
            self._check_addresses(change)
        elif kind is ChangeKind.UPDATE:
            if node not in self.members:
                raise ConfigError(f"node {node} is not a member")
            self._check_addresses(change)
        elif kind is ChangeKind.PROMOTE:
            if node not in self.learners:
                raise ConfigError(f"node {node} is not a learner")
        elif kind is ChangeKind.REMOVE:
            if node not in self.members:
                raise ConfigError(f"node {node} is not a member")
            if self.voters == {node}:
                raise ConfigError(f"node {node} is the last voter")

    def _check_addresses(self, change: ConfigChange) -> None:
        """Raise L{ConfigError} if another member has an address C{change} gives."""
        for member, address in self.addresses:
            if member == change.node:
                continue
            if change.peer and change.peer == address.peer:
                raise ConfigError(f"peer address {change.peer} is node {member}'s")
            if change.client and change.client == address.client:
                raise ConfigError(f"client address {change.client} is node {member}'s")

    def apply(self, change: ConfigChange) -> Config:
        """
        Return the member set after C{change}.  A change that does not apply
        leaves it as it is, the same way on every replica (it was checked when
        proposed; this keeps replay deterministic).
        """
        try:
            self.check(change)
        except ConfigError:
            return self
        node = change.node
        kind = change.kind
        addresses = dict(self.addresses)
        voters, learners, removed = self.voters, self.learners, self.removed
        if kind is ChangeKind.ADD_VOTER:
            voters, removed = voters | {node}, removed - {node}
        elif kind is ChangeKind.ADD_LEARNER:
            learners, removed = learners | {node}, removed - {node}
        elif kind is ChangeKind.PROMOTE:
            voters, learners = voters | {node}, learners - {node}
        elif kind is ChangeKind.REMOVE:
            voters, learners, removed = voters - {node}, learners - {node}, removed | {node}
            addresses.pop(node, None)
        if kind in (ChangeKind.ADD_VOTER, ChangeKind.ADD_LEARNER, ChangeKind.UPDATE):
            old = addresses.get(node, MemberAddress())
            new = MemberAddress(change.peer or old.peer, change.client or old.client)
            if new != MemberAddress():
                addresses[node] = new
        return Config(voters, learners, tuple(sorted(addresses.items())), self.cluster_id, removed)


__all__ = ["ChangeKind", "Config", "ConfigChange", "ConfigError", "MemberAddress"]
