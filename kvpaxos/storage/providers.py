"""
Finding storage providers by name, and the factories of the two that ship
with kvpaxos.

Providers are L{IStoreFactory} Twisted plugins of the L{kvpaxos.plugins}
package: the dropin C{kvpaxos/plugins/kvpaxos_storage.py} declares C{lmdb}
and C{memory}; another package adds one by installing its own dropin there.
L{store_factories} and L{find_store_factory} look them up.

Nothing here opens a store at import time; the factories import the store
modules only when asked to open one (and the store modules import nothing
from here).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from kvpaxos.storage.interfaces import IStoreFactory

_log = Logger()


class UnknownStoreError(LookupError):
    """The configured storage name is not a provider's (the operator's fault)."""


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
