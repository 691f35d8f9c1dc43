"""
The operator's backups in the node simulator (issue 13, part 4): now and
then C{kvpaxos snapshot save} runs against a live node, through the admin
port's own protocol (L{kvpaxos.admin.server.AdminProtocol}: C{SnapshotOpen},
then C{SnapshotRead} until the last chunk), under every fault.  What it
saved is checked as a restore would read it (the transfer's record check,
L{kvpaxos.storage.staging.snapshot_of_chunks}, every table, the
history's and the leases' too) and must be, byte for byte, the
state the chosen log gives at the slot its header names (the reference's
state hash there): a snapshot whose header and records come from two
moments is caught (plant C{torn-backup}).
"""

from __future__ import annotations

from kvpaxos.testing.reference import state_hash

_REFUSALS = (b"REJECTED", b"UNAVAILABLE", b"NOT_LEADER")


class BackupsMixin:
    """The simulator's backups: L{_backup}, and the check of each one saved."""

    def _backup(self, node) -> None:
        from twisted.protocols import amp

        from kvpaxos.admin.server import AdminProtocol
        from kvpaxos.api.admin import SnapshotOpen, SnapshotRead
        from kvpaxos.api.backup import SnapshotHeader

        process = node.process
        protocol = AdminProtocol(process.service)
        chunks: list = []
        self.result.faults["admin SnapshotOpen"] += 1
        self._log(f"admin SnapshotOpen via node {node.id}")

        def refused(failure) -> None:
            if failure.check(amp.RemoteAmpError) and failure.value.errorCode in _REFUSALS:
                self.result.faults["backup refused"] += 1
                return
            self.fail("backup", f"a backup from node {node.id} failed: {failure.getErrorMessage()}")

        def send(command, then, **arguments) -> None:
            box = command.makeArguments(arguments, protocol)
            d = protocol.locateResponder(command.commandName)(box)
            d.addCallback(lambda answer: command.parseResponse(answer, protocol))
            d.addCallbacks(then, refused)

        def opened(answer) -> None:
            header = SnapshotHeader.from_json(answer["header"])

            def read(chunk) -> None:
                if chunk["last"]:
                    self._saved_backups.append((node.id, header, list(chunks)))
                    self.result.faults["backups saved"] += 1
                    self._check_backups()
                    return
                chunks.append(chunk["records"])
                self._run_in(process, send, (SnapshotRead, read), {"stream": answer["stream"]})

            self._run_in(process, send, (SnapshotRead, read), {"stream": answer["stream"]})

        self._run_in(process, send, (SnapshotOpen, opened))

    def _check_backups(self) -> None:
        """Check every saved backup whose slot the reference has reached (the rest wait)."""
        from kvpaxos.storage.staging import snapshot_of_chunks

        waiting = []
        for node_id, header, chunks in self._saved_backups:
            expected = self.reference.hashes.get(header.index)
            if expected is None:
                waiting.append((node_id, header, chunks))
                continue
            try:
                # Every table, the history's and the leases' too, checked as a restore stages it.
                data = snapshot_of_chunks(header.revision, header.next_client_id, chunks)
            except Exception as error:  # what a restore would refuse
                self.fail("backup", f"node {node_id}'s backup at slot {header.index} does not restore: {error}")
                return
            if state_hash(data) != expected:
                self.fail("backup", f"node {node_id}'s backup says slot {header.index} (revision"
                          f" {header.revision}) but holds another state")
                return
        self._saved_backups = waiting
