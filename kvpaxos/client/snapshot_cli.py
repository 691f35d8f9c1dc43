"""
C{kvpaxos snapshot save|status|restore} (issue 13, part 4):

  - C{save FILE}: stream a consistent snapshot from the first admin
    address (the node's state as of one read transaction) into FILE
    (written as FILE.part, fsynced, then renamed; checked again once
    written). A stream the node interrupts (its store grew) is started
    over, up to L{SAVE_ATTEMPTS} times.
  - C{status FILE}: check a file through (its checksum, its layout) and
    print its header.
  - C{restore FILE --config NODE.toml ...}: make a new cluster's data
    directory from FILE, by running C{python -m kvpaxos.restore} (the
    server side: the client package never imports the store).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from typing import Any

from kvpaxos.api.admin import SnapshotOpen, SnapshotRead
from kvpaxos.api.backup import SnapshotFileError, SnapshotHeader, SnapshotWriter, verify
from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK
from kvpaxos.client.admin_client import AdminFailed

#: Attempts at a save whose stream the node interrupted.
SAVE_ATTEMPTS = 3
#: The flags C{snapshot restore} passes on to C{kvpaxos.restore}.
RESTORE_FLAGS = ("config", "data", "id", "peers", "addr", "client", "cluster_token", "storage")


def add_snapshot_commands(snapshot, action) -> None:
    """Add C{save}, C{status} and C{restore} to the C{snapshot} group (C{action(group, name, help)})."""
    save = action(snapshot, "save", "save a consistent snapshot of a node's state to FILE (admin port)")
    save.add_argument("path", metavar="FILE")
    status = action(snapshot, "status", "check a snapshot FILE through and print what it holds")
    status.add_argument("path", metavar="FILE")
    restore = action(snapshot, "restore", "make a new cluster member's data directory from a snapshot FILE")
    restore.add_argument("path", metavar="FILE")
    restore.add_argument("--config", metavar="NODE.toml", help="the node's configuration (as twistd kvpaxos takes)")
    restore.add_argument("--data", metavar="DIR", help="its data directory (must not hold a store)")
    restore.add_argument("--id", metavar="N", help="its member id")
    restore.add_argument("--peers", metavar="ID=HOST:PORT,...", help="the new cluster's other members")
    restore.add_argument("--addr", metavar="HOST:PORT", help="its peer address")
    restore.add_argument("--client", dest="restore_client", metavar="HOST:PORT", help="its client address")
    restore.add_argument("--cluster-token", metavar="TOKEN",
                         help="the new cluster's token (default: one derived from the file, the same on every"
                              " member restored from it)")
    restore.add_argument("--storage", metavar="NAME", help="storage provider [default: lmdb]")


def restore_arguments(args: argparse.Namespace) -> tuple:
    """The C{kvpaxos.restore} arguments of a parsed C{snapshot restore}."""
    out = []
    for name in RESTORE_FLAGS:
        value = getattr(args, "restore_client" if name == "client" else name, None)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", value]
    return tuple(out)


class SnapshotActions:
    """The C{snapshot} actions of L{kvpaxos.client.admin_cli.AdminActions}."""

    async def do_snapshot_save(self) -> int:
        i = self.invocation
        address = i.addresses[0]
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                header, size, digest = await self._save(address, i.path)
                break
            except AdminFailed as failure:
                if "save again" not in str(failure) or attempt == SAVE_ATTEMPTS:
                    raise
            except SnapshotFileError as error:
                self.error(f"{i.path}.part: written but does not read back ({error}); {i.path} is left as it was")
                return EXIT_FAILED
        if i.json:
            self.json({"admin": address, "path": i.path, "bytes": size, "sha256": digest, **_header_fields(header)})
        else:
            self.text(f"saved member {header.member_id}'s state at slot {header.index} (revision {header.revision})"
                      f" to {i.path}: {size} bytes, sha256 {digest}")
        return EXIT_OK

    async def _save(self, address: str, path: str) -> tuple:
        protocol = await self.calls.connection(address)
        part = path + ".part"
        try:
            opened = await self.calls.on(protocol, address, SnapshotOpen)
            header = SnapshotHeader.from_json(opened["header"])
            with open(part, "wb") as out:
                writer = SnapshotWriter(out, header)
                while True:
                    read = await self.calls.on(protocol, address, SnapshotRead, stream=opened["stream"])
                    if read["last"]:
                        break
                    writer.chunk(read["records"])
                digest = writer.finish()
                out.flush()
                os.fsync(out.fileno())
            verify(part)  # before it replaces an earlier file of the same name
            os.replace(part, path)
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename survives a crash
            finally:
                os.close(directory)
            return header, writer.bytes, digest
        except OSError as error:
            raise AdminFailed(f"cannot write {part}: {error.strerror or error}") from None
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            if os.path.exists(part):
                os.unlink(part)

    async def do_snapshot_status(self) -> int:
        i = self.invocation
        try:
            header, chunks, size = verify(i.path)
        except SnapshotFileError as error:
            self.error(f"{i.path}: {error}")
            return EXIT_FAILED
        except OSError as error:
            self.error(f"{i.path}: cannot be read: {error.strerror or error}")
            return EXIT_FAILED
        fields = _header_fields(header)
        if i.json:
            self.json({"path": i.path, "bytes": size, "chunks": chunks, **fields})
        else:
            self.text(f"{i.path}: intact, {size} bytes in {chunks} chunks")
            for name in ("member_id", "cluster_id", "index", "revision", "next_client_id", "saved_at"):
                self.text(f"  {name}: {fields[name]}")
            self.text("  members: " + ", ".join(f"{m.get('id')} ({m.get('role')})" for m in header.members))
        return EXIT_OK

    async def do_snapshot_restore(self) -> int:
        i = self.invocation
        done = subprocess.run([sys.executable, "-m", "kvpaxos.restore", i.path, *i.restore],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout.write(done.stdout)
        self.stderr.write(done.stderr)
        return done.returncode


def _header_fields(header: SnapshotHeader) -> dict[str, Any]:
    return dataclasses.asdict(header)
