"""
C{python -m kvpaxos.restore FILE --config NODE.toml [flags]} (what
C{kvpaxos snapshot restore} runs; issue 13, part 4): make the data
directory of one member of a new cluster from a snapshot file that
C{kvpaxos snapshot save} wrote.

Run it once per member of the new cluster, with the configuration each
will run with (its id, addresses and peers: flags as C{twistd kvpaxos}
takes them override the file), then start them.  Each gets:

  - the state of the file (records, sessions, the auth table, the
    history of writes and its compacted revision, the leases and the keys
    attached to them, revision and next
    client id as they were: clients never see the revision go back, and
    a watch resumed on the new cluster finds the same events; a file of
    format 1 or 2 has no history and no leases, so its compacted revision
    is its revision + 1), at the file's
    slot, from which the new cluster's log continues;
  - the member set the configuration names (the new cluster's, not the
    saved one's), under a new cluster id: derived from C{--cluster-token},
    by default a token made from the file's checksum, so every member
    restored from one file agrees, and no member of the old cluster can
    join the new one by mistake.

The file is read through and checked (L{kvpaxos.api.backup.verify}) before
anything is written; a data directory that already holds anything is
refused; if the records turn out unsound as they are staged, the directory
made is removed.  Exit status 0 on success, 1 on a refusal (one line on
stderr saying why), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace

from kvpaxos.api.backup import SnapshotFileError, read_snapshot, verify
from kvpaxos.config import ConfigError, build, load_toml

_FLAGS = {"id": "id", "peers": "peers", "addr": "addr", "client": "client", "data": "data",
          "cluster_token": "cluster_token", "storage": "storage"}
_RESTORE_KEY = ("kvpaxos-restore", 0)


class RestoreError(Exception):
    """The restore is refused: the one line says why."""


def _trailer(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(-32, os.SEEK_END)
        return f.read(32).hex()


def restore(path: str, node) -> str:
    """
    Make C{node}'s (a L{kvpaxos.config.NodeConfig}) data directory from the
    snapshot file at C{path}; return a line saying what was made.

    @raise RestoreError: the file, the directory or the storage provider
        refuses it.
    """
    from kvpaxos.encoding.errors import CorruptState, MalformedMessage
    from kvpaxos.paxos.messages import Snapshot
    from kvpaxos.storage.interfaces import Commit
    from kvpaxos.storage.providers import find_store_factory, store_factories

    try:
        header, chunks, size = verify(path)
    except SnapshotFileError as error:
        raise RestoreError(f"{path}: {error}") from None
    except OSError as error:
        raise RestoreError(f"{path}: cannot be read: {error.strerror or error}") from None
    if node.storage not in store_factories():
        raise RestoreError(f"unknown storage {node.storage!r}")
    if node.storage == "memory":
        raise RestoreError("storage 'memory' keeps nothing on disk: nothing to restore into")
    if os.path.exists(node.data) and (not os.path.isdir(node.data) or os.listdir(node.data)):
        raise RestoreError(f"{node.data} is not empty: a restore makes a new member's data directory; move it away")
    os.makedirs(node.data, exist_ok=True)
    config = node.seed_config()
    store = None
    try:
        store = find_store_factory(node.storage).open(node.data, config)
        staging = store.staging
        staging.begin(_RESTORE_KEY, header.revision, header.next_client_id)
        with open(path, "rb") as source:
            again, records = read_snapshot(source)
            if again != header:
                raise SnapshotFileError("the file changed while it was restored")
            for chunk in records:
                staging.stage(_RESTORE_KEY, chunk)
        staged = staging.finish(_RESTORE_KEY)
        store.commit(Commit(snapshot=Snapshot(header.index, config, staged), install=True))
    except BaseException as error:
        _remove(store, node.data)  # nothing half made is left
        store = None
        if isinstance(error, (CorruptState, MalformedMessage, SnapshotFileError)):
            raise RestoreError(f"{path}: its records are unsound ({error}); nothing was restored") from None
        raise
    finally:
        if store is not None:
            store.close()
    voters = ",".join(str(v) for v in sorted(config.voters))
    return (f"restored slot {header.index} (revision {header.revision}, {size} bytes, saved by member"
            f" {header.member_id} of cluster {header.cluster_id:x}) into {node.data} as member {node.node_id} of"
            f" a new cluster {config.cluster_id:x} (voters {voters})")


def _remove(store, directory: str) -> None:
    if store is not None:
        try:
            store.close()
        except Exception:
            pass
    shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpaxos snapshot restore",
        description="Make a new cluster member's data directory from a kvpaxos snapshot file.",
    )
    parser.add_argument("path", metavar="FILE")
    parser.add_argument("--config", help="the member's TOML configuration")
    parser.add_argument("--id")
    parser.add_argument("--peers", help="the new cluster's other members, ID=host:port,...")
    parser.add_argument("--addr", help="the member's peer address")
    parser.add_argument("--client", help="the member's client address")
    parser.add_argument("--data", help="the data directory to make (must not hold anything)")
    parser.add_argument("--cluster-token", dest="cluster_token",
                        help="the new cluster's token (default: derived from the file's checksum)")
    parser.add_argument("--storage")
    args = parser.parse_args(argv)
    try:
        values = load_toml(args.config) if args.config else {}
        values.pop("join", None)  # a restored member seeds the new cluster
        for flag, key in _FLAGS.items():
            if getattr(args, flag) is not None:
                values[key] = getattr(args, flag)
        token = args.cluster_token
        if token is None:
            try:
                token = f"restored-{_trailer(args.path)[:16]}"
            except OSError as error:
                raise RestoreError(f"{args.path}: cannot be read: {error.strerror or error}") from None
        node = replace(build(values), cluster_token=token)
        print(restore(args.path, node))
    except ConfigError as error:
        print(f"kvpaxos: error: {error}", file=sys.stderr)
        return 2
    except RestoreError as error:
        print(f"kvpaxos: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
