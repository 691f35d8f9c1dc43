"""
The learner: how a replica comes to know which slots are chosen, and what
follows from it.

  - the chosen index: a slot this replica accepted in the ballot of a leader
    that announces it chosen holds the chosen value (Paxos Made Simple §3:
    the leader tells the learners); every other slot is fetched;
  - catch-up: a replica that lacks chosen slots asks a peer for them
    (L{CatchupRequest} / L{Catchup}), and takes chosen values only from the
    leader or a peer it asked (issue 9, hole 9);
  - snapshots: the log is dropped through the applied slot (compaction), and
    a replica behind a peer's compaction point installs its snapshot;
  - member sets: a chosen L{ConfigChange} governs the slots after its own;
    the learner keeps the member set in force per slot, and the nodes whose
    removal it learned chosen (C{removed}: the replica ignores them).

L{Learner} is a mixin of L{kvpaxos.paxos.replica.Replica}, over the state
declared in C{Replica.__init__}.  No I/O here.
"""

from __future__ import annotations

from typing import Optional

from kvpaxos.paxos.config import Config, ConfigChange
from kvpaxos.paxos.messages import (
    Ballot,
    Catchup,
    CatchupRequest,
    InstallSnapshot,
    Snapshot,
    value_size,
)
from kvpaxos.paxos.state import Entry


class Learner:
    """The learner of a L{kvpaxos.paxos.replica.Replica}."""

    # --- the chosen index ------------------------------------------------

    def _learn(self, ballot: Ballot, leader_chosen: int, src: int) -> None:
        """
        The leader of C{ballot} has chosen every slot through
        C{leader_chosen}.  A slot this replica accepted in that same ballot
        holds the leader's value, which is the chosen one; any other slot
        must be fetched.
        """
        slot = self.chosen_index
        if slot >= leader_chosen:
            return
        if not self.config.voters:
            # Joining: the log means nothing without the member set it starts
            # from, which only a snapshot brings.
            self.request_catchup(src)
            return
        log = self.log
        while slot < leader_chosen:
            entry = log.get(slot + 1)
            if entry is None or entry.ballot != ballot:
                break
            slot += 1
        if slot > self.chosen_index:
            self.set_chosen(slot)
        if slot < leader_chosen:
            self.request_catchup(src)

    def set_chosen(self, index: int) -> None:
        """Every slot through C{index} is chosen; the log holds their values."""
        assert index > self.chosen_index, "the chosen index only grows"
        first = self.chosen_index + 1
        self.chosen_index = index
        if self._track_config_changes(first, index):
            self.role.config_changed()
        self.role.chosen_advanced(first, index)

    # --- member sets -----------------------------------------------------------

    def _track_config_changes(self, first: int, last: int) -> bool:
        changed = False
        log = self.log
        for slot in range(first, last + 1):
            value = log[slot].value
            if type(value) is ConfigChange:
                self.config = self.config.apply(value)
                self._configs.append((slot, self.config))
                changed = True
        return changed

    def config_after(self, index: int) -> Config:
        """Return the member set that governs the slot after C{index}."""
        config = self._configs[0][1]
        for slot, later in self._configs:
            if slot > index:
                break
            config = later
        return config

    # --- catch-up ------------------------------------------------------------

    def request_catchup(self, dst: int) -> None:
        """Ask C{dst} for the chosen slots this replica lacks (at most once per retry interval)."""
        if self.catchup_wait or dst == self.id:
            return
        self.catchup_wait = self.options.catchup_retry_ticks
        self.catchup_asked[dst] = self.ticks
        # A node that joined with no member set cannot replay the log from
        # slot 1: it needs the member set the log starts from, so it asks for
        # a snapshot (first_slot 0), even the bootstrap one.
        first = self.chosen_index + 1 if self.config.voters else 0
        self.send(CatchupRequest(self.id, dst, first))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        first = m.first_slot
        if first <= self.snapshot.index:
            if self.snapshot.data is not None:
                self.send(InstallSnapshot(self.id, m.src, self.snapshot))
            else:
                # A durable state machine's compaction point: the state is
                # taken off this call (it is O(state)), see Ready.
                self._snapshot_wanted.add(m.src)
            return
        entries = []
        size = 0
        log = self.log
        limit = self.options.message_bytes_max
        for slot in range(first, self.chosen_index + 1):
            entry = log[slot]
            size += value_size(entry.value)
            if entries and size > limit:
                break  # the rest next time; one oversized slot goes alone
            entries.append((entry.ballot, entry.value))
        if entries:
            self.send(Catchup(self.id, m.src, first, tuple(entries), self.chosen_index))

    def _solicited(self, src: int) -> bool:
        """
        Whether chosen values from C{src} may be taken: it leads, or this
        replica asked it.  A misconfigured neighbour (another cluster on a
        reused address, a stale process) must not write into this log.
        """
        if self.catchup_asked.pop(src, None) is not None:
            return True
        return src == self.leader

    def _on_catchup(self, m: Catchup) -> None:
        if self.is_leader:
            # A leader's chosen index must come from its own quorums only:
            # followers learn a slot as chosen from it when they accepted it
            # in its ballot.  A late answer to a request it made while
            # campaigning could make a deposed leader announce slots chosen
            # in a later ballot (its re-proposals cover everything anyway).
            return
        if not self._solicited(m.src):
            return
        self.catchup_wait = 0
        slot = m.first_slot
        if slot > self.chosen_index + 1 or not self.config.voters:
            return
        log = self.log
        for ballot, value in m.entries:
            if slot > self.chosen_index:
                entry = Entry(ballot, value)
                log[slot] = entry
                self._entries[slot] = entry
            slot += 1
        last = m.first_slot + len(m.entries) - 1
        if last > self.chosen_index:
            self.set_chosen(last)
        if self.chosen_index < m.chosen_index:
            self.request_catchup(m.src)

    # --- snapshots -------------------------------------------------------------

    def would_install(self, m: InstallSnapshot) -> bool:
        """
        Whether stepping C{m} now would install its snapshot (a query: it
        changes nothing), so the caller checks the state only of those.
        """
        if self.is_leader or not (m.src in self.catchup_asked or m.src == self.leader):
            return False
        return self._wanted(m.snapshot)

    def _wanted(self, snapshot: Snapshot) -> bool:
        joining = not self.config.voters and self.chosen_index == 0
        return snapshot.index > self.chosen_index or (joining and bool(snapshot.config.voters))

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        if self.is_leader:
            return  # as for Catchup: a leader learns only from its quorums
        if not self._solicited(m.src):
            return
        self.catchup_wait = 0
        snapshot = m.snapshot
        if not self._wanted(snapshot):
            return
        # A durable state machine is its own snapshot once it installed
        # one: the replica keeps no copy (and never sends on the data it
        # was given, which a node's store hands in as a staging handle).
        durable = getattr(self.state_machine, "durable", False)
        self.snapshot = Snapshot(snapshot.index, snapshot.config, None) if durable else snapshot
        self._snapshot_out = snapshot
        self._install = True
        self._drop_log_through(snapshot.index)
        self.chosen_index = snapshot.index
        self._configs = [(snapshot.index, snapshot.config)]
        self.config = snapshot.config
        self.role.config_changed()

    def _drop_log_through(self, index: int) -> None:
        log = self.log
        for slot in [s for s in log if s <= index]:
            del log[slot]
        for slot in [s for s in self._entries if s <= index]:
            del self._entries[slot]

    def _take_snapshot(self) -> None:
        """
        Drop the log through the applied slot, with a copy of the state
        machine's state, or none if the state machine is durable (see
        L{Snapshot}).
        """
        index = self.applied
        machine = self.state_machine
        data = None if getattr(machine, "durable", False) else machine.snapshot()
        snapshot = Snapshot(index, self.config_after(index), data)
        self.snapshot = snapshot
        self._snapshot_out = snapshot
        self._install = False
        self._drop_log_through(index)
        keep = [(s, c) for s, c in self._configs if s > index]
        self._configs = [(index, snapshot.config)] + keep

    def snapshot_message(self, peer: int, index: int, data: bytes) -> Optional[InstallSnapshot]:
        """
        Return the L{InstallSnapshot} that sends C{peer} (one of a Ready's
        C{snapshot_wanted}) a durable state machine's state C{data}, taken
        after it applied slot C{index} (which may be past C{applied}: a
        commit in flight; never past C{chosen_index}).  None if this replica
        has compacted past C{index} meanwhile (the member set there is
        forgotten; the peer asks again).
        """
        assert index <= self.chosen_index, f"state machine at {index}, past chosen {self.chosen_index}"
        if index < self.snapshot.index:
            return None
        return InstallSnapshot(self.id, peer, Snapshot(index, self.config_after(index), data))
