"""
The lock recipe in the node simulator (issue 14; L{LocksMixin}, part of
L{kvpaxos.testing.sim.Simulation}).

In a share of the plain seeds (L{draw}) and in every seed of scenario
C{locks}, two or three lock clients (L{LockClient}) contend for one lock,
C{lk}, with the product's own recipe object
(L{kvpaxos.client.concurrency_core.Contender}, the one
C{client.lock()} drives), against the simulated nodes and under the
seed's faults.  Each client is what the asyncio driver is, step by step:
a session (a lease granted through any node, kept alive every third of
its TTL through any node, given up once its own count says it may have
run out, or told it is gone); the contender's transaction, its readings
of the prefix and its watch of the predecessor's key, through any node
(a watch that goes silent or whose node goes away is given up and the
keys read again, which the recipe allows); once it owns the lock, a read
of the counter key C{lkc} and a guarded increment (the write carries
L{kvpaxos.client.concurrency_core.guard}, the fencing compare), perhaps
another, then a release (C{resign_txn}); sometimes it abandons the lock
instead and lets its lease lapse, as a crashed holder does.  A write with
no session whose outcome is unknown (a timeout) is never sent again: the
client gives up the session and lets the lease lapse.  Every write is a
command of its own (the values carry the client and a count), as the
simulator's validity check asks.  The clients stop a little before the
heal, releasing and revoking what they hold; after the heal each takes
the lock once more, increments and releases, within the liveness bound.

What is checked (violation C{lock}), on the chosen log as the reference
applies it, revision by revision: every write of the counter is made by
the contender that owns the lock at that revision (the key with the
lowest create revision under the prefix, as the reference's own events
give it, not as the recipe computes it), and sets the counter to one more
than it was (no increment lost).  The session's keep-alives go to the
lease checks (L{kvpaxos.testing.simleasecheck}) as the lease clients' do.
The plants that re-open the recipe's bugs are in
L{kvpaxos.testing.lockplants}.

Nothing here reads the wall clock or iterates an unordered collection;
the draws come from the workload's own stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer

from kvpaxos.api import convert
from kvpaxos.api.errors import ApiError
from kvpaxos.client import concurrency_core as recipe
from kvpaxos.client.requests import put_op
from kvpaxos.kv.commands import Op, Range, Request
from kvpaxos.kv.history import EventKind
from kvpaxos.kv.leases import LeaseGranted, LeaseRefused
from kvpaxos.node.watchers import WatchSpec
from kvpaxos.testing.reference import tag_of
from kvpaxos.testing.scenario_kit import Scenario
from kvpaxos.testing.simrecords import ATTEMPT_TIMEOUT_S, LIVENESS_BOUND_S, REQUEST_TIMEOUT_S
from kvpaxos.v1 import kv_pb2

#: The lock's name, its prefix, and the key its holders increment.
LOCK_NAME = b"lk"
PREFIX = recipe.recipe_prefix(LOCK_NAME)
COUNTER = b"lkc"
#: The share of the plain seeds (no scenario, no auth workload) that run the lock clients.
SHARE = 0.15
#: How many lock clients a seed runs.
CLIENTS = (2, 3)
#: The share of a holder's writes before which its process stalls, often past its TTL.
STALL_SHARE = 0.4
#: How long a lock client's watch may stay silent before it reads the keys again.
PATIENCE_S = (0.8, 2.0)


@dataclass
class LockClient:
    """One contender for the lock (L{LocksMixin})."""

    id: int
    #: The session: its lease (0: none), TTL, and since when the client counts it alive.
    lease: int = 0
    ttl: int = 0
    alive_from: float = 0.0
    #: Bumped when a session ends: what was in flight for the old one is ignored.
    epoch: int = 0
    #: "idle", "granting", "acquiring", "holding", "releasing", "stopped", "final", "done".
    state: str = "idle"
    contender: Optional[recipe.Contender] = None
    owned: Optional[recipe.Owned] = None
    #: The node it was last told leads.
    guess: int = 0
    #: The call it waits for (a number), and the keep-alive it waits for.
    calls: int = 0
    waiting: int = 0
    asking: int = 0
    #: Writes made (each value unique), increments it was told succeeded.
    writes: int = 0
    increments: int = 0
    #: The watch of the predecessor's key: its process, watcher, number, and when it last heard.
    watch_process: Any = None
    watcher: Any = None
    watch_number: int = 0
    heard_at: float = 0.0
    patience_s: float = 1.0
    #: After the heal: this client's last round (taken the lock once more and released it).
    final: bool = False
    #: Steps planned (a planned step runs only if no other was taken since).
    steps: int = 0
    #: Until when its process is stalled (L{STALL_SHARE}).
    stalled_until: float = 0.0


class _Sink:
    """The client's end of its watch of one key (L{kvpaxos.node.watchers.Sink})."""

    def __init__(self, sim, client: LockClient, number: int) -> None:
        self.sim, self.client, self.number = sim, client, number

    def send(self, batch) -> bool:
        deleted = any(event.kind is EventKind.DELETE for event in batch.events)
        if deleted:
            self.sim.world.later(0.0005, self.sim._lock_watch_fired, self.client, self.number, "deleted")
        return True

    def end(self, reason) -> None:
        self.sim.world.later(0.0005, self.sim._lock_watch_fired, self.client, self.number, "ended")


class LockWorkload:
    """This seed's lock clients and what the chosen log showed of them."""

    def __init__(self, sim, rng: random.Random) -> None:
        self.rng = random.Random(rng.getrandbits(64))
        self.clients = {i: LockClient(i, patience_s=self.rng.uniform(*PATIENCE_S))
                        for i in range(1, self.rng.randint(*CLIENTS) + 1)}
        #: When the clients stop contending: a little before the heal.
        self.wind_down = sim.fault_s - self.rng.uniform(0.3, 1.0)
        #: The lock's keys as the chosen log has them (key -> create revision), and the counter.
        self.queue: dict[bytes, int] = {}
        self.counter = 0


def draw(sim, drawn: bool) -> None:
    """Run the lock clients in a share of the plain random seeds (an independent draw)."""
    if sim.auth is None and sim.scenario is None and sim.random_faults and drawn \
            and random.Random(sim.seed * 1_000_033 + 0x10C).random() < SHARE:
        sim.locks = LockWorkload(sim, random.Random(sim.seed * 7_927 + 0x10C))
        sim.result.faults["lock workload"] += 1


class LockScenario(Scenario):
    """Scenario C{locks}: the lock clients in every seed (the module's docstring)."""

    name = "locks"
    holes = "issue 14 part 4"
    drawn = False  # the random mix runs the clients in a share of its plain seeds instead (L{draw})

    def configure(self, sim) -> None:
        sim.locks = LockWorkload(sim, random.Random(self.rng.getrandbits(64)))


def _value(count: int, key: bytes) -> bytes:
    return b"%d %s" % (count, key)


def _count(kv) -> int:
    return 0 if kv is None else int(kv.value.split(b" ", 1)[0])


class LocksMixin:
    """The lock clients and the lock's checks of a L{kvpaxos.testing.sim.Simulation}."""

    locks: Optional[LockWorkload] = None

    def _lock_start(self) -> None:
        if self.locks is None:
            return
        for client in self.locks.clients.values():
            self.world.later(self.locks.rng.uniform(0.2, 0.6), self._lock_step, client)

    # --- calls to a node -----------------------------------------------------------

    def _lock_node(self, client: LockClient, fresh: bool = False) -> int:
        rng = self.locks.rng
        if not fresh and client.guess in self.nodes and rng.random() < 0.7:
            return client.guess
        return rng.choice(sorted(self.nodes))

    def _lock_call(self, client: LockClient, make, done, fresh: bool = False) -> None:
        """
        Call C{make(service)} (a Deferred) in a node's process; C{done(how,
        value)} gets "ok", "error" (a Failure), "refused" (not delivered)
        or "timeout", once, if the client still waits for this call.
        """
        node = self._lock_node(client, fresh)
        client.calls += 1
        number = client.waiting = client.calls
        process = self.processes.get(node)
        if process is None or not process.alive:
            self.world.later(0.001, self._lock_finish, client, number, node, done, "refused", None)
            return
        self.world.later(ATTEMPT_TIMEOUT_S, self._lock_finish, client, number, node, done, "timeout", None)
        process.io(0.0005, self._lock_in_node, client, number, node, done, make, process)

    def _lock_in_node(self, client, number, node, done, make, process) -> None:
        try:
            d = make(process.service)
        except ApiError:
            d = defer.fail()
        d.addCallbacks(
            lambda value: self.world.later(0.0005, self._lock_finish, client, number, node, done, "ok", value),
            lambda failure: self.world.later(0.0005, self._lock_finish, client, number, node, done, "error",
                                             failure))

    def _lock_finish(self, client, number, node, done, how, value) -> None:
        if number != client.waiting or self.violation is not None or self.done:
            return
        client.waiting = 0
        if how == "ok":
            process = self.processes.get(node)
            leader = process.service.status().leader if process is not None and process.alive else None
            client.guess = leader or node
        done(how, value)

    def _lock_pause(self, client: LockClient, low: float = 0.02, high: float = 0.2) -> None:
        """The client's next step, a little later (unless another is taken first)."""
        client.steps += 1
        self.world.later(self.locks.rng.uniform(low, high), self._lock_step, client, client.steps)

    def _lock_later(self, client: LockClient, call, *args) -> None:
        """C{call(*args)} a little later, if the session is still the one it is now."""
        epoch = client.epoch

        def again():
            if epoch == client.epoch and not self.done and self.violation is None:
                call(*args)

        self.world.later(self.locks.rng.uniform(0.01, 0.1), again)

    # --- the session -----------------------------------------------------------------

    def _lock_step(self, client: LockClient, step: int = 0) -> None:
        """What an idle client does next: a session, then an acquisition."""
        if step and step != client.steps:
            return  # another step was taken since this one was planned
        client.steps += 1
        if self.done or self.violation is not None or client.state not in ("idle", "final"):
            return
        if client.state == "idle" and (self.healed or self.world.now >= self.locks.wind_down):
            self._lock_stop(client)
            return
        if client.waiting or client.contender is not None:
            raise AssertionError(f"lock client {client.id} stepped while busy")  # the workload's own bug
        if not client.lease:
            self._lock_grant(client)
        else:
            self._lock_acquire(client)

    def _lock_grant(self, client: LockClient) -> None:
        epoch = client.epoch
        client.state = "granting" if client.state == "idle" else client.state

        ttl = self.locks.rng.choice((0, 1, 2))  # 0: the node's least (raised, as 1 is here)

        def grant(service):
            self.submitted.add(("lease", int(Op.LEASE_GRANT), 0, max(ttl, service.min_lease_ttl)))
            return service.lease_grant(ttl, REQUEST_TIMEOUT_S)

        sent = self.world.now

        def done(how, value):
            if epoch != client.epoch:
                return
            if client.state == "granting":
                client.state = "idle"
            if how == "ok" and type(value) is LeaseGranted:
                client.lease, client.ttl, client.alive_from = value.id, value.ttl, sent
                # The operator's sweep after the heal leaves it to its client (it revokes or lets it lapse).
                self.lease_calls.setdefault(value.id, sent)
                self._lease_client_acked(value.id, sent, value.ttl)
                self.result.ops["lock session"] += 1
                self._log(f"lock client {client.id}: session lease {value.id} ({value.ttl} s)")
                self.world.later(self.locks.rng.uniform(value.ttl / 4, value.ttl / 3), self._lock_keep, client,
                                 client.epoch)
                self._lock_step(client)
            else:
                self._lock_pause(client, 0.05, 0.3)  # (a timed-out grant's lease, if any, lapses)

        self._lock_call(client, grant, done)

    def _lock_keep(self, client: LockClient, epoch: int, again: bool = True) -> None:
        """Every third or quarter of the TTL while the session lasts: a keep-alive, unless one is in flight."""
        if epoch != client.epoch or not client.lease or self.done or self.violation is not None:
            return
        now = self.world.now
        if now < client.stalled_until:  # the client's process is stalled: it does nothing till it resumes
            self.world.at(client.stalled_until + 0.0001, self._lock_keep, client, epoch, again)
            return
        if now > client.alive_from + client.ttl:
            self.result.faults["lock session run out (as its client counts)"] += 1
            self._lock_drop(client, "its session may have run out")
            return
        if again:
            self.world.later(self.locks.rng.uniform(client.ttl / 4, client.ttl / 3), self._lock_keep, client, epoch)
        if client.asking:
            return
        self._lease_asks += 1
        number = client.asking = self._lease_asks
        lease, sent = client.lease, now
        node = self._lock_node(client, fresh=not again)
        process = self.processes.get(node)

        def told(how, value):
            if client.asking != number or epoch != client.epoch or self.violation is not None:
                return
            client.asking = 0
            if how == "ok" and value:
                client.alive_from = max(client.alive_from, sent)
                self._lease_client_acked(lease, sent, value)
            elif how == "ok":
                self.result.faults["lock session ended under its client"] += 1
                self._lock_drop(client, "told its lease is gone")
            else:
                self.world.later(self.locks.rng.uniform(0.03, 0.1), self._lock_keep, client, epoch, False)

        if process is None or not process.alive:
            self.world.later(0.001, told, "refused", None)
            return
        self.world.later(0.5, told, "timeout", None)

        def ask():
            process.service.lease_keep_alive(lease).addCallbacks(
                lambda value: self.world.later(0.0005, told, "ok", value),
                lambda failure: self.world.later(0.0005, told, "error", failure))

        process.io(0.0005, ask)

    def _lock_drop(self, client: LockClient, why: str) -> None:
        """End the session (it is lost, or in doubt): what was in flight is ignored; the lease lapses."""
        self._log(f"lock client {client.id}: gives up lease {client.lease}: {why}")
        self._lock_unwatch(client)
        client.epoch += 1
        client.lease = 0
        client.waiting = client.asking = 0
        client.contender = client.owned = None
        if client.state not in ("final", "stopped", "done"):
            client.state = "idle"
        if client.state != "stopped":
            self._lock_pause(client, 0.05, 0.3)

    def _lock_stop(self, client: LockClient) -> None:
        """Wind down before the heal: revoke the session's lease (its key goes with it); then wait for the heal."""
        client.state = "stopped"
        if client.lease:
            self._lock_revoke(client, lambda: None)

    def _lock_revoke(self, client: LockClient, then) -> None:
        lease, epoch = client.lease, client.epoch
        request = Request(Op.LEASE_REVOKE, lease=lease)
        self.submitted.add(tag_of(request))
        self.lease_calls[lease] = min(self.lease_calls.get(lease, self.world.now), self.world.now)

        def done(how, value):
            if epoch != client.epoch:
                return
            if how == "refused":
                self._lock_call(client, lambda service: service.lease_revoke(lease, REQUEST_TIMEOUT_S), done,
                                fresh=True)
                return
            self._lock_drop_quietly(client)
            then()

        self._lock_call(client, lambda service: service.lease_revoke(lease, REQUEST_TIMEOUT_S), done)

    def _lock_drop_quietly(self, client: LockClient) -> None:
        self._lock_unwatch(client)
        client.steps += 1
        client.epoch += 1
        client.lease = 0
        client.waiting = client.asking = 0
        client.contender = client.owned = None

    # --- acquiring -------------------------------------------------------------------

    def _lock_acquire(self, client: LockClient) -> None:
        if client.state == "idle":
            client.state = "acquiring"
        client.writes += 1
        client.contender = recipe.Contender(PREFIX, client.lease, value=b"c%d.%d" % (client.id, client.writes))
        self._lock_perform(client, client.contender.begin())

    def _lock_perform(self, client: LockClient, step) -> None:
        """Perform one step of the contender's acquisition."""
        epoch = client.epoch
        if isinstance(step, recipe.Txn):
            self._lock_txn(client, step, lambda response: self._lock_perform(client, client.contender.txn_answered(
                response)))
        elif isinstance(step, recipe.Listing):
            query = Range(step.key, step.range_end, keys_only=step.keys_only)

            def listed(how, value):
                if epoch != client.epoch:
                    return
                if how == "ok":
                    self._lock_perform(client, client.contender.listed(value.kvs, value.revision))
                else:  # a read: safe to ask again, elsewhere
                    self._lock_later(client, self._lock_perform, client, step)

            self._lock_call(client, lambda service: service.range(query, REQUEST_TIMEOUT_S), listed)
        elif isinstance(step, recipe.AwaitDelete):
            self._lock_watch(client, step)
        elif isinstance(step, recipe.Owned):
            client.state = "holding" if client.state == "acquiring" else client.state
            client.owned = step
            self.result.ops["lock acquired"] += 1
            self._log(f"lock client {client.id} owns the lock: {step.key!r} created at {step.create_revision}")
            self._lock_increment(client)
        else:  # Lost: its key is gone (its lease ended)
            self.result.faults["lock lost while acquiring"] += 1
            self._lock_drop(client, step.reason)

    def _lock_txn(self, client: LockClient, step: recipe.Txn, answered) -> None:
        """Send the recipe's transaction; an unknown outcome ends the session (never sent twice)."""
        epoch = client.epoch
        request = convert.txn_request_from_proto(
            kv_pb2.TxnRequest(compare=step.compares, success=step.success, failure=step.failure))
        self.submitted.add(tag_of(request))

        def done(how, value):
            if epoch != client.epoch:
                return
            if how == "refused":  # certainly not delivered: to another node
                self._lock_later(client, self._lock_call, client, submit, done, True)
            elif how == "ok" and type(value) is LeaseRefused:  # the contender's put names a lease gone
                self.result.faults["lock session ended under its client"] += 1
                self._lock_drop(client, f"its put was refused: {value!r}")
            elif how == "ok":
                header = kv_pb2.ResponseHeader(revision=value.revision)
                answered(convert.txn_response(value, header))
            else:
                self.result.faults["lock write outcome unknown"] += 1
                self._lock_drop(client, f"a transaction's outcome is unknown ({how})")

        def submit(service):
            return service.submit(request, REQUEST_TIMEOUT_S)

        self._lock_call(client, submit, done)

    def _lock_watch(self, client: LockClient, step: recipe.AwaitDelete) -> None:
        """Watch the predecessor's key for its delete, at a node (a silent or lost watch: read again)."""
        self._lock_unwatch(client)
        epoch = client.epoch
        client.watch_number += 1
        number = client.watch_number
        node = self._lock_node(client)
        process = self.processes.get(node)
        client.heard_at = self.world.now
        self.world.later(0.1, self._lock_watch_poll, client, number)
        if process is None or not process.alive:
            return  # refused: the poll reads the keys again

        def start():
            if number != client.watch_number or epoch != client.epoch:
                return
            spec = WatchSpec(step.key, None, step.start_revision, no_put=True)
            try:
                watcher = process.service.watch(spec, _Sink(self, client, number))
            except ApiError:
                return
            client.watch_process, client.watcher = process, watcher
            self.result.ops["lock watch"] += 1

        process.io(0.0005, start)

    def _lock_watch_poll(self, client: LockClient, number: int) -> None:
        if number != client.watch_number or self.done or self.violation is not None:
            return
        process = client.watch_process
        lost = process is not None and (not process.alive or self.processes.get(process.node_id) is not process)
        if lost or self.world.now - client.heard_at > client.patience_s:
            self.result.faults["lock watch given up"] += 1
            self._lock_watch_fired(client, number, "given up")
            return
        self.world.later(0.1, self._lock_watch_poll, client, number)

    def _lock_watch_fired(self, client: LockClient, number: int, how: str) -> None:
        """The predecessor's key was deleted (or the watch ended, or was given up): read the keys again."""
        if number != client.watch_number or client.contender is None or self.violation is not None:
            return
        self._lock_unwatch(client)
        self.result.ops[f"lock watch {how}"] += 1
        self._lock_perform(client, client.contender.key_deleted())

    def _lock_unwatch(self, client: LockClient) -> None:
        client.watch_number += 1
        process, watcher = client.watch_process, client.watcher
        client.watch_process = client.watcher = None
        if process is not None and process.alive:
            process.io(0.0005, process.service.cancel_watch, watcher)

    # --- holding ---------------------------------------------------------------------

    def _lock_increment(self, client: LockClient) -> None:
        """Read the counter, then write one more under the lock's guard."""
        epoch, owned = client.epoch, client.owned
        query = Range(COUNTER)

        def read(how, value):
            if epoch != client.epoch:
                return
            if how != "ok":
                self._lock_later(client, self._lock_increment, client)
                return
            count = _count(value.kvs[0] if value.kvs else None)
            rng = self.locks.rng
            if client.state == "holding" and rng.random() < STALL_SHARE:
                # The holder's process stalls (a long GC) between its read and
                # its write, often past its lease's TTL: its keep-alives wait
                # too, and on resume the write goes first (the next thing it does).
                client.stalled_until = self.world.now + rng.uniform(1.2, 3.0) * client.ttl
                self.result.faults["lock holder stalls before its write"] += 1
                self.world.at(client.stalled_until, write, count)
                return
            write(count)

        def write(count):
            if epoch != client.epoch or self.done or self.violation is not None:
                return
            client.writes += 1
            step = recipe.Txn((recipe.guard(owned.key, owned.create_revision),),
                              (put_op(COUNTER, _value(count + 1, owned.key)),))
            self._lock_txn(client, step, incremented)

        def incremented(response):
            if not response.succeeded:
                self.result.faults["lock lost while held"] += 1
                self._lock_drop(client, "its guarded write failed: it no longer owns the lock")
                return
            client.increments += 1
            self.result.ops["lock increment"] += 1
            rng = self.locks.rng
            if client.state == "holding" and rng.random() < 0.3:
                self._lock_later(client, self._lock_increment, client)
            elif client.state == "holding" and rng.random() < 0.15:
                self.result.faults["lock holder abandons its session"] += 1
                self._lock_drop(client, "abandoned (as a crashed holder)")
            else:
                self._lock_later(client, self._lock_release, client)

        self._lock_call(client, lambda service: service.range(query, REQUEST_TIMEOUT_S), read)

    def _lock_release(self, client: LockClient) -> None:
        if client.owned is None:
            return
        owned = client.owned
        step = recipe.resign_txn(owned.key, owned.create_revision)
        if client.state == "final":
            self._lock_txn(client, step, lambda response: self._lock_revoke(client, lambda: self._lock_finished(
                client)))
            return
        client.state = "releasing"

        def released(response):
            client.state, client.owned, client.contender = "idle", None, None
            self.result.ops["lock released"] += 1
            if self.locks.rng.random() < 0.3:  # a new session next time
                self._lock_revoke(client, lambda: self._lock_pause(client))
            else:
                self._lock_pause(client)

        self._lock_txn(client, step, released)

    # --- the heal ----------------------------------------------------------------------

    def _heal(self) -> None:
        super()._heal()
        if self.locks is None:
            return
        for client_id in sorted(self.locks.clients):
            client = self.locks.clients[client_id]
            self.world.later(self.locks.rng.uniform(0.05, 0.3), self._lock_final, client)

    def _lock_final(self, client: LockClient) -> None:
        """After the heal: take the lock once more (in a new session), increment, release, revoke."""
        if client.state == "done" or self.done:
            return
        self._lock_drop_quietly(client)  # what it held or asked for before lapses
        client.state, client.final = "final", True
        self._lock_step(client)

    def _lock_finished(self, client: LockClient) -> None:
        client.state = "done"
        self.result.ops["lock final round"] += 1

    def _lock_behind(self) -> list:
        if self.locks is None:
            return []
        return [c.id for c in self.locks.clients.values() if c.state != "done"]

    def _converged(self) -> None:
        if self.healed and self._lock_behind():
            self.world.later(0.05, self._converged)
            return
        super()._converged()

    def _deadline(self) -> None:
        behind = self._lock_behind()
        if behind:
            self.fail("liveness", f"lock clients {behind} did not take and release the lock"
                      f" {LIVENESS_BOUND_S} s after the heal")
            return
        super()._deadline()

    # --- the checks --------------------------------------------------------------------

    def _lease_reference_applied(self, slot: int) -> None:
        super()._lease_reference_applied(slot)
        if self.locks is None or self.violation is not None:
            return
        for _request, _result, before, after in self.reference.slot_results:
            for revision in range(before + 1, after + 1):
                self._lock_revision(revision)
                if self.violation is not None:
                    return

    def _lock_revision(self, revision: int) -> None:
        """Follow the lock's keys and the counter through one revision of the chosen log."""
        locks = self.locks
        events = self._lease_events_at(revision)
        for event in events:
            if event.kind is EventKind.PUT and event.kv.key == COUNTER:
                count, writer = event.kv.value.split(b" ", 1)
                owner = min(((created, key) for key, created in locks.queue.items()), default=(0, None))[1]
                if writer != owner:
                    queue = sorted((created, key.decode()) for key, created in locks.queue.items())
                    self.fail("lock", f"revision {revision}: {writer!r} wrote the counter while {owner!r}"
                              f" owned the lock (the lock's keys by create revision: {queue})")
                    return
                if int(count) != locks.counter + 1:
                    self.fail("lock", f"revision {revision}: the counter went from {locks.counter} to"
                              f" {int(count)}: an increment under the lock was lost")
                    return
                locks.counter = int(count)
        for event in events:
            key = event.kv.key
            if not key.startswith(PREFIX):
                continue
            if event.kind is EventKind.PUT:
                locks.queue[key] = event.kv.create_revision
            else:
                locks.queue.pop(key, None)

