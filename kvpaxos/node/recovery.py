"""
Disaster recovery (issue 13, part 4): C{--force-new-cluster}, etcd's way of
turning the one surviving member of a cluster that lost its quorum for
good into a one-node cluster with its data.

Before the replica starts, the store is rewritten in one durable
transaction:

  - a compaction point at the applied slot whose member set is this node
    alone (its own addresses), under a new cluster id, so that the old
    members, should one come back, are refused on the peer links;
  - every log entry after the applied slot kept (an accepted write may have
    been acknowledged by the old leader: the node, now the only voter,
    proposes it again and chooses it), except member changes, which become
    no-ops (a change accepted in the old cluster must not reshape the new
    one).

The acceptor state (the promised ballot) is kept, so the node never
answers below what it promised.  Run it once and restart without the flag:
a node started with it again is made a one-node cluster again, whatever
members were added since.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import replace

from kvpaxos.paxos.config import Config, ConfigChange, MemberAddress
from kvpaxos.paxos.messages import NOOP, Snapshot
from kvpaxos.storage.interfaces import Commit


class RecoveryRefused(Exception):
    """The store cannot be made a one-node cluster (the line says why)."""


def new_cluster_id(old: int, applied: int) -> int:
    """
    A cluster id for the forced cluster: from the old one, the slot, and 8
    random bytes, so that it is neither the old cluster's nor that of any
    cluster seeded with the same token and ids (nor of an earlier forcing).
    """
    digest = hashlib.sha256(b"kvpaxos force-new-cluster\0" + struct.pack(">QQ", old, applied) + os.urandom(8))
    return int.from_bytes(digest.digest()[:8], "big") or 1


def force_new_cluster(store, node_id: int, peer: str, client: str) -> str:
    """
    Rewrite C{store} as the only member of a new cluster (see the module
    docstring); return the line to log.

    @raise RecoveryRefused: the store has no member set yet (a joining
        node's), this node is not one of its voters, or it is already a
        one-node cluster of this node (a flag left on would otherwise cut
        off every member added since).
    """
    before = store.snapshot()
    # The member set in force is the snapshot's, changed by what the log applied since.
    current = _config_in_force(store, before)
    voters = current.voters
    if not voters:
        raise RecoveryRefused("--force-new-cluster needs a member that has a member set (this one is still joining)")
    if node_id not in voters:
        raise RecoveryRefused(f"--force-new-cluster: node {node_id} is not a voter of its member set"
                              f" (voters {sorted(voters)}): force a voter")
    if voters == {node_id} and not current.learners:
        raise RecoveryRefused(f"--force-new-cluster: node {node_id} is already the only member of its cluster:"
                              " remove the flag (it would cut off any member added since)")
    applied = store.applied_index()
    cluster_id = new_cluster_id(current.cluster_id, applied)
    config = Config(frozenset({node_id})).with_addresses({node_id: MemberAddress(peer, client)})
    config = config.with_cluster_id(cluster_id)
    entries = []
    changes = 0
    for slot, entry in store.entries(applied + 1):
        if isinstance(entry.value, ConfigChange):
            entry = replace(entry, value=NOOP)
            changes += 1
        entries.append((slot, entry))
    store.commit(Commit(entries=entries, snapshot=Snapshot(applied, config, None)))
    old = sorted(voters)
    return (f"--force-new-cluster: node {node_id} is now the only member of a new cluster {cluster_id:x}"
            f" (it was one of voters {old}), from slot {applied}; {len(entries)} accepted entries after it kept"
            f" ({changes} member changes among them made no-ops). Restart without the flag, then add members.")


def _config_in_force(store, snapshot):
    """The member set after the applied slot: the snapshot's, with every change the store applied since."""
    config = snapshot.config
    applied = store.applied_index()
    for slot, entry in store.entries(snapshot.index + 1):
        if slot > applied:
            break
        if isinstance(entry.value, ConfigChange):
            config = config.apply(entry.value)
    return config
