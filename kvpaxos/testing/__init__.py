"""
Test support that ships with kvpaxos, so that code built on it can be tested
the same way:

  - L{kvpaxos.testing.sim}: the deterministic simulator of the production
    node (the real L{kvpaxos.node.service.ReplicaService} over the real
    state machine and storage providers; its parts in
    L{kvpaxos.testing.simrecords}, C{simnodes}, C{simchecks}, C{simclients}
    and C{simfaults}), with L{kvpaxos.testing.simworld} (virtual time,
    per-process reactors and clocks), L{kvpaxos.testing.simdisk} (the
    simulated disk), L{kvpaxos.testing.simnet} (TCP-like peer links),
    L{kvpaxos.testing.scenarios} (targeted scenarios, in
    C{lease_scenarios} and C{fault_scenarios} over C{scenario_kit}),
    L{kvpaxos.testing.reference} (the chosen log replayed through the real
    state machine) and L{kvpaxos.testing.plants} (bugs it can plant to show
    its checker bites);
  - L{kvpaxos.testing.coresim}: the faster simulator of the bare Paxos core
    (its parts in C{corerecords}, C{coreplants}, C{corenodes},
    C{corechecks}, C{coreclients} and C{corefaults}), with its fault-injecting network (L{kvpaxos.testing.network}) and the
    digesting state machine it replicates (L{kvpaxos.testing.kvmachine});
  - L{kvpaxos.testing.linearizability}: the history checker both use;
  - L{kvpaxos.testing.processes}: a cluster of real twistd processes.

Nothing here is imported by the node; the simulators are deterministic
given a seed.
"""
