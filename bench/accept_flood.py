"""
How fast a node accepts new connections under a flood (issue 13, part 6):
for each of a one-node cluster's ports (peer, admin, gRPC), C{--concurrency}
connections are opened at once, closed as soon as they are up, and opened
again, for C{--seconds}; it prints connections accepted per second and the
slowest connect.  A connection the node closes at once (past a port's cap)
still counts as accepted: it was taken off the kernel's queue.

    .venv/bin/python bench/accept_flood.py --seconds 3 --concurrency 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvpaxos.testing.processes import ProcessCluster  # noqa: E402


async def flood(port: int, seconds: float, concurrency: int) -> tuple[int, float, int]:
    deadline = time.monotonic() + seconds
    done = 0
    failed = 0
    slowest = 0.0

    async def worker():
        nonlocal done, failed, slowest
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            except (OSError, asyncio.TimeoutError):
                failed += 1
                continue
            slowest = max(slowest, time.monotonic() - start)
            writer.close()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, slowest, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=400)
    parser.add_argument("--builtin-limits", action="store_true",
                        help="set no limit keys (for builds older than the keys)")
    args = parser.parse_args()
    settings = {} if args.builtin_limits else {"peer_connections_max": 64, "admin_connections_max": 64}
    cluster = ProcessCluster(tempfile.mkdtemp(prefix="kvpaxos-flood-"), size=1, settings=settings)
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=20)
        node = cluster.nodes[1]
        print(f"{'port':8} {'accepted/s':>11} {'slowest connect s':>18} {'failed':>7}")
        for name, port in (("peer", node.peer_port), ("admin", node.admin_port), ("grpc", node.client_port)):
            done, slowest, failed = asyncio.run(flood(port, args.seconds, args.concurrency))
            print(f"{name:8} {done / args.seconds:11.0f} {slowest:18.3f} {failed:7d}")
        node.status()  # still serving
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
