"""
Plants that re-open the lock recipe's bugs (L{kvpaxos.client.concurrency_core}),
for the lock clients of the node simulator (L{kvpaxos.testing.simlock};
registered in L{kvpaxos.testing.plants}, tested in
C{tests/test_sim_locks.py}).  Each patches the recipe's module for the
whole run, as the product's drivers would run it; every driver looks the
recipe's functions up in that module when it uses them.
"""

from __future__ import annotations

from contextlib import contextmanager

from kvpaxos.client import concurrency_core
from kvpaxos.client.requests import compare_create_revision


@contextmanager
def unfenced_guard():
    """
    The guard a holder puts in its writes holds whatever the key: a holder
    whose lease ran out while it was cut off (another owns the lock now)
    still writes.  The fencing compare is what makes "I own the lock" true
    at the moment of a write; without it mutual exclusion rests on clocks.
    """
    guard = concurrency_core.guard
    # (Still naming the acquisition's create revision, so that each
    # release stays a command of its own, as with the real guard.)
    concurrency_core.guard = lambda key, create_revision: compare_create_revision(
        key, "<", create_revision + (1 << 62))
    try:
        yield
    finally:
        concurrency_core.guard = guard


@contextmanager
def queue_by_key():
    """
    The queue is ordered by key alone, not by create revision: a contender
    whose lease id sorts lower takes the lock at once, from a holder that
    came first (etcd's recipe orders by create revision for this reason).
    """
    place = concurrency_core._place
    concurrency_core._place = lambda kv: (kv.key,)
    try:
        yield
    finally:
        concurrency_core._place = place
