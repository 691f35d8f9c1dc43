"""
Twisted plugin package for kvpaxos extensions.  Storage providers are
L{kvpaxos.storage.interfaces.IStoreFactory} plugins found here with
C{twisted.plugin.getPlugins}; another package adds one by installing a
dropin module into a C{kvpaxos/plugins/} directory on C{sys.path}.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list = []
