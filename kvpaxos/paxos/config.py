"""
The member set of the cluster (L{Config}) and its changes (L{ConfigChange}),
replicated through the log one voter at a time so that consecutive member
sets' quorums intersect.

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


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """
    One change of the member set, replicated through the log.  It governs the
    slots after its own one, and only once it is chosen.
    """

    kind: ChangeKind
    node: int


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

    @property
    def members(self) -> frozenset[int]:
        """Every node that receives the log."""
        return self.voters | self.learners

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
        if kind in (ChangeKind.ADD_VOTER, ChangeKind.ADD_LEARNER):
            if node in self.members:
                raise ConfigError(f"node {node} is already a member")
        elif kind is ChangeKind.PROMOTE:
            if node not in self.learners:
                raise ConfigError(f"node {node} is not a learner")
        elif kind is ChangeKind.REMOVE:
            if node not in self.members:
                raise ConfigError(f"node {node} is not a member")
            if self.voters == {node}:
                raise ConfigError(f"node {node} is the last voter")

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
        if kind is ChangeKind.ADD_VOTER:
            return Config(self.voters | {node}, self.learners)
        if kind is ChangeKind.ADD_LEARNER:
            return Config(self.voters, self.learners | {node})
        if kind is ChangeKind.PROMOTE:
            return Config(self.voters | {node}, self.learners - {node})
        return Config(self.voters - {node}, self.learners - {node})


__all__ = ["ChangeKind", "Config", "ConfigChange", "ConfigError"]
