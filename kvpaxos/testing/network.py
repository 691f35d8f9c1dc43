"""
The simulator's network: it decides, from one seeded C{random.Random}, when
(and whether) each message arrives.  It drops, duplicates, delays and so
reorders messages, and blocks directed links to make partitions, symmetric or
not.  It holds no clock and no queue: the simulator schedules deliveries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Faults:
    """How unreliable the network is; all rates are probabilities."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_ms: tuple[int, int] = (1, 5)
    #: Probability that a message is held much longer (reordering it).
    straggle: float = 0.0
    straggle_ms: tuple[int, int] = (50, 400)


class SimNetwork:
    """Routes messages between simulated nodes under L{Faults}."""

    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        #: Directed links (src, dst) that lose every message.
        self.blocked: set[tuple[int, int]] = set()

    def arrivals(self, src: int, dst: int, now: int) -> list[int]:
        """Return the times at which a message sent now from src reaches dst."""
        if (src, dst) in self.blocked:
            return []
        rng = self.rng
        faults = self.faults
        if faults.drop and rng.random() < faults.drop:
            return []
        times = [now + self._delay()]
        if faults.duplicate and rng.random() < faults.duplicate:
            times.append(now + self._delay())
        return times

    def _delay(self) -> int:
        rng = self.rng
        faults = self.faults
        if faults.straggle and rng.random() < faults.straggle:
            return rng.randint(*faults.straggle_ms)
        return rng.randint(*faults.delay_ms)

    def partition(self, groups: list[list[int]]) -> None:
        """Cut every link between different groups, both ways."""
        self.blocked = {
            (a, b)
            for i, group in enumerate(groups)
            for other in groups[:i] + groups[i + 1:]
            for a in group
            for b in other
        }

    def block(self, src: int, dst: int) -> None:
        """Cut the one-way link src -> dst (an asymmetric partition)."""
        self.blocked.add((src, dst))

    def heal(self) -> None:
        """Restore every link."""
        self.blocked = set()
