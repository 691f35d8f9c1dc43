"""
The node simulator's network (L{kvpaxos.testing.sim}): peer links that
behave like TCP, in the virtual time of L{kvpaxos.testing.simworld}.

  - L{Network} and L{SimTransport} (an L{IPeerTransport}): one connection
    (L{Connection}) per ordered pair of nodes, opened by the first (as a
    node's C{PeerNetwork} opens one link per peer), ordered in each
    direction; a dropped connection loses what is in flight and fails its
    pending calls; the opener reconnects with backoff (L{BACKOFF_FIRST_S},
    L{BACKOFF_MAX_S}).  A blocked direction (a partition, one-way or not)
    holds the bytes, as TCP retransmits them, until it heals or the
    connection is dropped.  In adversarial seeds Paxos messages (only) are
    dropped, duplicated and reordered as datagrams; forwards, read
    indexes and lease calls stay exactly-once per call.
  - Links follow the member set, as the product's do, once a node has one
    with addresses (C{set_peers}; the simulator goes by the members, not
    their addresses): a node opens links only to its members, closes the
    links to and from a node that is no longer one (after what is written
    is carried), and refuses a connection from a non-member; from a node
    whose removal it has chosen, as REMOVED_MEMBER (the handshake's
    refusal), which tells the opener (C{removed_by_peer}).

Every random choice comes from the C{random.Random} the simulation hands
in; nothing here reads the wall clock, sleeps, starts a thread or opens a
port.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from zope.interface import implementer

from kvpaxos.encoding.transfer import decode as decode_transfer
from kvpaxos.encoding.transfer import encode as encode_transfer
from kvpaxos.node.interfaces import IPeerTransport, MembershipRejected, NotLeaderError, Unavailable
from kvpaxos.node.peer_commands import ForwardFailed, PeerRequestError, PeerUnreachable
from kvpaxos.testing.simworld import Process, VirtualTime


CALL_TIMEOUT_S = 5.0
#: Reconnect backoff: first delay, cap (ClientService with backoffPolicy).
#: The product waits 0.1 s, then up to 1 s, at its default tick of 50 ms;
#: the simulation ticks every 10 ms, so its backoff is a fifth of that.
#: What matters is the backoff against the lease and the election timeout:
#: at 0.1 s here a restarted node was unreachable for longer than any
#: lease, and hole 5 of issue 9 (a Prepare in a restarted node's start
#: window) could not happen in the simulator.
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.2
class Connection:
    """
    One TCP connection, opened by C{src} to C{dst} (between two processes):
    direction 0 carries src -> dst, direction 1 the answers back.
    """

    _ids = itertools.count(1)

    def __init__(self, src: Process, dst: Process) -> None:
        self.id = next(self._ids)
        self.src = src
        self.dst = dst
        self.up = True
        self.last = [0.0, 0.0]  # the latest arrival scheduled per direction
        self.held: list[list] = [[], []]  # bytes held by a blocked direction
        self.calls: dict = {}  # call id -> (kind, Deferred, commands, timer)

    def ends(self, direction: int) -> tuple[int, int]:
        if direction == 0:
            return self.src.node_id, self.dst.node_id
        return self.dst.node_id, self.src.node_id

    def receiver(self, direction: int) -> Process:
        return self.dst if direction == 0 else self.src


class Network:
    """
    Every connection between the simulated processes.

    @param rng: this network's random stream.
    @param processes: node id -> its live L{Process} (or absent).
    @param faults: the adversarial datagram faults for Paxos messages, or
        None for TCP behaviour only.
    @param on_connect: (src process, dst process) when a connection comes
        up (the simulation tells both services the peer's timing).
    """

    def __init__(self, world: VirtualTime, rng, processes: dict, delay_s: tuple,
                 faults=None, on_connect: Optional[Callable] = None, log=None) -> None:
        self.world = world
        self.rng = rng
        self.processes = processes
        self.delay_s = delay_s
        self.faults = faults
        self._on_connect = on_connect
        self._log = log or (lambda text: None)
        self.conns: dict[tuple[int, int], Connection] = {}
        self.blocked: set = set()
        self._backoff: dict[tuple[int, int], float] = {}
        self._connecting: set = set()
        self._call_ids = itertools.count(1)
        self.counts = {"dropped_connections": 0, "reconnects": 0, "held": 0, "replies lost": 0,
                       "refused handshakes": 0, "told removed": 0}
        #: The chance that a connection is reset just as a call's answer
        #: is sent back (the window in which the caller learns nothing).
        self.reply_loss = 0.0

    # --- connections ---

    def _delay(self) -> float:
        return self.rng.uniform(*self.delay_s)

    def connect_later(self, src: Process, dst_id: int, delay: float) -> None:
        """Have C{src} try to open its connection to C{dst_id} after C{delay}."""
        attempt = (src.node_id, src.epoch, dst_id)
        if attempt in self._connecting:
            return
        self._connecting.add(attempt)
        src.io(delay, self._try_connect, src, dst_id)

    def _try_connect(self, src: Process, dst_id: int) -> None:
        key = (src.node_id, dst_id)
        self._connecting.discard((src.node_id, src.epoch, dst_id))
        if not src.alive or key in self.conns:
            return
        if not _wants(src, dst_id):
            return  # not a member (set_peers opens a link when it becomes one)
        dst = self.processes.get(dst_id)
        if dst is None or not dst.alive or key in self.blocked or key[::-1] in self.blocked:
            backoff = self._backoff.get(key, BACKOFF_FIRST_S / 2) * 2
            backoff = min(backoff, BACKOFF_MAX_S)
            self._backoff[key] = backoff
            self.connect_later(src, dst_id, backoff + self.rng.random() * BACKOFF_MAX_S / 10)
            return
        self.world.later(2 * self._delay(), self._connected, src, dst)

    def _connected(self, src: Process, dst: Process) -> None:
        key = (src.node_id, dst.node_id)
        if not (src.alive and dst.alive) or key in self.conns:
            if src.alive:
                self.connect_later(src, dst.node_id, BACKOFF_FIRST_S)
            return
        if not _wants(dst, src.node_id):
            self._refused(src, dst)
            return
        self._backoff.pop(key, None)
        self.conns[key] = Connection(src, dst)
        self.counts["reconnects"] += 1
        if self._on_connect is not None:
            self._on_connect(src, dst)

    def _refused(self, src: Process, dst: Process) -> None:
        """C{dst} refuses C{src}'s handshake (not a member of its member set): C{src} retries later."""
        key = (src.node_id, dst.node_id)
        self.counts["refused handshakes"] += 1
        was_removed = getattr(dst.service, "was_removed", None)
        told = getattr(src.service, "removed_by_peer", None)
        if was_removed is not None and was_removed(src.node_id) and told is not None:
            why = (f"member {src.node_id} was removed from the cluster (its removal is chosen"
                   f" in node {dst.node_id}'s log)")
            self._log(f"node {dst.node_id} refused node {src.node_id}'s link: REMOVED_MEMBER")
            self.counts["told removed"] += 1
            src.io(self._delay(), told, dst.node_id, why)
        backoff = min(self._backoff.get(key, BACKOFF_FIRST_S / 2) * 2, BACKOFF_MAX_S)
        self._backoff[key] = backoff
        self.connect_later(src, dst.node_id, backoff + self.rng.random() * BACKOFF_MAX_S / 10)

    def peers_changed(self, process: Process) -> None:
        """
        C{process}'s member set changed: close its links to and from the
        nodes no longer in it, once what is written is carried (the
        product's C{set_peers} closes gracefully: the leader's last
        heartbeat reaches the member it removed), and open links to the
        new ones.
        """
        me = process.node_id
        for key in sorted(self.conns):
            conn = self.conns[key]
            other = key[1] if key[0] == me else key[0] if key[1] == me else None
            if other is not None and not _wants(process, other):
                self.world.later(2 * self.delay_s[1], self._close, conn)
        for other in sorted(self.processes):
            if other != me and _wants(process, other) and (me, other) not in self.conns:
                self.connect_later(process, other, self._delay())

    def _close(self, conn: Connection) -> None:
        if conn.up:
            self.drop(conn, "no longer a member")

    def drop(self, conn: Connection, why: str) -> None:
        """Drop C{conn}: what is in flight is lost, pending calls fail, the opener reconnects."""
        if not conn.up:
            return
        conn.up = False
        key = (conn.src.node_id, conn.dst.node_id)
        if self.conns.get(key) is conn:
            del self.conns[key]
        self.counts["dropped_connections"] += 1
        self._log(f"connection {key[0]}->{key[1]} dropped ({why})")
        calls, conn.calls = conn.calls, {}
        for call_id in sorted(calls):
            kind, d, commands, timer = calls[call_id]
            if timer.active():
                timer.cancel()
            lost = Failure(ConnectionLost(why))
            if kind == "forward":
                failure = Failure(ForwardFailed([], list(commands), lost))
            else:
                failure = lost
            conn.src.io(0, _errback, d, failure)
        if conn.src.alive:
            self.connect_later(conn.src, conn.dst.node_id, BACKOFF_FIRST_S)

    def process_died(self, process: Process) -> None:
        for key in sorted(self.conns):
            conn = self.conns[key]
            if conn.src is process or conn.dst is process:
                self.drop(conn, f"node {process.node_id} crashed")

    def drop_between(self, a: int, b: int, why: str) -> None:
        for key in ((a, b), (b, a)):
            conn = self.conns.get(key)
            if conn is not None:
                self.drop(conn, why)

    # --- partitions ---

    def block(self, src: int, dst: int) -> None:
        """Cut the direction src -> dst: its bytes are held; the connection may die of it."""
        if (src, dst) in self.blocked:
            return
        self.blocked.add((src, dst))
        for key in ((src, dst), (dst, src)):
            conn = self.conns.get(key)
            if conn is not None and self.rng.random() < 0.5:
                # TCP gives up (retransmission timeout, keepalive) while it lasts.
                self.world.later(self.rng.uniform(0.2, 2.0), self._give_up, conn, src, dst)

    def _give_up(self, conn: Connection, src: int, dst: int) -> None:
        if conn.up and (src, dst) in self.blocked:
            self.drop(conn, f"{src}->{dst} timed out")

    def heal(self, pairs=None) -> None:
        """Restore the blocked directions C{pairs} (all by default); held bytes flow, in order."""
        pairs = sorted(self.blocked) if pairs is None else sorted(pairs)
        for pair in pairs:
            self.blocked.discard(pair)
        for key in sorted(self.conns):
            conn = self.conns[key]
            for direction in (0, 1):
                if conn.held[direction] and conn.ends(direction) not in self.blocked:
                    held, conn.held[direction] = conn.held[direction], []
                    for call in held:
                        self._carry(conn, direction, call)

    # --- carrying ---

    def _carry(self, conn: Connection, direction: int, call: Callable) -> None:
        """Carry C{call(receiver process)} over C{conn}, in order."""
        if conn.ends(direction) in self.blocked:
            conn.held[direction].append(call)
            self.counts["held"] += 1
            return
        when = max(self.world.now + self._delay(), conn.last[direction])
        conn.last[direction] = when
        self.world.at(when, self._arrive, conn, direction, call)

    def _arrive(self, conn: Connection, direction: int, call: Callable) -> None:
        if conn.up:
            receiver = conn.receiver(direction)
            receiver.io(0, call, receiver)

    def _datagram(self, conn: Connection, call: Callable) -> None:
        """Adversarial seeds: a Paxos message lost, duplicated or reordered."""
        if conn.ends(0) in self.blocked:
            return
        rng, faults = self.rng, self.faults
        if faults.drop and rng.random() < faults.drop:
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        for _ in range(copies):
            if faults.straggle and rng.random() < faults.straggle:
                delay = rng.uniform(*faults.straggle_s)
            else:
                delay = rng.uniform(*faults.delay_s)
            self.world.later(delay, self._arrive, conn, 0, call)

    def send(self, src: Process, message) -> bool:
        conn = self.conns.get((src.node_id, message.dst))
        if conn is None:
            return False

        def deliver(receiver) -> None:
            receiver.service.message_received(message)

        if self.faults is not None:
            self._datagram(conn, deliver)
        else:
            self._carry(conn, 0, deliver)
        return True

    def send_stream(self, src: Process, message) -> bool:
        """
        A snapshot transfer message: carried as TCP carries it (in order
        with the link's calls, lost if the connection drops), through its
        encoding, as the AMP link does.
        """
        conn = self.conns.get((src.node_id, message.dst))
        if conn is None:
            return False
        data = encode_transfer(message)
        kind = type(message).__name__
        self.counts[kind] = self.counts.get(kind, 0) + 1

        def deliver(receiver) -> None:
            receiver.service.snapshot_stream_received(decode_transfer(data))

        self._carry(conn, 0, deliver)
        return True

    def call(self, src: Process, node_id: int, kind: str, commands=None) -> defer.Deferred:
        """A forward, read index, membership or lease call from C{src} to C{node_id}, answered over the same connection."""
        conn = self.conns.get((src.node_id, node_id))
        if conn is None:
            return defer.fail(PeerUnreachable(f"no link to node {node_id}"))
        call_id = next(self._call_ids)
        d = defer.Deferred()
        timer = src.reactor.callLater(CALL_TIMEOUT_S, self._timed_out, conn, call_id)
        conn.calls[call_id] = (kind, d, commands, timer)

        def serve(receiver) -> None:
            service = receiver.service
            if kind == "forward":
                answer = defer.maybeDeferred(service.proposals_forwarded, commands)
            elif kind == "member_change":
                # commands: the change's (kind, node, peer, client, force, timeout_s).
                answer = defer.maybeDeferred(service.member_change_requested, *commands)
            elif kind in ("lease_keep_alive", "lease_time_to_live"):
                # commands: the lease id (LeaseKeepAlive, LeaseTimeToLive).
                answer = defer.maybeDeferred(getattr(service, kind + "_requested"), commands)
            else:
                answer = defer.maybeDeferred(service.read_index_requested)

            def reply(outcome) -> None:
                if not conn.up:
                    return
                if self.reply_loss and self.rng.random() < self.reply_loss:
                    # The connection dies with the answer in flight: the
                    # caller cannot know what its call did.
                    self.counts["replies lost"] += 1
                    self.drop(conn, "reset with an answer in flight")
                    return
                self._carry(conn, 1, lambda _: self._answered(conn, call_id, outcome))

            answer.addBoth(reply)

        self._carry(conn, 0, serve)
        return d

    def _answered(self, conn: Connection, call_id: int, outcome) -> None:
        entry = conn.calls.pop(call_id, None)
        if entry is None:
            return
        kind, d, commands, timer = entry
        if timer.active():
            timer.cancel()
        if not isinstance(outcome, Failure):
            d.callback(None if kind == "forward" else outcome)
            return
        if kind == "member_change" and outcome.check(MembershipRejected, Unavailable):
            # Both cross the peer link as themselves (REJECTED, UNAVAILABLE;
            # a NotLeaderError is an Unavailable and crosses as below).
            if not outcome.check(NotLeaderError):
                d.errback(Failure(outcome.value))
                return
        if outcome.check(NotLeaderError):
            error = NotLeaderError(outcome.value.leader)
            if kind == "forward":
                d.errback(Failure(ForwardFailed(list(commands), [], Failure(error))))
            else:
                d.errback(Failure(error))
            return
        what = PeerRequestError(f"{outcome.type.__name__}: {outcome.getErrorMessage()}")
        if kind == "forward":
            d.errback(Failure(ForwardFailed([], list(commands), Failure(what))))
        else:
            d.errback(Failure(what))

    def _timed_out(self, conn: Connection, call_id: int) -> None:
        entry = conn.calls.pop(call_id, None)
        if entry is None:
            return
        kind, d, commands, _ = entry
        timeout = Failure(defer.TimeoutError(f"no answer in {CALL_TIMEOUT_S} s"))
        if kind == "forward":
            d.errback(Failure(ForwardFailed([], list(commands), timeout)))
        else:
            d.errback(timeout)


def _wants(process: Process, other: int) -> bool:
    """Whether C{process}'s links follow a member set that has C{other} (or none yet)."""
    members = getattr(getattr(process.service, "peers", None), "members", None)
    return members is None or other in members


def _errback(d: defer.Deferred, failure: Failure) -> None:
    if not d.called:
        d.errback(failure)


@implementer(IPeerTransport)
class SimTransport:
    """One process's peers, over the simulated L{Network}: what C{service.peers} is."""

    def __init__(self, network: Network, process: Process,
                 check: Optional[Callable] = None) -> None:
        self._network = network
        self._process = process
        #: (process, message) called as each message leaves, before the
        #: network has it (the simulation's durable-before-sent check).
        self._check = check
        #: Messages dropped for want of a connection.
        self.dropped_messages = 0
        #: The members this node's links follow, or None before it has a
        #: member set with addresses (then it links with every node).
        self.members: Optional[frozenset] = None

    def send(self, message) -> None:
        if self._check is not None:
            self._check(self._process, message)
        if not self._network.send(self._process, message):
            self.dropped_messages += 1

    def send_stream(self, message) -> None:
        if not self._network.send_stream(self._process, message):
            self.dropped_messages += 1

    def forward(self, node_id: int, commands: list) -> defer.Deferred:
        return self._network.call(self._process, node_id, "forward", list(commands))

    def read_index(self, node_id: int) -> defer.Deferred:
        return self._network.call(self._process, node_id, "read_index")

    def lease_keep_alive(self, node_id: int, lease: int) -> defer.Deferred:
        """Carry a keep-alive of C{lease} to node C{node_id} (the leader), as the peer link's LeaseKeepAlive does."""
        return self._network.call(self._process, node_id, "lease_keep_alive", lease)

    def lease_time_to_live(self, node_id: int, lease: int) -> defer.Deferred:
        """Ask node C{node_id} (the leader) about C{lease}, as the peer link's LeaseTimeToLive does."""
        return self._network.call(self._process, node_id, "lease_time_to_live", lease)

    def set_peers(self, peers) -> None:
        """
        The node's member set changed: from now on its links follow its
        members (its replica's member set in force, whatever the addresses:
        the simulator's are not real), see L{Network.peers_changed}.
        """
        replica = getattr(self._process.service, "replica", None)
        if replica is None:
            return
        self.members = frozenset(replica.config.members)
        self._network.peers_changed(self._process)

    def member_change(self, node_id: int, kind: str, node: int, peer: str, client: str,
                      force: bool, timeout_s: float) -> defer.Deferred:
        """Carry a membership change to node C{node_id} (the leader), as the peer link's MemberChange does."""
        return self._network.call(
            self._process, node_id, "member_change", (kind, node, peer, client, force, timeout_s)
        )
