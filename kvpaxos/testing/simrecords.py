"""
The simulator's settings and records (L{kvpaxos.testing.sim}).

The tick, the core options and the bounds every seed runs with; what a
seed reports (L{SeedResult}, L{Violation}); what the simulation keeps per
server (L{Node}), per client (L{Client}), per operation in flight
(L{Pending}), per watch client (L{WatchClient}) and per lease client
(L{LeaseClient}, with the leases it holds, L{HeldLease}).  Plain data: no behaviour and no imports of the simulation,
so that scenarios and mixins can import it without a cycle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from kvpaxos.kv.commands import Range, Request
from kvpaxos.paxos import ZERO_BALLOT, Ballot, Options
from kvpaxos.testing.corerecords import Violation  # one kind of failed check for both simulators
from kvpaxos.testing.simworld import MachineClock, Process


TICK_S = 0.01
#: Core options for simulation: small batches, windows and snapshot
#: intervals so that every mechanism runs often.
SIM_OPTIONS = Options(
    election_ticks=10,
    heartbeat_ticks=2,
    window_slots=6,
    batch_bytes_max=400,
    message_bytes_max=1200,
    retransmit_ticks=4,
    catchup_retry_ticks=4,
    snapshot_interval=25,
    committed_max=16,
    lease_drift_ticks=2,
)
#: The largest tick-rate drift of a machine, either way: two members'
#: rates then differ by at most a factor 1.05 / 0.95 = 1.105, inside the
#: lease's allowance (lease_drift_ticks = 2: one tick for quantisation,
#: one of election_ticks = 10 for rate error, so a follower's 9 ticks
#: outlast a leader's 8 if the rates differ by less than 9 / 8 = 1.125).
DRIFT_MAX = 0.05
KEYS = tuple(f"k{i}".encode() for i in range(5))
#: What the service is given to answer a request in.
REQUEST_TIMEOUT_S = 1.0
#: How long a client waits for one attempt's answer before giving up on it.
ATTEMPT_TIMEOUT_S = 1.5
#: How long a client keeps retrying one session write.
RETRY_FOR_S = 4.0
FAULT_S = 4.0
LIVENESS_COMMANDS = 5
LIVENESS_BOUND_S = 12.0
HISTORY_CHECK_S = 20.0
MAX_NODES = 6


def sim_addresses(node_id: int) -> tuple[str, str]:
    """The peer and client addresses simulated node C{node_id} runs with (and reports)."""
    host = f"10.{node_id // 256}.{node_id % 256}.1"
    return f"{host}:2380", f"{host}:2379"
#: One seed in this many runs on LMDB.
LMDB_ONE_IN = 5
#: A snapshot copy's step on LMDB (the product's is 1 MiB; states here are
#: a few kilobytes, and a copy must take steps for a commit to meet it).
SNAPSHOT_STEP_BYTES = 256


@dataclass
class SeedResult:
    """What one seed's run did (named so as not to shadow the kv Result)."""

    seed: int
    violation: Optional[Violation] = None
    provider: str = "memory"
    chosen_slots: int = 0
    history_ops: int = 0
    unchecked_histories: int = 0
    events: int = 0
    trace: str = ""
    #: Operations acknowledged, by kind (put, append, ..., get/linearizable, ...).
    ops: Counter = field(default_factory=Counter)
    #: Faults injected, by kind.
    faults: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def checked(self) -> int:
        return sum(self.ops.values())

    def replay(self, plant: Optional[str] = None) -> str:
        extra = f" --plant {plant}" if plant else ""
        return f"python -m kvpaxos.testing.sim --seed {self.seed}{extra}"



@dataclass
class Node:
    """A simulated server across its boots: its store and its machine clock."""

    id: int
    store: object
    machine: MachineClock
    directory: Optional[str] = None
    process: Optional[Process] = None
    epochs: int = 0
    #: The highest revision any read at this node has returned.
    read_revision: int = 0
    chosen_seen: int = 0
    #: This node's tick period (a scenario may misconfigure one member).
    tick_s: float = TICK_S
    #: While it is down: the ballot its store has promised.
    promised_down: Ballot = ZERO_BALLOT
    #: It stopped on a fatal error with no reason recorded, so its process
    #: exited 0 and the supervisor (systemd, Restart=on-failure) leaves it down.
    exited: bool = False


@dataclass
class Client:
    id: int
    session: Optional[int] = None
    sequence: int = 0
    busy: bool = False
    attempt: int = 0
    liveness: bool = False
    #: node id -> the highest revision a write answered by it had.
    answered: dict = field(default_factory=dict)
    #: key -> the last value seen (for compare-and-swap).
    seen: dict = field(default_factory=dict)
    #: The leader the last answering node named (a response header).
    guess: Optional[int] = None
    written: int = 0
    #: A scenario's script (L{kvpaxos.testing.scenarios}): C{step(client)}
    #: instead of a random operation, C{answered(client, op, value)} on success.
    script: Optional[object] = None
    #: What it sends to name its user (L{kvpaxos.testing.simauth}), or None.
    credential: Optional[object] = None


@dataclass
class Pending:
    """One client operation in flight (possibly over several attempts)."""

    kind: str
    request: Optional[Request] = None
    key: bytes = b""
    consistency: str = ""
    query: Optional[Range] = None
    first_call: float = 0.0
    give_up_at: float = 0.0
    node: int = 0
    call: float = 0.0
    #: Whether any attempt reached a node (else it certainly did nothing).
    delivered: bool = False
    #: Attempts delivered to a node (a refusal for space on the first changed nothing).
    deliveries: int = 0


@dataclass
class WatchClient:
    """
    A client that watches a key or range of L{KEYS} at one node after
    another (L{kvpaxos.testing.simwatch}), resuming as the real client does.
    """

    id: int
    #: What it watches: C{key}..C{end} as a L{kvpaxos.node.watchers.WatchSpec} says.
    key: bytes
    end: Optional[bytes]
    prev_kv: bool
    no_put: bool
    no_delete: bool
    #: How often its sink says it is full; how long it waits for news
    #: (a batch, or progress past its cursor) before it gives up on a node.
    full_share: float
    patience_s: float
    #: The next revision it needs (0: "now", before a first watch was created).
    cursor: int = 0
    #: Where it watches now: the node, that node's process (its boot), the
    #: product's watcher and the sink it sends to (None between streams).
    node: int = 0
    process: Optional[Process] = None
    watcher: Optional[object] = None
    sink: Optional[object] = None
    #: When it last heard news; whether a watch is being opened (asked
    #: for at C{asked_at}, the client's C{attempt}th).
    heard_at: float = 0.0
    opening: bool = False
    asked_at: float = 0.0
    attempt: int = 0


@dataclass
class HeldLease:
    """
    A lease a L{LeaseClient} was granted (L{kvpaxos.testing.simlease}):
    kept alive through any node until C{keep_until} (or never), revoked at
    C{revoke_at} (or never), let lapse otherwise.
    """

    id: int
    ttl: int
    #: Until when its client keeps it alive (0: never).
    keep_until: float
    #: When its client revokes it (0: never).
    revoke_at: float
    #: When its client last sent a keep-alive that was acknowledged (or
    #: the grant): the lease lives at least its TTL from then, as the
    #: leader counts it.
    alive_from: float
    #: The node its keep-alives go to first (the leader it was last told of).
    guess: Optional[int] = None
    #: The keep-alive (or time-to-live) in flight: its number, or 0.
    asking: int = 0
    #: Its client no longer uses it (revoked, told it is gone, or given up).
    dropped: bool = False


@dataclass
class LeaseClient:
    """
    A client that grants leases, keeps some alive, lets others lapse,
    revokes some and attaches keys of L{KEYS} to them (L{kvpaxos.testing.simlease}).
    """

    id: int
    #: An operation (grant, put, revoke) is in flight.
    busy: bool = False
    attempt: int = 0
    guess: Optional[int] = None
    #: Values and explicit lease ids it made (each unique).
    written: int = 0
    ids: int = 0
    #: lease id -> L{HeldLease}, those it was granted.
    held: dict = field(default_factory=dict)


@dataclass
class _Datagrams:
    """How unreliable the network is for Paxos messages in adversarial seeds."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_s: tuple = (0.0005, 0.005)
    straggle: float = 0.0
    straggle_s: tuple = (0.05, 0.4)
