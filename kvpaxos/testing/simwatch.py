"""
Watch and the history's compaction in the node simulator (issue 14;
L{WatchMixin}, part of L{kvpaxos.testing.sim.Simulation}).

Every seed runs its nodes with small history limits drawn from the seed
(L{draw_limits}: a few revisions, sometimes an age on the leader's
monotonic clock, checked every few ticks), so the leader compacts the
history often and under every fault, and the nodes' watchers read their
history in small steps.  A few watch clients (L{WatchClient}) watch a key
or a range of the simulated keys, with or without previous records, puts
or deletes, from "now" or from a past (sometimes a future) revision, at a
node after another: their sink (L{SimSink}) now and then says it is full
(and calls C{watch_ready} a little later); they ask for progress (as a
progress notification, C{watch_caught_up}), cancel now and then, and when
their node crashes or stops (its watchers end without a word) or they hear
nothing for a while (a partition), they resume at another node from the
revision after the last one they were sent, as the real client does; told
L{Compacted}, they start again from its revision.

What is checked (violations C{watch} and C{compaction}; the liveness of
watchers is part of C{liveness}):

  - every batch holds exactly the reference's events for its spec from the
    client's cursor through the batch's revision (L{ReferenceHistory}: the
    chosen log's events, never compacted): in order, none missing, none
    twice, each revision whole, with previous records as asked, across
    resumes on other members; a progress answer at revision C{r} claims
    there is nothing more up to C{r};
  - nothing is sent to a sink after its watcher was cancelled or ended;
  - L{Compacted} C{c} comes only while the client's cursor is below C{c},
    and C{c} is the compacted revision of the member's store, the one the
    chosen log gives at the member's applied slot;
  - every chosen COMPACT was proposed by a node that was the leader then
    (retention is the leader's decision); each compaction keeps what the
    limits promise: the last C{revisions} revisions, or everything younger
    than C{age_s} on the proposer's monotonic clock (drift and its forward
    steps allowed for); the state check compares every store's history
    and compacted revision with the reference;
  - after the heal, within its bound, every watch client's cursor passes
    the final revision.

Nothing here reads the wall clock or iterates an unordered collection;
the draws come from the seed's own streams (L{WatchMixin._watch_setup}),
so the other streams draw what they drew before.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from typing import Optional

from kvpaxos.api.errors import ApiError
from kvpaxos.api.limits import TO_THE_END
from kvpaxos.kv.commands import Op
from kvpaxos.kv.history import Event, EventKind, HistoryCompacted
from kvpaxos.node.compactor import HistoryLimits
from kvpaxos.node.watchers import Compacted, WatchSpec
from kvpaxos.paxos import Batch as SlotBatch
from kvpaxos.encoding.commands import decode_request
from kvpaxos.testing.simrecords import DRIFT_MAX, KEYS, LIVENESS_BOUND_S, LIVENESS_COMMANDS, TICK_S, WatchClient

#: How many watch clients a seed runs (a range, drawn per seed).
WATCH_CLIENTS = (1, 3)

#: A sink's states: taking batches; said it was full (waits for its
#: client's C{watch_ready}); its client gave up on it (what the node sends
#: until it takes the cancel is lost); the node took the cancel; the node
#: ended it (L{Compacted}); its node's process died.
OPEN, FULL, CLOSING, CANCELLED, ENDED, LOST = "open", "full", "closing", "cancelled", "ended", "lost"


def draw_limits(rng: random.Random) -> HistoryLimits:
    """The history limits every node of a seed runs with: small, so the leader compacts often."""
    age_s = rng.choice((0.0, 0.0, 0.3, 0.8, 2.0))
    revisions = rng.choice((3, 6, 12, 25))
    if age_s and rng.random() < 0.4:
        revisions = 0  # the age alone
    return HistoryLimits(revisions=revisions, age_s=age_s, check_s=rng.choice((2, 5, 10)) * TICK_S,
                         step_revisions=rng.choice((5, 50, 10_000)))


def spec_matches(spec: WatchSpec, event: Event) -> bool:
    """Whether C{spec} asks for C{event} (written here again, not taken from the node)."""
    key = event.kv.key
    if spec.end is None:
        inside = key == spec.key
    elif spec.end == TO_THE_END:
        inside = key >= spec.key
    else:
        inside = spec.key <= key < spec.end
    if not inside:
        return False
    return not (spec.no_put if event.kind is EventKind.PUT else spec.no_delete)


def _keeps_history(provider: str) -> bool:
    if provider == "lmdb":
        from kvpaxos.storage.lmdb import LMDBStore as store_class
    else:
        from kvpaxos.storage.memory import MemoryStore as store_class
    return hasattr(store_class, "history")


class ReferenceHistory:
    """
    The chosen log's history of writes, as the reference
    (L{kvpaxos.testing.reference}) applies it, kept whole (the reference's
    own state compacts it): every event in order, the virtual time each
    revision was first chosen, and the compacted revision after each slot.
    """

    def __init__(self) -> None:
        self.revisions: list[int] = []
        self.events: list[Event] = []
        #: The last revision archived.
        self.revision = 0
        #: revision -> the virtual time a node first committed its slot.
        self.chosen_at: dict[int, float] = {}
        self._slots = [0]
        self._compacted = [0]

    def applied(self, slot: int, state, at: float) -> Optional[str]:
        """
        The reference applied C{slot} (first chosen at virtual time C{at})
        to C{state}: archive its events; return what is wrong, or None.
        """
        problem = None
        revision, compacted = state.revision(), state.compacted_revision()
        if revision > self.revision:
            start = self.revision + 1
            if compacted > start:
                problem = (f"slot {slot} compacted the history to {compacted}, dropping revisions"
                           f" from {start} it wrote itself")
                start = compacted
            try:
                pairs = state.events(start, 1 << 62)
            except HistoryCompacted as error:
                return f"the reference's history at slot {slot}: {error}"
            for event_revision, event in pairs:
                self.revisions.append(event_revision)
                self.events.append(event)
            for made in range(self.revision + 1, revision + 1):
                self.chosen_at[made] = at
            self.revision = revision
        if compacted != self._compacted[-1]:
            self._slots.append(slot)
            self._compacted.append(compacted)
        return problem

    def compacted_at(self, slot: int) -> int:
        """The compacted revision the chosen log gives after C{slot}."""
        return self._compacted[bisect_right(self._slots, slot) - 1]

    def between(self, spec: WatchSpec, first: int, last: int) -> tuple:
        """The events C{spec} is to be sent from revision C{first} through C{last}, in order."""
        lo, hi = bisect_left(self.revisions, first), bisect_right(self.revisions, last)
        return tuple(
            event if spec.prev_kv or event.prev is None else Event(event.kind, event.kv, None)
            for event in self.events[lo:hi] if spec_matches(spec, event)
        )


class SimSink:
    """The far end of one watch stream: what its client was sent (L{kvpaxos.node.watchers.Sink})."""

    def __init__(self, sim, client: WatchClient, node_id: int, process, spec: WatchSpec) -> None:
        self.sim = sim
        self.client = client
        self.node_id = node_id
        self.process = process
        self.spec = spec
        self.state = OPEN
        #: A progress request is in flight on it.
        self.asking = False

    def send(self, batch) -> bool:
        return self.sim._watch_batch(self, batch)

    def end(self, reason) -> None:
        self.sim._watch_ended(self, reason)


def _describe(expected: tuple, got: tuple) -> str:
    def short(event):
        return (event.kv.mod_revision, event.kind.name.lower(), event.kv.key.decode(errors="replace"),
                event.kv.value.decode(errors="replace"), event.prev is not None)

    exp, out = [short(e) for e in expected], [short(e) for e in got]
    for i, (a, b) in enumerate(zip(exp, out)):
        if a != b or expected[i] != got[i]:
            return f"event {i}: expected {a}, got {b} (expected {len(exp)} events, got {len(out)})"
    if len(exp) > len(out):
        return f"missing {exp[len(out):][:3]} (expected {len(exp)} events, got {len(out)})"
    return f"extra {out[len(exp):][:3]} (expected {len(exp)} events, got {len(out)})"


class WatchMixin:
    """Watch clients, the reference's history and the compaction checks of a L{kvpaxos.testing.sim.Simulation}."""

    # --- setup -----------------------------------------------------------------

    def _watch_setup(self) -> None:
        """Draw this seed's history limits and watch clients (before the nodes boot), from streams of their own."""
        rng = random.Random(self.seed * 1_000_033 + 0x3A7C)
        self.watch_rng = random.Random(rng.getrandbits(64))
        self.history_limits = draw_limits(rng)
        #: The most events one step of a node's watchers reads (whole revisions).
        self.watch_step_events = rng.choice((1, 2, 3, 8, 1000))
        self.reference_history = ReferenceHistory()
        #: (origin, boot, revision) -> [(leader then, forward steps of its monotonic clock)] of each COMPACT proposed.
        self.compactions_proposed: dict[tuple, list] = {}
        #: Checks waiting for the reference to reach a revision or a slot.
        self._watch_waiting: list = []
        self.watch_clients: dict[int, WatchClient] = {}
        if not _keeps_history(self.provider):
            return  # a provider that keeps no history yet: no watch clients
        for i in range(1, rng.randint(*WATCH_CLIENTS) + 1):
            self.watch_clients[i] = self._watch_client(i, rng)

    @staticmethod
    def _watch_client(i: int, rng: random.Random) -> WatchClient:
        choice = rng.random()
        if choice < 0.35:
            key, end = rng.choice(KEYS), None
        elif choice < 0.6:
            a, b = sorted(rng.sample(range(len(KEYS) + 1), 2))
            key, end = KEYS[a], KEYS[b] if b < len(KEYS) else b"l"
        elif choice < 0.75:
            key, end = rng.choice(KEYS), TO_THE_END
        else:
            key, end = b"k", b"l"  # every simulated key
        filters = rng.random()
        return WatchClient(
            i, key, end, prev_kv=rng.random() < 0.6, no_put=filters < 0.1, no_delete=0.1 <= filters < 0.2,
            full_share=rng.choice((0.0, 0.05, 0.2, 0.5)), patience_s=rng.uniform(0.5, 2.0),
        )

    def _watch_start(self) -> None:
        """Start the watch clients (after the nodes booted)."""
        for client in self.watch_clients.values():
            self.world.later(self.watch_rng.uniform(0.2, 1.5), self._watch_first, client)

    def _watch_configure(self, service) -> None:
        """A node's service, before it starts: this seed's history limits."""
        service.history_limits = self.history_limits

    def _watch_started(self, node, process, service) -> None:
        """
        A node started: its watchers read in small steps, and every COMPACT
        it proposes is noted (who proposed it, whether it was the leader,
        how far its monotonic clock had stepped forward in this boot).
        """
        watchers = getattr(service, "watchers", None)
        if watchers is not None:
            # The seam wanted: a step size the service passes to its Watchers.
            watchers._step_events = self.watch_step_events
        writes = getattr(service, "writes", None)
        if writes is None:
            return
        base = process.mono.offset
        submit = writes.submit
        boot = getattr(service, "_boot", 0)
        replica = service.replica  # this boot's core, whatever the service is told

        def noted(request, timeout_s, *args, **kwargs):
            if request.op is Op.COMPACT:
                key = (node.id, boot, request.compact_revision)
                self.compactions_proposed.setdefault(key, []).append(
                    (replica is not None and replica.is_leader, process.mono.offset - base))
            return submit(request, timeout_s, *args, **kwargs)

        writes.submit = noted

    # --- the clients -------------------------------------------------------------

    def _watch_first(self, client: WatchClient) -> None:
        rng = self.watch_rng
        revision = self.reference_history.revision
        choice = rng.random()
        if choice < 0.25 and revision:
            client.cursor = rng.randint(1, revision)  # from the past (perhaps compacted)
        elif choice < 0.32:
            client.cursor = revision + rng.randint(1, 3)  # from the future: it waits
        self._watch_again(client, 0, (0.0, 0.0))
        self.world.later(rng.uniform(0.05, 0.15), self._watch_poll, client)

    def _watch_target(self, client: WatchClient, avoid: int = 0) -> int:
        """A node to watch at: any (after the heal, a member of the latest member set), not C{avoid} if another will do."""
        nodes = sorted(self.nodes)
        if self.healed:
            known = [(p.service.replica.chosen_index, p.node_id) for p in self.processes.values()
                     if getattr(p.service, "replica", None) is not None]
            if known:
                config = self.processes[max(known)[1]].service.replica.config
                nodes = sorted(config.members & set(self.nodes)) or nodes
        others = [n for n in nodes if n != avoid]
        return self.watch_rng.choice(others or nodes)

    def _watch_again(self, client: WatchClient, avoid: int, pause=(0.01, 0.1)) -> None:
        """
        Watch again (from the client's cursor; 0: from now) at a node other
        than C{avoid}, after a pause; a stream still being opened is given up.
        """
        if self.done:
            return
        client.process = client.watcher = client.sink = None
        client.attempt += 1
        client.opening = True
        client.asked_at = self.world.now
        self.world.later(self.watch_rng.uniform(*pause), self._watch_open, client, avoid, client.attempt)

    def _watch_open(self, client: WatchClient, avoid: int, attempt: int) -> None:
        if attempt != client.attempt:
            return
        node_id = self._watch_target(client, avoid)
        process = self.processes.get(node_id)
        if process is None or not process.alive:
            self.world.later(0.001, self._watch_refused, client, node_id, attempt)  # connection refused
            return
        process.io(0.0005, self._watch_call, client, process, attempt)

    def _watch_refused(self, client: WatchClient, node_id: int, attempt: int) -> None:
        if attempt == client.attempt:
            self._watch_again(client, node_id)

    def _watch_call(self, client: WatchClient, process, attempt: int) -> None:
        """
        In the node's process: create the watch, as the gRPC edge does
        (its first answer, "created", carries the store's revision: where
        "now" is for the client).
        """
        service = process.service
        spec = WatchSpec(client.key, client.end, client.cursor, client.prev_kv, client.no_put, client.no_delete)
        sink = SimSink(self, client, process.node_id, process, spec)
        credential = None
        if self.auth is not None:
            from kvpaxos.testing.simauth import ROOT_CREDENTIAL

            credential = ROOT_CREDENTIAL
        try:
            watcher = service.watch(spec, sink, credential)
        except ApiError as error:
            self._log(f"watch client {client.id} refused at node {process.node_id}: {error}")
            self.world.later(0.0005, self._watch_refused, client, process.node_id, attempt)
            return
        if attempt != client.attempt:
            sink.state = CANCELLED  # the client gave this stream up: it closes it
            service.cancel_watch(watcher)
            return
        client.opening = False
        if client.cursor == 0:
            client.cursor = service.store.revision() + 1
        client.node, client.process, client.watcher, client.sink = process.node_id, process, watcher, sink
        client.heard_at = self.world.now
        self.result.ops["watch created"] += 1
        self._log(f"watch client {client.id} watches {spec.key!r}..{spec.end!r} at node {process.node_id}"
                  f" from {client.cursor}")

    def _watch_poll(self, client: WatchClient) -> None:
        """Now and then: has the stream ended, is there news, is it time to give up or cancel?"""
        if self.done or self.violation is not None:
            return
        rng = self.watch_rng
        self.world.later(rng.uniform(0.05, 0.15), self._watch_poll, client)
        process, sink = client.process, client.sink
        if client.opening:
            if self.world.now - client.asked_at > 2.0:
                self._watch_again(client, 0)  # no answer: the node is paused, or the call was lost
            return
        if process is None:
            return
        if not process.alive or self.processes.get(client.node) is not process:
            sink.state = LOST  # its stream ended with the process
            self.result.faults["watch stream lost"] += 1
            self._watch_again(client, client.node)
            return
        if self.world.now - client.heard_at > client.patience_s:
            self.result.faults["watch given up"] += 1
            self._watch_cancel(client)
        elif rng.random() < 0.01:
            self.result.faults["watch cancelled"] += 1
            self._watch_cancel(client)
        elif not sink.asking and sink.state in (OPEN, FULL):
            sink.asking = True
            process.io(0.0005, self._watch_ask, client, process, sink, client.watcher)

    def _watch_cancel(self, client: WatchClient) -> None:
        process, sink, watcher = client.process, client.sink, client.watcher
        sink.state = CLOSING

        def cancel() -> None:
            process.service.cancel_watch(watcher)
            if sink.state == CLOSING:
                sink.state = CANCELLED

        process.io(0.0005, cancel)
        self._watch_again(client, client.node)

    def _watch_ask(self, client: WatchClient, process, sink: SimSink, watcher) -> None:
        """In the node's process: a progress request (C{watch_caught_up})."""
        revision = process.service.watch_caught_up(watcher)
        self.world.later(0.0005, self._watch_progress, client, sink, revision)

    def _watch_progress(self, client: WatchClient, sink: SimSink, revision: Optional[int]) -> None:
        sink.asking = False
        if client.sink is not sink or sink.state not in (OPEN, FULL) or revision is None:
            return
        if revision >= client.cursor:
            # Everything through it was sent: the client resumes after it.
            self.result.ops["watch progress"] += 1
            self._watch_waiting.append(("progress", client.id, sink.node_id, sink.spec, client.cursor,
                                        revision, ()))
            client.cursor = revision + 1
            client.heard_at = self.world.now
            self._watch_recheck()

    def _watch_ready(self, sink: SimSink) -> None:
        if sink.state != FULL:
            return
        sink.state = OPEN
        process, client = sink.process, sink.client
        if process.alive and client.sink is sink:
            process.io(0.0005, process.service.watch_ready, client.watcher)

    # --- what the nodes send ---------------------------------------------------------

    def _watch_batch(self, sink: SimSink, batch) -> bool:
        """A node sends C{batch} to C{sink}: take it (and check it) or say the sink is full."""
        client = sink.client
        if sink.state == CLOSING:
            return True  # on its way into a stream the client closed: lost
        if sink.state in (CANCELLED, ENDED, LOST):
            self.fail("watch", f"node {sink.node_id} sent watch client {client.id} a batch at revision"
                      f" {batch.revision} after its watcher was {sink.state}")
            return True
        if sink.state == FULL:
            return False
        if client.full_share and not self.healed and self.watch_rng.random() < client.full_share:
            # (After the heal a sink always has room: the bound on liveness
            # is the cluster's, not a slow consumer's.)
            sink.state = FULL
            self.result.faults["watch sink full"] += 1
            self.world.later(self.watch_rng.uniform(0.01, 0.5), self._watch_ready, sink)
            return False
        if not batch.events:
            self.fail("watch", f"node {sink.node_id} sent watch client {client.id} an empty batch")
            return True
        if batch.revision < client.cursor:
            self.fail("watch", f"node {sink.node_id} sent watch client {client.id} a batch through revision"
                      f" {batch.revision}, though it had been sent everything before {client.cursor}")
            return True
        self.result.ops["watch batches"] += 1
        self.result.ops["watch events"] += len(batch.events)
        self._watch_waiting.append(("batch", client.id, sink.node_id, sink.spec, client.cursor, batch.revision,
                                    tuple(batch.events)))
        client.cursor = batch.revision + 1
        client.heard_at = self.world.now
        self._watch_recheck()
        return True

    def _watch_ended(self, sink: SimSink, reason) -> None:
        """A node ended a watcher: only ever because the client's next revision was compacted."""
        client = sink.client
        if sink.state in (CANCELLED, ENDED, LOST):
            self.fail("watch", f"node {sink.node_id} ended watch client {client.id}'s watcher after it was"
                      f" {sink.state}")
            return
        closing = sink.state == CLOSING
        sink.state = ENDED
        if type(reason) is not Compacted:
            self.fail("watch", f"node {sink.node_id} ended watch client {client.id}'s watcher with {reason!r}")
            return
        compacted = reason.compact_revision
        store = sink.process.service.store
        if closing:
            return  # lost on the way: the client resumes from its own cursor
        if not client.cursor < compacted:
            self.fail("watch", f"node {sink.node_id} told watch client {client.id} its history is compacted"
                      f" at {compacted}, though the client needs revision {client.cursor}")
            return
        if store.compacted_revision() != compacted:
            self.fail("watch", f"node {sink.node_id} told watch client {client.id} the history is compacted at"
                      f" {compacted}; its store's is {store.compacted_revision()}")
            return
        self._watch_waiting.append(("compacted", client.id, sink.node_id, store.applied_index(), compacted))
        self.result.ops["watch compacted"] += 1
        self._log(f"watch client {client.id} told at node {sink.node_id}: compacted at {compacted}"
                  f" (needed {client.cursor})")
        client.cursor = compacted
        self._watch_again(client, 0)
        self._watch_recheck()

    # --- the reference and the checks ---------------------------------------------

    def _watch_reference_applied(self, slot: int) -> None:
        """The reference applied C{slot}: archive its history; check a compaction it made."""
        history = self.reference_history
        before = history.compacted_at(slot)
        problem = history.applied(slot, self.reference.state, self.chosen_at.get(slot, self.world.now))
        if problem:
            self.fail("compaction", problem)
            return
        after = history.compacted_at(slot)
        if after != before:
            self.result.ops["history compacted"] += 1
            self._check_retention(slot, after)

    def _check_retention(self, slot: int, compacted: int) -> None:
        """The compaction to C{compacted} at C{slot} keeps what the limits promise."""
        limits, history = self.history_limits, self.reference_history
        if limits.revisions and compacted <= history.revision - limits.revisions + 1:
            return  # the count rule allows it
        steps = 0.0
        value = self.chosen.get(slot)
        if type(value) is SlotBatch:
            for data in value.commands:
                request = decode_request(data)
                if request.op is Op.COMPACT and request.compact_revision == compacted:
                    key = (request.origin, request.request_id >> 32, compacted)
                    steps = max([steps] + [s for _, s in self.compactions_proposed.get(key, ())])
        if limits.age_s:
            newest = history.chosen_at.get(compacted - 1, 0.0)
            allowed = self.chosen_at.get(slot, self.world.now) - (limits.age_s - steps) / (1 + DRIFT_MAX)
            if newest <= allowed + 1e-9:
                return  # the age rule allows it
        self.fail(
            "compaction",
            f"slot {slot} compacted the history to revision {compacted} (revision {compacted - 1} chosen at"
            f" {history.chosen_at.get(compacted - 1, 0.0):.3f} s, the compaction at"
            f" {self.chosen_at.get(slot, self.world.now):.3f} s, the store at revision {history.revision}),"
            f" keeping less than {limits}",
        )

    def _compaction_chosen(self, slot: int, request) -> None:
        """A COMPACT is chosen: a node proposed it, while it was the leader."""
        key = (request.origin, request.request_id >> 32, request.compact_revision)
        proposed = self.compactions_proposed.get(key)
        if not proposed:
            self.fail("validity", f"slot {slot} holds a compaction no node proposed: {request!r}")
        elif not all(leader for leader, _ in proposed):
            self.fail("compaction", f"slot {slot} holds a compaction to revision {request.compact_revision}"
                      f" that node {request.origin} proposed while it was not the leader")

    def _watch_recheck(self) -> None:
        """Check every waiting batch, progress and compaction the reference has reached."""
        history, reference = self.reference_history, self.reference
        waiting = []
        for item in self._watch_waiting:
            if item[0] == "compacted":
                _, client_id, node_id, applied, compacted = item
                if reference.applied < applied:
                    waiting.append(item)
                elif history.compacted_at(applied) != compacted:
                    self.fail("watch", f"node {node_id} told watch client {client_id} the history is compacted"
                              f" at {compacted} at slot {applied}; the chosen log gives"
                              f" {history.compacted_at(applied)}")
                    return
                continue
            kind, client_id, node_id, spec, first, last, events = item
            if history.revision < last:
                waiting.append(item)
                continue
            expected = history.between(spec, first, last)
            if expected != events:
                what = "a progress answer" if kind == "progress" else "a batch"
                self.fail("watch", f"node {node_id} sent watch client {client_id} {what} for revisions {first}"
                          f"..{last} of {spec} that is not the log's: {_describe(expected, events)}")
                return
        self._watch_waiting = waiting

    def _watch_behind(self) -> list:
        final = self.reference_history.revision
        return [(c.id, c.node, c.cursor) for c in self.watch_clients.values() if c.cursor <= final]

    # --- the heal ----------------------------------------------------------------------

    def _converged(self) -> None:
        """Converged also means: every watch client has been sent everything (or told there is nothing more)."""
        if self.healed and self._watch_behind():
            self.world.later(0.05, self._converged)
            return
        super()._converged()

    def _deadline(self) -> None:
        behind = self._watch_behind()
        if not behind:
            super()._deadline()
            return
        self.fail(
            "liveness",
            f"watch clients (id, node, cursor) {behind[:3]} not past the final revision"
            f" {self.reference_history.revision} {LIVENESS_BOUND_S} s after the heal"
            f" ({self._liveness_acked} of {LIVENESS_COMMANDS} writes acknowledged)",
        )

    def _final_checks(self) -> None:
        super()._final_checks()
        if self.violation is not None:
            return
        self._watch_recheck()
        if self.violation is None and self._watch_waiting:
            self.fail("watch", f"watch answers at revisions the log never reached: {self._watch_waiting[:2]}")
