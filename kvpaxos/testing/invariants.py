"""
The node simulator's checks of the two safety rules that no client can see
until it is too late, checked where they are kept rather than through their
consequences (L{kvpaxos.testing.sim} checks those too):

  - durable before sent: a C{Prepare} or C{Promise} leaves a node only once
    the ballot it carries is durable in the node's store, and an
    C{Accepted} only once the slots it reports accepted are (DESIGN.md,
    "Safety first").  Checked as each message leaves, against the store as
    a crash would leave it;
  - one lease at a time: while a leader may serve reads on its lease, no
    quorum of its voters has promised a higher ballot, since a candidate
    of that ballot may then be chosen and commit writes the lease holder
    does not see.  Checked after every event, with the leader's ticks
    counted as the product would count them on its next event.

A campaign that breaks either rule may still end well in most runs (the
other defences, or luck, save it); a check of the rule catches it the first
time it is broken.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.paxos import Accepted, Prepare, Promise
from kvpaxos.paxos.leader import Leader


def durability_problem(store, message) -> Optional[str]:
    """
    What C{message}, about to leave its node, depends on that C{store} (the
    node's durable state) does not yet hold; C{None} if nothing.
    """
    kind = type(message)
    if kind is Prepare or kind is Promise:
        promised = store.hard_state().promised
        if promised < message.ballot:
            return (
                f"a {kind.__name__} of {message.ballot} left node {message.src} for node"
                f" {message.dst} while its durable promise was {promised}"
            )
    elif kind is Accepted and message.count:
        last = message.first_slot + message.count - 1
        durable = {slot: entry for slot, entry in store.entries(message.first_slot) if slot <= last}
        floor = None
        for slot in range(message.first_slot, last + 1):
            entry = durable.get(slot)
            if entry is not None and entry.ballot >= message.ballot:
                continue
            if floor is None:
                floor = max(store.snapshot().index, store.hard_state().chosen_index)
            if slot <= floor:
                continue  # durably chosen (or compacted into the snapshot)
            return (
                f"an Accepted of {message.ballot} for slots {message.first_slot}..{last} left"
                f" node {message.src} while slot {slot} was durably"
                f" {'empty' if entry is None else f'accepted in {entry.ballot}'}"
            )
    return None


def lease_holder(service) -> Optional[tuple]:
    """
    C{(ballot, config)} if C{service}'s replica is a leader that would serve
    a read on its lease at its next event, else C{None}.  Reads only: it
    counts the ticks the service has yet to catch up instead of ticking.
    """
    replica = getattr(service, "replica", None)
    if replica is None or type(replica.role) is not Leader:
        return None
    role = replica.role
    if role.transfer_target is not None or role.lease_forfeited:
        return None
    if not _lease_allowed(service, replica):
        return None
    behind = int((service.clock.seconds() - service._last_tick_at) / service.tick_s)
    if replica.ticks + max(behind, 0) >= role.lease_until:
        return None
    return role.ballot, replica.config


def _lease_allowed(service, replica) -> bool:
    # ReplicaService._lease_allowed without its logging.
    if not service.lease_reads:
        return False
    timing = service._peer_timing
    return all(
        timing.get(voter) == service.timing for voter in replica.config.voters - {service.node_id}
    )


def lease_problem(leaders: dict, promised: dict) -> Optional[str]:
    """
    C{leaders}: node id -> C{(ballot, config)} of each lease holder
    (L{lease_holder}); C{promised}: node id -> the ballot it has promised
    (in memory if it runs, durably if it is down).  The overlap, if a
    quorum of a lease holder's voters promised above its ballot.
    """
    for node_id, (ballot, config) in sorted(leaders.items()):
        above = {n for n, b in promised.items() if b > ballot}
        if config.is_quorum(above):
            ballots = ", ".join(f"{n}: {promised[n]}" for n in sorted(above))
            return (
                f"node {node_id} holds a read lease in {ballot} while a quorum promised"
                f" higher ballots ({ballots})"
            )
    return None
