"""
Finding storage providers by name, and the factories of the two that ship
with kvpaxos.

Providers are L{IStoreFactory} Twisted plugins of the L{kvpaxos.plugins}
package: the dropin C{kvpaxos/plugins/kvpaxos_storage.py} declares C{lmdb}
and C{memory}; another package adds one by installing its own dropin there.
L{store_factories} and L{find_store_factory} look them up.

Also here: L{StateMachineView}, the L{IStateMachine} face of an
L{INodeStore} (see its docstring for why a store needs one).

Nothing here opens a store at import time; the factories import the store
modules only when asked to open one.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from kvpaxos.storage.interfaces import IStateMachine, IStoreFactory

_log = Logger()


class UnknownStoreError(LookupError):
    """The configured storage name is not a provider's (the operator's fault)."""


@implementer(IStateMachine)
class StateMachineView:
    """
    The L{IStateMachine} of an L{INodeStore}: its C{snapshot()} is the
    store's C{snapshot_data()}.

    L{INodeStore} extends both L{IReplicaStorage} and L{IStateMachine}, and
    both declare C{snapshot()}: the first returns a
    L{kvpaxos.paxos.messages.Snapshot}, the second C{bytes}.  One method
    cannot be both; the stores keep the L{IReplicaStorage} meaning (the core
    reads it at construction) and offer the state machine's as
    C{snapshot_data()} and through this view, at C{store.state_machine}::

        Replica(node_id, store, rng, options,
                state_machine=store.state_machine,
                applied=store.applied_index())
    """

    #: The store keeps its data with its applied index: the core compacts
    #: the log without copying the data.
    durable = True

    def __init__(self, store) -> None:
        self._store = store

    def snapshot(self) -> bytes:
        """Return the store's data as of its last commit (encode_snapshot)."""
        return self._store.snapshot_data()

    def snapshot_now(self) -> tuple[int, bytes]:
        """Return the store's applied index and data, as of its last commit."""
        return self._store.snapshot_now()


@implementer(IPlugin, IStoreFactory)
class LMDBStoreFactory:
    """Opens L{kvpaxos.storage.lmdb.LMDBStore}s: the durable default."""

    name = "lmdb"
    description = "LMDB in the data directory, fsynced on every commit (default)"

    def open(self, directory, config):
        """Return an L{LMDBStore} kept in C{directory}."""
        from kvpaxos.storage.lmdb import LMDBStore

        return LMDBStore(directory, config)


@implementer(IPlugin, IStoreFactory)
class MemoryStoreFactory:
    """Opens L{kvpaxos.storage.memory.MemoryStore}s: nothing survives a restart."""

    name = "memory"
    description = "in memory only: everything is lost when the process ends (tests)"

    def open(self, directory, config):
        """Return a new L{MemoryStore}; C{directory} is ignored."""
        from kvpaxos.storage.memory import MemoryStore

        return MemoryStore(config)


def store_factories() -> dict:
    """
    Return every L{IStoreFactory} plugin found, as a dict from name to
    factory, sorted by name.  When two plugins claim one name, the first found
    wins and the other is logged and ignored.
    """
    import kvpaxos.plugins

    found: dict = {}
    for factory in getPlugins(IStoreFactory, kvpaxos.plugins):
        if factory.name in found:
            _log.warn(
                "storage provider {name!r} declared twice; ignoring {factory!r}",
                name=factory.name,
                factory=factory,
            )
            continue
        found[factory.name] = factory
    return dict(sorted(found.items()))


def find_store_factory(name: str):
    """
    Return the L{IStoreFactory} plugin called C{name}.

    @raise UnknownStoreError: no plugin has that name; the message lists the
        names there are.
    """
    factories = store_factories()
    try:
        return factories[name]
    except KeyError:
        known = ", ".join(factories) or "none"
        raise UnknownStoreError(
            f"unknown storage {name!r}; the providers are: {known}"
        ) from None
