"""
The core simulator's settings and records (L{kvpaxos.testing.coresim}).

The tick and the bounds every seed runs with, the core options; what a
seed reports (L{Result}, L{Violation}); what the simulation keeps per
node (L{SimNode}) and per client (L{Client}), and its event queue's
entries.  Plain data: nothing here imports the simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvpaxos.paxos import Options, Replica
from kvpaxos.storage.memory import MemoryStorage
from kvpaxos.testing.kvmachine import DigestKV


TICK_MS = 10
CLIENT_TIMEOUT_MS = 1500
LIVENESS_BOUND_MS = 6000
LIVENESS_COMMANDS = 5
#: Wall-clock bound for checking one seed's history; past it the history
#: counts as unchecked (never as passed).
HISTORY_CHECK_S = 20.0
MAX_NODES = 7

#: Core options for simulation: small batches, windows and snapshot
#: intervals so that every mechanism runs often.
SIM_OPTIONS = Options(
    election_ticks=10,
    heartbeat_ticks=2,
    window_slots=6,
    batch_bytes_max=160,
    message_bytes_max=400,
    retransmit_ticks=4,
    catchup_retry_ticks=4,
    snapshot_interval=25,
    committed_max=16,
    # A learner lags by a window or so while commands flow: a small bound
    # makes the leader refuse some promotions, as the rule must.
    promote_lag_slots=4,
    auto_promote_beats=5,
)


class Violation(Exception):
    """A checked property failed; C{kind} names which."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Result:
    """What one seed's run did."""

    seed: int
    violation: Optional[Violation] = None
    chosen_slots: int = 0
    acked: int = 0
    reads: int = 0
    lease_reads: int = 0
    history_ops: int = 0
    unchecked_histories: int = 0
    crashes: int = 0
    config_changes: int = 0
    #: Membership changes the leader refused (a lagging learner, a quorum
    #: not heard from, the leader itself, one in flight, ...).
    refused_changes: int = 0
    forced_removes: int = 0
    #: PROMOTE changes chosen (an operator's or the leader's own).
    promotions: int = 0
    transfers: int = 0
    #: Snapshots sent by durable state machines' replicas (taken when sent).
    durable_snapshots: int = 0
    events: int = 0

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay(self, plant: Optional[str] = None) -> str:
        extra = f" --plant {plant}" if plant else ""
        return f"python -m kvpaxos.testing.coresim --seed {self.seed}{extra}"


class SimNode:
    """A simulated server: durable storage, and what a crash throws away."""

    def __init__(self, node_id: int, storage: MemoryStorage) -> None:
        self.id = node_id
        self.storage = storage
        self.replica: Optional[Replica] = None
        self.machine = DigestKV()
        self.up = False
        self.epoch = 0
        self.busy = False
        self.last_tick = 0
        #: A paused process (GC, VM stall) handles nothing until then.
        self.paused_until = 0
        #: The chosen index seen in this epoch; it never goes down.
        self.chosen_seen = 0


@dataclass
class Client:
    """A client that proposes writes and asks for reads, one at a time."""

    id: int
    seq: int = 0
    guess: Optional[int] = None
    waiting: Optional[bytes] = None
    waiting_node: Optional[int] = None
    deadline: int = 0
    liveness: bool = False


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    kind: str = field(compare=False)
    args: tuple = field(compare=False)
