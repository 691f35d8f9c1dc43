"""
Targeted fault scenarios for the node simulator (L{kvpaxos.testing.sim}):
scripted but randomized sequences of the simulator's own faults that make a
rare interleaving common, as FoundationDB's "buggify" does.

Each seed with random faults also runs, with probability L{PROBABILITY}, one
scenario chosen by the seed (from its own C{random.Random} stream, so a seed
without a scenario draws exactly what it drew before scenarios existed).
A scenario only injects faults and aims clients; what catches a bug is
always one of the simulator's ordinary checks (agreement, the history
checker, read safety, liveness), plus one check that only makes sense in
the calm a scenario provides (L{CalmFollowerWrites}: a write taken by a
follower is answered soon after it is chosen).

Each scenario was designed from one of issue 9's holes (the plants of
L{kvpaxos.testing.holes}, registered in L{kvpaxos.testing.plants}); its
docstring names the interleaving it makes likely.  Nothing here reads the
wall clock, starts a thread or iterates an unordered collection.

What must not live here: new checks of a plant's own mechanism (a
scenario that recognised a plant would prove nothing), and edits of the
product's objects beyond what a fault or an operator does.

This module holds the registry (L{SCENARIOS}, L{names}, L{draw}); the
scenarios are in L{kvpaxos.testing.lease_scenarios} (leases and timing),
L{kvpaxos.testing.fault_scenarios} (peers and storage),
L{kvpaxos.testing.space_scenarios} (the space quota) and
L{kvpaxos.testing.simauth} (auth changes; run by C{--scenario auth} and in
a share of the plain seeds, never drawn here), built from the helpers and
the L{Scenario} base of L{kvpaxos.testing.scenario_kit}.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

from kvpaxos.testing.scenario_kit import Scenario
from kvpaxos.testing.lease_scenarios import (
    CalmFollowerWrites,
    DriftAtTheLimit,
    MisconfiguredTick,
    RestartUnderLease,
    StalledFollower,
    TransferHeld,
)
from kvpaxos.testing.space_scenarios import SpaceQuota
from kvpaxos.testing.simauth import AuthScenario
from kvpaxos.testing.simlock import LockScenario
from kvpaxos.testing.fault_scenarios import (
    DiskFailure,
    EarlyAnswerCrash,
    ForgedPeer,
    SnapshotDuringGrowth,
    StalledInstall,
)


#: Draw a scenario from the seed (the default of C{Simulation(scenario=)}).
DRAW = "draw"
#: The share of random-fault seeds that also run a scenario.
PROBABILITY = 0.3


SCENARIOS = {
    cls.name: cls
    for cls in (
        StalledFollower, TransferHeld, MisconfiguredTick, DriftAtTheLimit, ForgedPeer,
        EarlyAnswerCrash, DiskFailure, CalmFollowerWrites, RestartUnderLease,
        SnapshotDuringGrowth, StalledInstall, SpaceQuota, AuthScenario, LockScenario,
    )
}


def names() -> list[str]:
    return sorted(SCENARIOS)


def draw(sim, choice) -> Optional[Scenario]:
    """
    The scenario C{sim} runs: C{choice} by name, None for none, or
    L{DRAW}: with random faults, one in 1 / L{PROBABILITY} seeds, chosen
    by the seed.  Configured here (before the nodes boot).
    """
    rng = random.Random(sim.seed * 7_368_787 + 0x5CE)
    if choice == DRAW:
        if not sim.random_faults or rng.random() >= PROBABILITY:
            return None
        choice = rng.choice([name for name in names() if SCENARIOS[name].drawn])
    if choice is None:
        return None
    try:
        cls = SCENARIOS[choice]
    except KeyError:
        raise ValueError(f"unknown scenario {choice!r}; choose from {', '.join(names())}") from None
    scenario = cls(random.Random(rng.getrandbits(64)))
    if scenario.quiet_share and rng.random() < scenario.quiet_share:
        sim.random_faults = False  # the scenario's faults only
    if scenario.lease_reads and not sim.lease_reads:
        sim.lease_reads = True
        sim.timing = dataclasses.replace(sim.timing, lease_reads=True)
    scenario.configure(sim)
    sim.result.faults[f"scenario {scenario.name}"] += 1
    return scenario
