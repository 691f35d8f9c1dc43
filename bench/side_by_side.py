"""
kvpaxos, a bare grpc.aio server and etcd, side by side in one sitting
(issue 12): the same workloads from one generator, interleaved round by
round, with ops/s, latency, and CPU and thread switches per request of
every process, in one table with ratios.

What it starts (every process on 127.0.0.1, ephemeral ports, in one
temporary directory; all stopped, by PID, when it ends):

  - kvpaxos: a local 3-node cluster (twistd, LMDB, fsync on), as
    L{kv_bench} starts it;
  - bare: C{bench/grpc_ceiling.py}, a grpc.aio server over a dict speaking
    kvpaxos's proto (the ceiling of any Python gRPC edge here);
  - etcd: a 3-member cluster of the C{etcd} binary on PATH (Debian's
    C{etcd-server} package; fsync on, etcd's default), driven through the
    subset of etcd's v3 proto in C{bench/etcd/rpc.proto} (generated into
    the temporary directory at start).  Without the binary, etcd's columns
    are left out (C{--no-etcd} leaves them out too).

How kvpaxos is driven, each a column of its own (C{--paths}):

  - C{unary}: raw C{grpc.aio} unary stubs with prepared messages (what
    "kvpaxos today" meant in issue 12);
  - C{async}: L{kvpaxos.client.AsyncClient}, one for all coroutines: its
    sessions (exactly-once writes), retries and routing, its requests
    multiplexed over one C{KV.Stream} per member;
  - C{blocking}: L{kvpaxos.client.Client} from as many threads as the
    workload has clients, multiplexed the same way.

Workloads (counts are issue 12's; C{--scale} multiplies them): W1 (64
clients, puts to the leader), W1s (the same spread over the members), W2
(1 client, sequential puts), W3 (64 clients, linearizable gets), W3S (64
clients, serializable gets at the leader), W5 (64 clients, Txns of 100
puts; ops are puts).  The bare server has one endpoint: no W1s.  The
client library routes by itself, so W1s is not run through it.

Each round runs every workload against every target in turn; C{--rounds}
rounds (default 3); the table shows the median round of each cell, and
ratios against the bare server and etcd of the same workload.

    .venv/bin/python bench/side_by_side.py                     # full size, 3 rounds
    .venv/bin/python bench/side_by_side.py --scale 0.3 --rounds 2 -w W1,W3
    .venv/bin/python bench/side_by_side.py --json-out side.json
    .venv/bin/python bench/side_by_side.py --table-from side.json

This is a benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

import kv_bench  # noqa: E402
from kvpaxos import client as kvclient  # noqa: E402
from kvpaxos.api.endpoints import CHANNEL_OPTIONS  # noqa: E402
from kvpaxos.testing.processes import ProcessCluster, free_port  # noqa: E402
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc  # noqa: E402

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "put", "get" or "txn"
    clients: int
    requests: int
    ops_per_request: int = 1
    spread: bool = False
    serializable: bool = False
    description: str = ""


WORKLOADS = {
    w.name: w
    for w in (
        Workload("W1", "put", 64, 20_000, description="64 clients, puts to the leader"),
        Workload("W1s", "put", 64, 20_000, spread=True, description="64 clients, puts spread over the members"),
        Workload("W2", "put", 1, 2_000, description="1 client, sequential puts (latency)"),
        Workload("W3", "get", 64, 20_000, description="64 clients, linearizable gets"),
        Workload("W3S", "get", 64, 20_000, serializable=True,
                 description="64 clients, serializable gets at the leader"),
        Workload("W5", "txn", 64, 2_000, ops_per_request=100, description="64 clients, Txns of 100 puts"),
    )
}

#: Columns, in table order: (target, path).
COLUMNS = (("etcd", "unary"), ("bare", "unary"), ("kvpaxos", "unary"), ("kvpaxos", "async"),
           ("kvpaxos", "blocking"))


def column_name(target: str, path: str) -> str:
    return target if target != "kvpaxos" else f"kvpaxos {path}"


# --- the targets ----------------------------------------------------------------


@dataclass
class Target:
    """A running system: endpoints by member id, its leader, pids by member id, and how to talk to it."""

    name: str
    endpoints: dict[int, str]
    leader: int
    pids: dict[int, int]
    processes: list = field(default_factory=list)  # what to stop (Popen), beyond a ProcessCluster
    cluster: Optional[ProcessCluster] = None
    channels: dict[int, grpc.aio.Channel] = field(default_factory=dict)
    read_keys: list[bytes] = field(default_factory=list)
    libraries: dict[str, object] = field(default_factory=dict)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_kvpaxos(directory: str) -> Target:
    cluster = ProcessCluster(os.path.join(directory, "kvpaxos"), size=3, storage="lmdb")
    cluster.start()
    endpoints = {n.id: n.endpoint for n in cluster.nodes.values()}
    pids = {n.id: n.process.pid for n in cluster.nodes.values()}
    return Target("kvpaxos", endpoints, 0, pids, cluster=cluster)


def start_bare(directory: str) -> Target:
    port = free_port()
    log = open(os.path.join(directory, "bare.log"), "wb")
    process = subprocess.Popen([sys.executable, str(BENCH / "grpc_ceiling.py"), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    return Target("bare", {1: f"127.0.0.1:{port}"}, 1, {1: process.pid}, processes=[process])


def start_etcd(directory: str, binary: str) -> Target:
    names = ("e1", "e2", "e3")
    client_ports = {name: free_port() for name in names}
    peer_ports = {name: free_port() for name in names}
    initial = ",".join(f"{name}=http://127.0.0.1:{peer_ports[name]}" for name in names)
    processes = []
    for name in names:
        log = open(os.path.join(directory, f"etcd-{name}.log"), "wb")
        client_url = f"http://127.0.0.1:{client_ports[name]}"
        peer_url = f"http://127.0.0.1:{peer_ports[name]}"
        processes.append(subprocess.Popen([
            binary, "--name", name, "--data-dir", os.path.join(directory, f"etcd-{name}"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "kvpaxos-bench", "--log-level", "warn",
        ], stdout=log, stderr=subprocess.STDOUT))
    # Member ids are etcd's (found by discovery); pids by endpoint until then.
    target = Target("etcd", {}, 0, {}, processes=processes)
    target.pending = {f"127.0.0.1:{client_ports[n]}": p.pid for n, p in zip(names, processes)}
    return target


def etcd_modules(directory: str):
    """Generate bench/etcd/rpc.proto's modules into C{directory} and import them."""
    from grpc_tools import protoc

    status = protoc.main(["grpc_tools.protoc", f"-I{BENCH / 'etcd'}", f"--python_out={directory}",
                          f"--grpc_python_out={directory}", str(BENCH / "etcd" / "rpc.proto")])
    if status != 0:
        raise RuntimeError("protoc failed on bench/etcd/rpc.proto")
    sys.path.insert(0, directory)
    return importlib.import_module("rpc_pb2"), importlib.import_module("rpc_pb2_grpc")


async def discover_etcd(target: Target, pb, pb_grpc, timeout_s: float) -> None:
    """Wait until every etcd member answers Status naming one leader; fill in ids and pids."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        members, leaders = {}, set()
        try:
            for endpoint in target.pending:
                async with grpc.aio.insecure_channel(endpoint) as channel:
                    status = await pb_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=1.0)
                members[status.header.member_id] = endpoint
                leaders.add(status.leader)
        except grpc.aio.AioRpcError as error:
            last = f"{error.code().name}: {error.details()}"
        else:
            if len(leaders) == 1 and 0 not in leaders and leaders <= set(members):
                target.endpoints = members
                target.leader = leaders.pop()
                target.pids = {m: target.pending[e] for m, e in members.items()}
                return
            last = f"leaders seen: {sorted(leaders)}"
        await asyncio.sleep(0.2)
    raise RuntimeError(f"etcd did not elect a leader within {timeout_s}s ({last})")


# --- requests per target ------------------------------------------------------------


class Speaker:
    """How one target is spoken to: request messages, stubs, answer checks, prefill."""

    def __init__(self, target: Target, etcd=None) -> None:
        self.target = target
        self.etcd = etcd  # (pb, pb_grpc) for etcd

    def stubs(self, member: int):
        channel = self.target.channels[member]
        if self.etcd is not None:
            return self.etcd[1].KVStub(channel)
        return kv_pb2_grpc.KVStub(channel)

    def build(self, w: Workload, prefix: str, count: int, args) -> list:
        value = b"v" * args.value_bytes
        key = lambda i: kv_bench.make_key(prefix, i, args.key_bytes)  # noqa: E731
        if self.etcd is not None:
            pb = self.etcd[0]
            if w.kind == "put":
                return [pb.PutRequest(key=key(i), value=value) for i in range(count)]
            if w.kind == "get":
                gets = [pb.RangeRequest(key=k, serializable=w.serializable) for k in self.target.read_keys]
                return [gets[i % len(gets)] for i in range(count)]
            n = w.ops_per_request
            return [pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=key(r * n + j), value=value))
                                           for j in range(n)]) for r in range(count)]
        if w.kind == "put":
            return [kv_pb2.PutRequest(key=key(i), value=value) for i in range(count)]
        if w.kind == "get":
            consistency = kv_pb2.SERIALIZABLE if w.serializable else kv_pb2.LINEARIZABLE
            gets = [kv_pb2.GetRequest(key=k, consistency=consistency) for k in self.target.read_keys]
            return [gets[i % len(gets)] for i in range(count)]
        n = w.ops_per_request
        return [kv_bench.txn_of_puts([key(r * n + j) for j in range(n)], value) for r in range(count)]

    def method(self, kind: str) -> str:
        if self.etcd is not None:
            return {"put": "Put", "get": "Range", "txn": "Txn"}[kind]
        return {"put": "Put", "get": "Get", "txn": "Txn"}[kind]

    def check(self, kind: str) -> Callable:
        if kind == "get":
            if self.etcd is not None:
                return lambda response: len(response.kvs) == 1
            return lambda response: response.found
        if kind == "txn":
            return lambda response: response.succeeded
        return lambda response: True

    async def prefill(self, args) -> None:
        keys = [kv_bench.make_key("r-", i, args.key_bytes) for i in range(args.read_keys)]
        self.target.read_keys = keys
        fill = Workload("fill", "txn", 8, 0, ops_per_request=100)
        value = b"v" * args.value_bytes
        if self.etcd is not None:
            pb = self.etcd[0]
            txns = [pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=value))
                                           for k in keys[i:i + 100]]) for i in range(0, len(keys), 100)]
        else:
            txns = [kv_bench.txn_of_puts(keys[i:i + 100], value) for i in range(0, len(keys), 100)]
        stub = self.stubs(self.target.leader)
        _, errors = await kv_bench.drive([stub.Txn], txns, fill.clients, args.timeout, self.check("txn"))
        if errors:
            raise RuntimeError(f"{self.target.name}: prefill failed: {dict(errors)}")
        await asyncio.sleep(1.0)  # every member applies it (reads at the leader anyway, but W3S)


# --- one measured run ---------------------------------------------------------------


async def measure(w: Workload, target: Target, speaker: Speaker, path: str, run: str, args) -> dict:
    """One run of C{w} against C{target} through C{path}: warm up, then the timed part; return its figures."""
    kind = w.kind
    if path == "unary":
        members = sorted(target.endpoints) if w.spread else [target.leader]
        calls = [getattr(speaker.stubs(m), speaker.method(kind)) for m in members]
    else:
        calls = [kv_bench.library_call(target.libraries[path], kind)]
    check = speaker.check(kind)
    prefix = f"{w.name.lower()}{run}-"
    warm = speaker.build(w, prefix + "w", min(args.warmup, w.requests), args)
    requests = speaker.build(w, prefix, w.requests, args)

    async def drive(batch, clients):
        if path == "blocking":
            return await asyncio.to_thread(kv_bench.drive_threads, calls[0], batch, clients, check)
        return await kv_bench.drive(calls, batch, clients, args.timeout, check)

    if warm:
        await drive(warm, min(w.clients, len(warm)))
    before = {m: kv_bench.process_cpu(pid) for m, pid in target.pids.items()}
    self_before = kv_bench.process_cpu(os.getpid())
    start = time.perf_counter()
    latencies, errors = await drive(requests, w.clients)
    wall_s = time.perf_counter() - start
    after = {m: kv_bench.process_cpu(pid) for m, pid in target.pids.items()}
    self_after = kv_bench.process_cpu(os.getpid())
    latencies.sort()
    answered = len(latencies)
    per_request = {}
    followers = [m for m in sorted(target.pids) if m != target.leader]
    named = [("leader", target.leader)] + [(f"follower{i + 1}", m) for i, m in enumerate(followers)]
    for name, b, a in [("generator", self_before, self_after)] + [
            (label, before[m], after[m]) for label, m in named if m in target.pids]:
        if a is None or b is None or not answered:
            continue
        per_request[name] = {
            "cpu_us": 1e6 * ((a[0] + a[1]) - (b[0] + b[1])) / answered,
            "switches": (a[2] - b[2]) / answered,
        }
    return {
        "answered": answered,
        "errors": dict(errors),
        "wall_s": wall_s,
        "ops_per_s": answered * w.ops_per_request / wall_s,
        "p50_ms": kv_bench.percentile_ms(latencies, 50),
        "p99_ms": kv_bench.percentile_ms(latencies, 99),
        "per_request": per_request,
        "leader": target.leader,
    }


# --- the table ---------------------------------------------------------------------


def median_run(runs: list) -> Optional[dict]:
    if not runs:
        return None
    return sorted(runs, key=lambda r: r["ops_per_s"])[(len(runs) - 1) // 2]


def format_table(report: dict) -> str:
    columns = [tuple(c) for c in report["columns"]]
    names = [column_name(*c) for c in columns]
    lines = []
    head = f"{'workload':9}" + "".join(f"{n:>17}" for n in names)
    lines += [head, "-" * len(head)]
    for wname, cells in report["results"].items():
        figures = {c: median_run(cells.get(column_name(*c), [])) for c in columns}
        latency = wname == "W2"

        def cell(c):
            r = figures[c]
            if r is None:
                return f"{'-':>17}"
            return f"{r['p50_ms']:>14.2f} ms" if latency else f"{r['ops_per_s']:>17,.0f}"

        lines.append(f"{wname:9}" + "".join(cell(c) for c in columns))
        for base in ("etcd", "bare"):
            ref = figures.get((base, "unary"))
            if ref is None:
                continue
            ratios = []
            for c in columns:
                r = figures[c]
                if r is None or c[0] == base:
                    ratios.append(f"{'':>17}")
                elif latency:
                    ratios.append(f"{r['p50_ms'] / ref['p50_ms']:>16.2f}x")
                else:
                    ratios.append(f"{r['ops_per_s'] / ref['ops_per_s']:>16.2f}x")
            lines.append(f"{'  /' + base:9}" + "".join(ratios))
    lines.append("")
    lines.append("Per request, the median round: CPU µs and thread switches of the generator and each server process")
    for wname, cells in report["results"].items():
        for c in columns:
            r = median_run(cells.get(column_name(*c), []))
            if r is None:
                continue
            parts = [f"{name} {v['cpu_us']:.0f} µs / {v['switches']:.1f}" for name, v in r["per_request"].items()]
            errors = f"  errors {r['errors']}" if r["errors"] else ""
            lines.append(f"  {wname:4} {column_name(*c):17} p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:7.2f} ms | "
                         + ", ".join(parts) + errors)
    rounds = max((len(v) for cells in report["results"].values() for v in cells.values()), default=0)
    lines.append(f"(median of {rounds} interleaved round(s) by ops/s; W2 shows p50 latency, lower is better; "
                 f"W5 ops are puts)")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------


async def run(args, directory: str) -> dict:
    targets: dict[str, Target] = {}
    speakers: dict[str, Speaker] = {}
    etcd_binary = None if args.no_etcd else shutil.which(args.etcd)
    try:
        targets["kvpaxos"] = start_kvpaxos(directory)
        targets["bare"] = start_bare(directory)
        if etcd_binary:
            targets["etcd"] = start_etcd(directory, etcd_binary)
        else:
            print(f"etcd: no {args.etcd!r} on PATH (Debian: apt-get install etcd-server); its columns are left out",
                  flush=True)
        members, leader = await kv_bench.discover(list(targets["kvpaxos"].endpoints.values()), args.startup_timeout)
        by_endpoint = {e: targets["kvpaxos"].pids[m] for m, e in targets["kvpaxos"].endpoints.items()}
        targets["kvpaxos"].endpoints, targets["kvpaxos"].leader = members, leader
        targets["kvpaxos"].pids = {m: by_endpoint[e] for m, e in members.items()}
        await kv_bench.discover(list(targets["bare"].endpoints.values()), args.startup_timeout)
        speakers["kvpaxos"] = Speaker(targets["kvpaxos"])
        speakers["bare"] = Speaker(targets["bare"])
        if "etcd" in targets:
            os.makedirs(os.path.join(directory, "etcdpb"), exist_ok=True)
            etcd = etcd_modules(os.path.join(directory, "etcdpb"))
            await discover_etcd(targets["etcd"], *etcd, args.startup_timeout)
            speakers["etcd"] = Speaker(targets["etcd"], etcd)
        for target in targets.values():
            target.channels = {m: grpc.aio.insecure_channel(e, options=CHANNEL_OPTIONS)
                               for m, e in target.endpoints.items()}
            print(f"{target.name}: members {dict(sorted(target.endpoints.items()))}, leader {target.leader}, "
                  f"pids {target.pids}", flush=True)
        kvpaxos_endpoints = [members[m] for m in sorted(members)]
        if "async" in args.paths:
            targets["kvpaxos"].libraries["async"] = kvclient.AsyncClient(kvpaxos_endpoints, timeout_s=args.timeout)
        if "blocking" in args.paths:
            targets["kvpaxos"].libraries["blocking"] = kvclient.Client(kvpaxos_endpoints, timeout_s=args.timeout)
        columns = [c for c in COLUMNS if c[0] in targets and (c[0] != "kvpaxos" or c[1] in args.paths)]
        results: dict = {name: {} for name in args.workloads}
        for name in args.workloads:
            if WORKLOADS[name].kind == "get":
                for t, speaker in speakers.items():
                    if not targets[t].read_keys:
                        await speaker.prefill(args)
                break
        for round_ in range(args.rounds):
            for name in args.workloads:
                w = WORKLOADS[name]
                w = Workload(w.name, w.kind, w.clients, max(1, int(round(w.requests * args.scale))),
                             w.ops_per_request, w.spread, w.serializable, w.description)
                for target_name, path in columns:
                    if w.spread and (target_name == "bare" or path != "unary"):
                        continue
                    target = targets[target_name]
                    figures = await measure(w, target, speakers[target_name], path, f"{round_}", args)
                    label = column_name(target_name, path)
                    results[name].setdefault(label, []).append(figures)
                    shown = (f"p50 {figures['p50_ms']:.2f} ms" if name == "W2"
                             else f"{figures['ops_per_s']:,.0f} ops/s")
                    lead = figures["per_request"].get("leader", {})
                    print(f"round {round_ + 1} {name:4} {label:17} {shown:>16}  leader "
                          f"{lead.get('cpu_us', float('nan')):.0f} µs / {lead.get('switches', float('nan')):.1f} sw"
                          f"{'  errors ' + str(figures['errors']) if figures['errors'] else ''}", flush=True)
        return {"columns": columns, "results": results}
    finally:
        for target in targets.values():
            for library in target.libraries.values():
                if isinstance(library, kvclient.AsyncClient):
                    await library.close()
                else:
                    library.close()
            for channel in target.channels.values():
                await channel.close()
            for process in target.processes:
                stop_process(process)
            if target.cluster is not None:
                target.cluster.stop()


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="side_by_side", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--paths", default="unary,async,blocking",
                        help="how kvpaxos is driven: unary, async, blocking (default: all three)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's request count")
    parser.add_argument("--key-bytes", type=int, default=16)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--read-keys", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--etcd", default="etcd", help="the etcd binary (default: etcd on PATH)")
    parser.add_argument("--no-etcd", action="store_true", help="leave etcd out")
    parser.add_argument("--data-dir", default=None, help="where the temporary directory goes (not tmpfs)")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--table-from", metavar="JSON")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := [w for w in args.workloads if w not in WORKLOADS]:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if unknown := [p for p in args.paths if p not in ("unary", "async", "blocking")]:
        parser.error(f"unknown path(s) {unknown}; choose from unary, async, blocking")
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print(format_table(json.load(f)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    directory = tempfile.mkdtemp(prefix="kvpaxos-side-", dir=args.data_dir)
    started = datetime.datetime.now().astimezone()
    try:
        report = asyncio.run(run(args, directory))
    except KeyboardInterrupt:
        print("side_by_side: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"side_by_side: error: {error} (logs in {directory})", file=sys.stderr)
        args.keep_data = True
        return 1
    finally:
        if not args.keep_data:
            shutil.rmtree(directory, ignore_errors=True)
    etcd_version = None
    if shutil.which(args.etcd) and not args.no_etcd:
        etcd_version = subprocess.run([args.etcd, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    report["meta"] = {
        "date": started.isoformat(timespec="seconds"), "cores": os.cpu_count(), "machine": platform.platform(),
        "python": platform.python_version(), "grpcio": grpc.__version__, "etcd": etcd_version,
        "argv": sys.argv[1:] if argv is None else list(argv), "scale": args.scale, "rounds": args.rounds,
    }
    print()
    print(format_table(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"JSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
