"""
The space quota in the node simulator (issue 13, part 5): scenario
C{space-quota} gives every node a quota just above what its store holds a
second into the run, so that the clients' puts, appends and new sessions
run into it and out of it again as deletes free space, under the seed's
faults.  A write refused for space (RESOURCE_EXHAUSTED, NO_SPACE) must
change nothing: the simulator checks that no such write, refused on its
first delivery, is ever in the chosen log.  At the heal the operator lifts
the quota, so that liveness is judged as in any seed.
"""

from __future__ import annotations

from kvpaxos.testing.scenario_kit import Scenario

#: How far above a node's use its quota is set: a few writes' worth.
MARGIN_BYTES = {"memory": 8, "lmdb": 1}


class SpaceQuota(Scenario):
    """Every node's store runs into its quota and out of it again."""

    name = "space-quota"
    holes = "issue 13 part 5"

    def start(self, sim) -> None:
        sim.world.later(self.rng.uniform(0.5, 1.5), self._set_quota, sim)

    def _set_quota(self, sim) -> None:
        if sim.healed:
            return
        margin = MARGIN_BYTES.get(sim.provider, 4096)
        used = [n.process.service._used_bytes() for n in sim.nodes.values() if n.process is not None]
        if not used:
            return
        sim.quota_bytes = max(used) + margin
        sim._log(f"operator sets the space quota to {sim.quota_bytes} bytes")
        for node in sim.nodes.values():
            if node.process is not None:
                node.process.service.quota_bytes = sim.quota_bytes
