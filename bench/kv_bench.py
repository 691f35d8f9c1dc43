"""
A load generator for a kvpaxos cluster over its public gRPC API (issue 5):
the workloads W1, W1s, W2, W3, W4 and W5, each reported as ops/s, latency
percentiles and the CPU seconds of every process involved.

What it does: by default it starts a local three-node cluster with durable
storage (LMDB, which fsyncs every commit) in a temporary directory through
L{kvpaxos.testing.processes.ProcessCluster}, runs the chosen workloads
against it and stops it (SIGTERM, then SIGKILL, for every process it
started) and removes the directory.  With C{--endpoints host:port,...} it
targets a running cluster instead and starts nothing.

The generator is one asyncio event loop with C{grpc.aio} channels (one per
member unless C{--conns} says more), raw stubs and request messages built
before the clock starts; each of the C{clients} concurrent coroutines takes
the next request from one shared iterator, awaits it and records its
latency.  Latency is wall time from just before the call to just after its
answer, as the coroutine sees it (so it includes the generator's own event
loop delay; compare the generator's CPU seconds with the wall time to see
whether the generator was the bottleneck).

CPU seconds are measured over the timed part of each run only: the
generator's with C{time.process_time} (every thread of this process, grpc's
own included), each server's from C{/proc/<pid>/stat} (utime + stime, every
thread).  Server pids are known for the local cluster; for C{--endpoints}
they are found through C{/proc/net/tcp} for endpoints on this machine, or
given with C{--server-pids}.

Workloads (counts are the issue's; C{--scale} multiplies them):

    W1   64 clients, 20,000 puts (16-byte keys, 100-byte values) to the leader
    W1s  W1 spread over all members (client i talks to member i mod n)
    W2   1 client, 2,000 sequential puts to the leader
    W3   64 clients, 20,000 linearizable gets of existing keys, to the leader
    W3s  W3 spread over all members (a follower asks the leader for a read index)
    W4   64 clients, 20,000 serializable gets, spread over all members
    W5   64 clients, Txns of 100 puts each, 200,000 puts in all, to the leader
         (ops/s counts puts; latency is per Txn)

Every write key is new (a fresh prefix per run); the read workloads read
C{--read-keys} keys written (in Txns, untimed) before the first of them,
after every member has applied them.  Each run is preceded by an untimed
warm-up of C{--warmup} requests.  With C{--runs N} (default 3) each
workload runs N times and the run with the median ops/s is reported (every
run is in the JSON).

Profiling (C{--profile DIR}):

    --profiler py-spy    (default) samples the leader with py-spy during the
                         first timed run of each workload; every thread, no
                         code change; writes DIR/<workload>-leader.txt
                         (collapsed stacks) and prints the top frames;
                         --profile-gil samples only the GIL holder.
                         Needs py-spy on PATH or --py-spy PATH.
    --profiler cprofile  starts every local node under twistd's own
                         --profile/--profiler=cprofile; only the reactor
                         thread is profiled (not the gRPC or writer
                         threads), and the stats are written when the node
                         stops: DIR/node<id>.prof, the leader's is printed.

Run it from the repository root::

    .venv/bin/python bench/kv_bench.py                       # all, full size, 3 runs
    .venv/bin/python bench/kv_bench.py -w W1,W2 --runs 1 --scale 0.1
    .venv/bin/python bench/kv_bench.py --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
    .venv/bin/python bench/kv_bench.py --json-out bench.json --profile prof/
    .venv/bin/python bench/kv_bench.py --table-from bench.json   # a saved report's table

This is a benchmark, not a test: nothing asserts on time.  Nothing here may
be imported by kvpaxos or the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import glob
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from kvpaxos import client as kvclient  # noqa: E402
from kvpaxos.api.endpoints import CHANNEL_OPTIONS  # noqa: E402
from kvpaxos.client.stream import Multiplexer  # noqa: E402
from kvpaxos.cluster import twistd_command  # noqa: E402
from kvpaxos.testing.processes import ProcessCluster  # noqa: E402
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc  # noqa: E402

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

#: How the generator sends (--client).
CLIENTS = {
    "raw": "grpc.aio unary stubs, prepared messages (default)",
    "stream": "one KV.Stream per channel through kvpaxos.client.stream.Multiplexer",
    "async": "kvpaxos.client.AsyncClient (sessions, retries; KV.Stream), one for all coroutines",
    "async-unary": "AsyncClient with stream=False",
    "blocking": "kvpaxos.client.Client (KV.Stream) from --clients threads",
    "blocking-unary": "Client with stream=False, from threads",
}


@dataclass(frozen=True)
class Workload:
    """
    One workload: C{requests} requests of C{kind} ("put", "get" or "txn"),
    each carrying C{ops_per_request} operations, from C{clients} concurrent
    clients, to the leader or C{spread} over every member.
    """

    name: str
    kind: str
    clients: int
    requests: int
    ops_per_request: int = 1
    spread: bool = False
    consistency: int = kv_pb2.LINEARIZABLE
    description: str = ""

    @property
    def ops(self) -> int:
        return self.requests * self.ops_per_request


WORKLOADS = {
    w.name: w
    for w in (
        Workload("W1", "put", 64, 20_000, description="64 clients, puts to the leader"),
        Workload("W1s", "put", 64, 20_000, spread=True,
                 description="64 clients, puts spread over all members"),
        Workload("W2", "put", 1, 2_000, description="1 client, sequential puts to the leader"),
        Workload("W3", "get", 64, 20_000,
                 description="64 clients, linearizable gets to the leader"),
        Workload("W3s", "get", 64, 20_000, spread=True,
                 description="64 clients, linearizable gets spread over all members"),
        Workload("W4", "get", 64, 20_000, spread=True, consistency=kv_pb2.SERIALIZABLE,
                 description="64 clients, serializable gets spread over all members"),
        Workload("W5", "txn", 64, 2_000, ops_per_request=100,
                 description="64 clients, Txns of 100 puts, to the leader"),
    )
}


# --- processes and their CPU ---------------------------------------------------


def process_cpu(pid: int) -> Optional[tuple[float, float, int]]:
    """
    Return (user CPU seconds, system CPU seconds, context switches) of
    process C{pid}, every thread, from C{/proc/<pid>/stat} and
    C{/proc/<pid>/task/*/status}; None when it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after
    # the last ")".  Then field 3 (state) is index 0, utime (14) index 11.
    fields = stat[stat.rindex(b")") + 2:].split()
    switches = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                        switches += int(line.split()[1])
        except OSError:
            continue
    return (int(fields[11]) / CLOCK_TICKS_PER_S, int(fields[12]) / CLOCK_TICKS_PER_S, switches)


def listening_pids(ports: set[int]) -> dict[int, int]:
    """
    Return {port: pid} for the processes on this machine listening on TCP
    C{ports}, found through C{/proc/net/tcp*} and C{/proc/*/fd}; ports whose
    owner cannot be seen are left out.
    """
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if cols[3] == "0A" and port in ports:  # 0A: LISTEN
                inodes[f"socket:[{cols[9]}]"] = port
    found: dict[int, int] = {}
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link in inodes:
            found[inodes[link]] = int(fd.split("/")[2])
    return found


def server_cpu(pids: dict[int, int]) -> dict[int, Optional[tuple[float, float, int]]]:
    return {member: process_cpu(pid) for member, pid in pids.items()}


# --- the cluster ---------------------------------------------------------------


@dataclass
class Target:
    """The cluster under test: its members' endpoints, the leader, server pids."""

    endpoints: dict[int, str]  # member id -> host:port
    leader: int
    pids: dict[int, int]  # member id -> pid (those known)


async def discover(endpoints: list[str], timeout_s: float) -> tuple[dict[int, str], int]:
    """
    Ask every endpoint for its status until all answer and agree on one
    leader among them; return ({member id: endpoint}, leader id).

    @raise RuntimeError: no agreement before C{timeout_s}.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        members: dict[int, str] = {}
        leaders = set()
        try:
            for endpoint in endpoints:
                async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
                    status = await kv_pb2_grpc.ClusterStub(ch).Status(
                        kv_pb2.StatusRequest(), timeout=1.0
                    )
                members[status.member_id] = endpoint
                leaders.add(status.leader_id)
        except grpc.aio.AioRpcError as error:
            last = f"{error.code().name}: {error.details()}"
        else:
            if len(leaders) == 1 and 0 not in leaders and leaders <= set(members):
                return members, leaders.pop()
            last = f"leaders seen: {sorted(leaders)}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no agreed leader among {endpoints} after {timeout_s}s ({last})")


async def wait_applied(target: Target, timeout_s: float) -> None:
    """Wait until every member has applied what the leader knows chosen."""
    async def status(endpoint):
        async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
            return await kv_pb2_grpc.ClusterStub(ch).Status(kv_pb2.StatusRequest(), timeout=1.0)

    chosen = (await status(target.endpoints[target.leader])).chosen_index
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        applied = [(await status(e)).applied_index for e in target.endpoints.values()]
        if min(applied) >= chosen:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"members did not apply index {chosen} within {timeout_s}s")


def start_local_cluster(args) -> tuple[ProcessCluster, str]:
    """
    Start C{args.nodes} twistd nodes in a new temporary directory; with the
    cProfile profiler every node runs under twistd's --profile.
    """
    directory = tempfile.mkdtemp(prefix="kvpaxos-bench-", dir=args.data_dir)
    cluster = ProcessCluster(directory, size=args.nodes, storage=args.storage)
    if args.profile and args.profiler == "cprofile":
        os.makedirs(args.profile, exist_ok=True)
        for node in cluster.nodes.values():
            argv = twistd_command(node.config_path)
            at = argv.index("kvpaxos")
            out = os.path.abspath(os.path.join(args.profile, f"node{node.id}.prof"))
            argv[at:at] = [f"--profile={out}", "--profiler=cprofile", "--savestats"]
            with open(node.log_path, "ab") as log:
                node.process = subprocess.Popen(
                    argv, env=cluster._env, cwd=directory,
                    stdout=log, stderr=subprocess.STDOUT,
                )
    else:
        cluster.start()
    return cluster, directory


# --- requests ------------------------------------------------------------------


def make_key(prefix: str, i: int, key_bytes: int) -> bytes:
    """A C{key_bytes}-byte key: C{prefix} then C{i} zero-padded."""
    key = f"{prefix}{i:0{key_bytes - len(prefix)}d}".encode()
    assert len(key) == key_bytes, (prefix, i, key_bytes)
    return key


def txn_of_puts(keys: list[bytes], value: bytes) -> kv_pb2.TxnRequest:
    return kv_pb2.TxnRequest(
        success=[kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=k, value=value))
                 for k in keys]
    )


def build_requests(w: Workload, prefix: str, count: int, args, read_keys: list[bytes]) -> list:
    """Build C{count} request messages of workload C{w} (untimed)."""
    value = b"v" * args.value_bytes
    if w.kind == "put":
        return [kv_pb2.PutRequest(key=make_key(prefix, i, args.key_bytes), value=value)
                for i in range(count)]
    if w.kind == "get":
        gets = [kv_pb2.GetRequest(key=k, consistency=w.consistency) for k in read_keys]
        return [gets[i % len(gets)] for i in range(count)]
    if w.kind == "txn":
        n = w.ops_per_request
        return [txn_of_puts([make_key(prefix, r * n + j, args.key_bytes) for j in range(n)],
                            value)
                for r in range(count)]
    raise ValueError(w.kind)


def answer_check(kind: str) -> Callable:
    """What a successful answer must say: a get finds its key, a Txn succeeds."""
    if kind == "get":
        return lambda response: response.found
    if kind == "txn":
        return lambda response: response.succeeded
    return lambda response: True


# --- driving ---------------------------------------------------------------------


async def drive(calls: list, requests: list, clients: int, timeout_s: float,
                check: Callable) -> tuple[list[float], collections.Counter]:
    """
    Send C{requests} from C{clients} coroutines, client i through
    C{calls[i % len(calls)]}, each taking the next request when its last
    one is answered.  Return (latencies in seconds of the answered requests,
    error counts by status code name).
    """
    pending = iter(requests)
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()

    async def client(call) -> None:
        clock = time.perf_counter
        record = latencies.append
        for request in pending:
            start = clock()
            try:
                response = await call(request, timeout=timeout_s)
            except grpc.RpcError as error:
                errors[error.code().name] += 1
                continue
            except kvclient.ClientError as error:
                errors[type(error).__name__] += 1
                continue
            record(clock() - start)
            if not check(response):
                errors["UNEXPECTED_ANSWER"] += 1

    await asyncio.gather(*(client(calls[i % len(calls)]) for i in range(clients)))
    return latencies, errors


def library_call(client, kind: str) -> Callable:
    """
    A C{call(request, timeout=...)} that sends a prepared request message
    through C{client} (L{kvpaxos.client.AsyncClient} or L{Client}): its
    session, retries and routing, as a user's program would.
    """
    def operation(request):
        if kind == "put":
            return kvclient.put_operation(request.key, request.value)
        if kind == "get":
            return kvclient.get_operation(request.key, request.consistency)
        return kvclient.txn_operation(request.compare, request.success, request.failure)

    if isinstance(client, kvclient.Client):
        return lambda request, timeout=None: client.call(operation(request)).response

    async def call(request, timeout=None):
        return (await client.call(operation(request))).response

    return call


def drive_threads(call: Callable, requests: list, clients: int,
                  check: Callable) -> tuple[list[float], collections.Counter]:
    """L{drive} for the blocking client: C{clients} threads, each taking the next request when its last is answered."""
    import threading

    pending = iter(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()

    def client() -> None:
        clock = time.perf_counter
        while True:
            with lock:
                request = next(pending, None)
            if request is None:
                return
            start = clock()
            try:
                response = call(request)
            except kvclient.ClientError as error:
                with lock:
                    errors[type(error).__name__] += 1
                continue
            latency = clock() - start
            with lock:
                latencies.append(latency)
                if not check(response):
                    errors["UNEXPECTED_ANSWER"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def percentile_ms(ordered: list[float], p: float) -> float:
    """The C{p}th percentile (nearest rank) of sorted seconds, in ms."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered))) - 1))
    return ordered[rank] * 1000.0


class PySpy:
    """py-spy recording one process until stopped (SIGINT makes it write)."""

    def __init__(self, binary: str, pid: int, out: str, rate_hz: int, gil: bool) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--output", out, "--format", "raw",
             "--rate", str(rate_hz), "--nonblocking"] + (["--gil"] if gil else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # let it attach before the clock starts

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def summarize_collapsed(path: str, top: int = 20) -> str:
    """Top frames of a py-spy raw (collapsed stacks) file, by self and total samples."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                samples += n
                frames = stack.split(";")
                own[frames[-1]] += n
                for frame in set(frames):
                    total[frame] += n
    except OSError as error:
        return f"  (no profile: {error})"
    lines = [f"  {samples} samples (active threads only)", "  self%  frame"]
    lines += [f"  {100.0 * n / samples:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["  total%  frame"]
    lines += [f"  {100.0 * n / samples:5.1f}  {frame}" for frame, n in total.most_common(top)
              if not frame.startswith(("<module>", "run ("))]
    return "\n".join(lines)


async def run_workload(w: Workload, run: int, target: Target, channels: dict, args,
                       read_keys: list[bytes]) -> dict:
    """One run of C{w}: warm up, then the timed part; return its figures."""
    method = {"put": "Put", "get": "Get", "txn": "Txn"}[w.kind]
    members = sorted(target.endpoints) if w.spread else [target.leader]
    if args.client == "stream":
        calls = [mux.caller(w.kind) for m in members for mux in args.multiplexers[m]]
    elif args.client == "raw":
        calls = [getattr(stub, method) for m in members for stub in channels[m]]
    else:  # the client library routes by itself: "spread" does not apply
        calls = [library_call(args.library_client, w.kind)]
    check = answer_check(w.kind)
    prefix = f"{w.name.lower()}{run}-"
    warm = build_requests(w, prefix + "w", min(args.warmup, w.requests), args, read_keys)
    if warm and args.client == "blocking":
        await asyncio.to_thread(drive_threads, calls[0], warm, min(w.clients, len(warm)), check)
    elif warm:
        await drive(calls, warm, min(w.clients, len(warm)), args.timeout, check)
    requests = build_requests(w, prefix, w.requests, args, read_keys)

    spy = None
    if args.profile and args.profiler == "py-spy" and run == 0 and target.leader in target.pids:
        spy = PySpy(args.py_spy, target.pids[target.leader],
                    os.path.join(args.profile, f"{w.name}-leader.txt"), args.profile_rate,
                    args.profile_gil)

    servers_before = server_cpu(target.pids)
    self_before = process_cpu(os.getpid())
    cpu_before = time.process_time()
    start = time.perf_counter()
    if args.client == "blocking":
        latencies, errors = await asyncio.to_thread(drive_threads, calls[0], requests, w.clients, check)
    else:
        latencies, errors = await drive(calls, requests, w.clients, args.timeout, check)
    wall_s = time.perf_counter() - start
    cpu_s = {"generator": time.process_time() - cpu_before}
    # user / system seconds and context switches (voluntary + involuntary,
    # every thread), from /proc, for the generator and each server.
    detail = {"generator": (self_before, process_cpu(os.getpid()))}
    for member, after in server_cpu(target.pids).items():
        before = servers_before[member]
        detail[f"node{member}"] = (before, after)
        cpu_s[f"node{member}"] = (
            None if after is None or before is None
            else (after[0] + after[1]) - (before[0] + before[1])
        )
    cpu_detail = {
        name: None if a is None or b is None else
        {"user_s": a[0] - b[0], "system_s": a[1] - b[1], "context_switches": a[2] - b[2]}
        for name, (b, a) in detail.items()
    }

    if spy is not None:
        spy.stop()
        print(f"py-spy profile of leader node{target.leader} during {w.name} "
              f"-> {spy.out}\n{summarize_collapsed(spy.out)}", flush=True)

    latencies.sort()
    answered_ops = len(latencies) * w.ops_per_request
    return {
        "run": run,
        "requests": w.requests,
        "ops": w.ops,
        "answered": len(latencies),
        "errors": dict(errors),
        "wall_s": wall_s,
        "ops_per_s": answered_ops / wall_s,
        "requests_per_s": len(latencies) / wall_s,
        "p50_ms": percentile_ms(latencies, 50),
        "p90_ms": percentile_ms(latencies, 90),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": latencies[-1] * 1000.0 if latencies else float("nan"),
        "mean_ms": 1000.0 * sum(latencies) / len(latencies) if latencies else float("nan"),
        "cpu_s": cpu_s,
        "cpu_detail": cpu_detail,
        "leader": target.leader,
    }


async def prefill(target: Target, channels: dict, args) -> list[bytes]:
    """Write C{args.read_keys} keys (in Txns, untimed) and wait for every member to apply them."""
    keys = [make_key("r-", i, args.key_bytes) for i in range(args.read_keys)]
    value = b"v" * args.value_bytes
    txns = [txn_of_puts(keys[i:i + 100], value) for i in range(0, len(keys), 100)]
    latencies, errors = await drive(
        [channels[target.leader][0].Txn], txns, 8, args.timeout, answer_check("txn")
    )
    if errors:
        raise RuntimeError(f"prefill failed: {dict(errors)}")
    await wait_applied(target, timeout_s=30)
    return keys


async def bench(args, endpoints: list[str], pids_by_port: Callable) -> dict:
    members, leader = await discover(endpoints, timeout_s=args.startup_timeout)
    target = Target(members, leader, pids_by_port(members))
    print(f"cluster: members {dict(sorted(members.items()))}, leader {leader}, "
          f"server pids {target.pids or 'unknown'}", flush=True)
    opened = {m: [grpc.aio.insecure_channel(e, options=CHANNEL_OPTIONS)
                  for _ in range(args.conns)]
              for m, e in members.items()}
    channels = {m: [kv_pb2_grpc.KVStub(ch) for ch in chs] for m, chs in opened.items()}
    # --client stream: each client's requests go over one KV.Stream per channel.
    args.multiplexers = {m: [Multiplexer(ch) for ch in chs] for m, chs in opened.items()}
    ordered = [members[m] for m in sorted(members)]
    if args.client in ("async", "async-unary"):
        args.library_client = kvclient.AsyncClient(ordered, timeout_s=args.timeout,
                                                   stream=args.client == "async")
    elif args.client in ("blocking", "blocking-unary"):
        args.library_client = kvclient.Client(ordered, timeout_s=args.timeout, stream=args.client == "blocking")
    else:
        args.library_client = None
    results = {}
    read_keys: list[bytes] = []
    try:
        for name in args.workloads:
            w = WORKLOADS[name]
            w = replace(w, requests=max(1, int(round(w.requests * args.scale))))
            if args.clients:
                w = replace(w, clients=args.clients if w.clients > 1 else 1)
            if w.kind == "get" and not read_keys:
                read_keys = await prefill(target, channels, args)
            runs = []
            for run in range(args.runs):
                figures = await run_workload(w, run, target, channels, args, read_keys)
                runs.append(figures)
                print(f"  {w.name} run {run + 1}/{args.runs}: {figures['ops_per_s']:,.0f} ops/s, "
                      f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
                      f"errors {figures['errors'] or 0}", flush=True)
                # A leader change between runs is reported, not hidden.
                _, now = await discover(list(members.values()), timeout_s=args.startup_timeout)
                if now != target.leader:
                    print(f"  leader changed: {target.leader} -> {now}", flush=True)
                    target.leader = now
            by_rate = sorted(runs, key=lambda r: r["ops_per_s"])
            results[w.name] = {
                "description": w.description,
                "clients": w.clients,
                "requests": w.requests,
                "ops_per_request": w.ops_per_request,
                "spread": w.spread,
                "median": by_rate[(len(by_rate) - 1) // 2],
                "runs": runs,
            }
    finally:
        if isinstance(args.library_client, kvclient.AsyncClient):
            await args.library_client.close()
        elif args.library_client is not None:
            args.library_client.close()
        for mux in (mux for muxes in args.multiplexers.values() for mux in muxes):
            await mux.close()
        for chs in opened.values():
            for ch in chs:
                await ch.close()
    return {"members": members, "leader": target.leader, "pids": target.pids,
            "workloads": results}


def format_table(report: dict) -> str:
    """The median run of every workload as a fixed-width table."""
    members = sorted(int(m) for m in report["members"])
    head = (f"{'workload':8} {'ops/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'wall s':>7} {'errors':>6} {'leader':>6} | CPU s: {'gen':>6} "
            + " ".join(f"{f'n{m}':>6}" for m in members))
    rows = [head, "-" * len(head)]
    runs = 0
    for name, result in report["workloads"].items():
        r = result["median"]
        runs = len(result["runs"])
        cpu = r["cpu_s"]
        nodes = " ".join(
            f"{cpu.get(f'node{m}'):6.1f}" if cpu.get(f"node{m}") is not None else f"{'-':>6}"
            for m in members
        )
        rows.append(
            f"{name:8} {r['ops_per_s']:9,.0f} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['max_ms']:8.1f} {r['wall_s']:7.1f} "
            f"{sum(r['errors'].values()):6d} {'n' + str(r['leader']):>6} |        "
            f"{cpu['generator']:6.1f} {nodes}"
        )
    rows.append(f"(median of {runs} run(s) by ops/s; leader: the leader when the run began; "
                f"W5 ops are puts, its latency is per Txn)")
    return "\n".join(rows)


def print_cprofile(args, leader: int) -> None:
    path = os.path.join(args.profile, f"node{leader}.prof")
    if not os.path.exists(path):
        print(f"cProfile: {path} was not written", flush=True)
        return
    print(f"cProfile of the leader's reactor thread (node{leader}) -> {path}")
    pstats.Stats(path).sort_stats("tottime").print_stats(25)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="kv_bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--endpoints", help="host:port,... of a running cluster "
                        "(default: start a local 3-node cluster)")
    parser.add_argument("-w", "--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the median "
                        "by ops/s is reported (default 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every workload's request count (default 1)")
    parser.add_argument("--clients", type=int, default=0,
                        help="override the 64 concurrent clients (W2 stays at 1)")
    parser.add_argument("--conns", type=int, default=1,
                        help="gRPC channels per member (default 1)")
    parser.add_argument("--client", choices=CLIENTS, default="raw",
                        help="how requests are sent: " + "; ".join(f"{k}: {v}" for k, v in CLIENTS.items()))
    parser.add_argument("--stream", dest="client", action="store_const", const="stream",
                        help="the same as --client stream")
    parser.add_argument("--key-bytes", type=int, default=16)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--read-keys", type=int, default=1000,
                        help="keys written before the read workloads (default 1000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed requests before each run (default 200)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline of each request in seconds (default 30)")
    parser.add_argument("--json-out", help="write the report as JSON here")
    parser.add_argument("--nodes", type=int, default=3, help="local cluster size (default 3)")
    parser.add_argument("--storage", default="lmdb",
                        help="local cluster's storage provider (default lmdb, fsync on)")
    parser.add_argument("--data-dir", default=None,
                        help="where the local cluster's temporary directory goes "
                        "(default: the system's; it must not be tmpfs for fsync to count)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the local cluster's directory (logs, data)")
    parser.add_argument("--server-pids", default="",
                        help="with --endpoints: ID=PID,... for CPU accounting "
                        "(default: found through /proc for local endpoints)")
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--table-from", metavar="JSON",
                        help="print the table of a saved --json-out report and exit")
    parser.add_argument("--profile", metavar="DIR", help="write profiles of the leader here")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy",
                        help="the py-spy binary (default: from PATH)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="py-spy samples only the thread holding the GIL: where the "
                        "leader's Python time goes (default: every thread py-spy "
                        "finds active, which includes some lock waits)")
    parser.add_argument("--profile-rate", type=int, default=250,
                        help="py-spy samples per second (default 250)")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.runs < 1 or args.scale <= 0 or args.conns < 1:
        parser.error("--runs and --conns must be >= 1 and --scale > 0")
    if args.profile and args.profiler == "cprofile" and args.endpoints:
        parser.error("--profiler cprofile starts the nodes itself: not with --endpoints")
    if args.profile and args.profiler == "py-spy":
        if not shutil.which(args.py_spy):
            parser.error(f"py-spy not found ({args.py_spy}); install it or use --py-spy PATH")
        os.makedirs(args.profile, exist_ok=True)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print(format_table(json.load(f)))
        return 0
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the cluster.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    cluster = directory = None
    try:
        if args.endpoints:
            endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
            given = dict(
                (int(k), int(v)) for k, v in
                (item.split("=") for item in args.server_pids.split(",") if item)
            )

            def pids_by_port(members):
                if given:
                    return given
                ports = {int(e.rsplit(":", 1)[1]): m for m, e in members.items()}
                return {ports[port]: pid for port, pid in listening_pids(set(ports)).items()}
        else:
            cluster, directory = start_local_cluster(args)
            endpoints = [n.endpoint for n in cluster.nodes.values()]
            by_endpoint = {n.endpoint: n.process.pid for n in cluster.nodes.values()}

            def pids_by_port(members):
                return {m: by_endpoint[e] for m, e in members.items()}

            print(f"local cluster: {args.nodes} nodes, storage {args.storage}, "
                  f"in {directory}", flush=True)
        started = datetime.datetime.now().astimezone()
        report = asyncio.run(bench(args, endpoints, pids_by_port))
    except KeyboardInterrupt:
        print("kv_bench: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"kv_bench: error: {error}", file=sys.stderr)
        if cluster is not None:
            for node in cluster.nodes.values():
                print(f"--- node{node.id} log tail\n{node.log()[-2000:]}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
            if directory and not args.keep_data:
                shutil.rmtree(directory, ignore_errors=True)
    if args.profile and args.profiler == "cprofile":
        print_cprofile(args, report["leader"])
    report["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cluster": "local" if cluster is not None else "endpoints",
        "storage": args.storage if cluster is not None else "unknown (--endpoints)",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "scale": args.scale,
        "client": args.client,
        "runs": args.runs,
    }
    print()
    print(format_table(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2, sort_keys=False)
        print(f"JSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
