"""
Leases (issue 14): keys that live as long as a lease is kept alive.

The replicated state holds a lease table (id -> TTL in seconds, as
granted) and the attachments of keys to leases.  Through the log:

  - C{LEASE_GRANT(id, ttl)} makes a lease (refused, nothing changed: the
    id exists);
  - C{LEASE_REVOKE(id)} (a client's) and C{LEASE_EXPIRE(id)} (the
    leader's, when the lease ran out) delete every key attached to it, in
    key order, all in one revision (one history event each), then the
    lease (refused: no such lease);
  - a put carrying a lease attaches its key to it (detaching it from any
    other); a put without one, or a delete, detaches the key.  A put whose
    lease is not there is refused (L{LeaseRefused}), nothing applied.

When a lease expires is not decided here: nothing in the state machine
reads a clock.  The leader decides, on its own monotonic clock, and
proposes the C{LEASE_REVOKE} (L{kvpaxos.node.leases}); so does a client
that revokes.  A TTL under the cluster's minimum is raised by the node
that takes the grant, before it is proposed (the log holds the TTL
granted).

The view's lease calls (L{kvpaxos.storage.interfaces.IStateView}):
C{lease_ttl(id) -> int | None}, C{lease_put(id, ttl)}, C{lease_remove(id)},
C{lease_items()} (C{(id, ttl)} in id order), C{key_lease(key) -> int}
(0: none), C{lease_attach(key, id)}, C{lease_detach(key)} (no error if
none) and C{lease_keys(id)} (its keys in key order).  Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvpaxos.kv.commands import Put, Request

__all__ = ["LeaseError", "LeaseGranted", "LeaseRefused", "LeaseRevoked", "apply_grant",
           "apply_revoke", "attach_put", "branch_leases", "lease_refusal"]


class LeaseError(enum.Enum):
    """Why a lease command, or a put with a lease, was refused."""

    #: No lease with that id (etcd: "requested lease not found").
    NOT_FOUND = "not found"
    #: A lease with that id exists (etcd: "lease already exists").
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    """A LEASE_GRANT applied: lease C{id} of C{ttl} seconds; the store at C{revision}."""

    id: int
    ttl: int
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseRevoked:
    """A LEASE_REVOKE applied: C{deleted} keys went with lease C{id}; the store at C{revision}."""

    id: int
    deleted: int
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    """Refused, nothing applied: C{error} about lease C{id}; the store at C{revision}."""

    error: LeaseError
    id: int
    revision: int


def apply_grant(view, request: Request):
    """Apply LEASE_GRANT C{request}: L{LeaseGranted} or L{LeaseRefused} (EXISTS)."""
    lease = request.lease
    if view.lease_ttl(lease) is not None:
        return LeaseRefused(LeaseError.EXISTS, lease, view.revision())
    view.lease_put(lease, request.ttl)
    return LeaseGranted(lease, request.ttl, view.revision())


def apply_revoke(view, request: Request):
    """Apply LEASE_REVOKE C{request}: L{LeaseRevoked} or L{LeaseRefused} (NOT_FOUND)."""
    lease = request.lease
    if view.lease_ttl(lease) is None:
        return LeaseRefused(LeaseError.NOT_FOUND, lease, view.revision())
    keys = list(view.lease_keys(lease))
    revision = view.revision()
    if keys:
        revision += 1
        for index, key in enumerate(keys):
            view.lease_detach(key)
            view.delete_with_event(key, revision, index)
        view.set_revision(revision)
    view.lease_remove(lease)
    return LeaseRevoked(lease, len(keys), revision)


def lease_refusal(view, leases):
    """
    Return the L{LeaseRefused} of puts that would attach keys to
    C{leases} (ids, 0 for none) if one is not there, or None.
    """
    for lease in leases:
        if lease and view.lease_ttl(lease) is None:
            return LeaseRefused(LeaseError.NOT_FOUND, lease, view.revision())
    return None


def branch_leases(ops) -> tuple:
    """The leases the puts among transaction C{ops} attach keys to."""
    return tuple(op.lease for op in ops if type(op) is Put and op.lease)


def attach_put(view, key: bytes, lease: int) -> None:
    """After a put of C{key} with C{lease} (0: none): the key is attached to it alone."""
    current = view.key_lease(key)
    if current == lease:
        return
    if current:
        view.lease_detach(key)
    if lease:
        view.lease_attach(key, lease)
