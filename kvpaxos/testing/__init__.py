"""
Test support that ships with kvpaxos, so that code built on it can be tested
the same way: the deterministic cluster simulator (L{kvpaxos.testing.sim}),
its fault-injecting network (L{kvpaxos.testing.network}) and the digesting
key-value state machine it replicates (L{kvpaxos.testing.kvmachine}).

Nothing here is imported by the node; everything here is deterministic given
a seed.
"""
