"""
The storage providers that ship with kvpaxos, as L{IStoreFactory} plugins
(found with C{twisted.plugin.getPlugins}; see
L{kvpaxos.storage.providers}).  Declarations only.
"""

from kvpaxos.storage.providers import LMDBStoreFactory, MemoryStoreFactory

lmdb = LMDBStoreFactory()
memory = MemoryStoreFactory()
