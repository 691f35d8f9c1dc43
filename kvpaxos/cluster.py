"""
C{kvpaxos-cluster}: run a local cluster, one twistd process per node, from
the TOML files in a directory (by default C{etc/kvpaxos/node*.toml} of the
checkout: three nodes serving gRPC on 127.0.0.1:2379, :22379 and :32379).

The nodes log to this terminal, each line naming its node.  Ctrl-C (or
SIGTERM) stops them all: SIGTERM first, SIGKILL after a bounded wait.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import time

_TWISTD = "from twisted.scripts.twistd import run; run()"


def twistd_command(config_path: str) -> list[str]:
    """Return the argv that runs one node configured by C{config_path}."""
    return [
        sys.executable, "-c", _TWISTD,
        "--nodaemon", "--pidfile=", "--logfile=-",
        "kvpaxos", "--config", config_path,
    ]


def plugin_environment(root: str) -> dict:
    """
    Return the environment for the nodes: if C{root} is a checkout (it has
    C{twisted/plugins/kvpaxos_plugin.py}), put it on PYTHONPATH so twistd
    finds the plugin even under an editable install.
    """
    env = dict(os.environ)
    if os.path.exists(os.path.join(root, "twisted", "plugins", "kvpaxos_plugin.py")):
        paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def stop_all(processes: list[subprocess.Popen], wait_s: float = 10.0) -> None:
    """SIGTERM every process still running, then SIGKILL what outlives C{wait_s}."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpaxos-cluster",
        description="Run a local kvpaxos cluster: one twistd node per TOML file.",
    )
    parser.add_argument(
        "--config-dir", default=os.path.join("etc", "kvpaxos"),
        help="directory of node*.toml files (default: etc/kvpaxos)",
    )
    args = parser.parse_args(argv)
    configs = sorted(glob.glob(os.path.join(args.config_dir, "node*.toml")))
    if not configs:
        print(f"kvpaxos-cluster: error: no node*.toml in {args.config_dir}", file=sys.stderr)
        return 2
    env = plugin_environment(os.getcwd())
    processes = [subprocess.Popen(twistd_command(path), env=env) for path in configs]

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"kvpaxos-cluster: {len(processes)} nodes started "
        f"(pids {', '.join(str(p.pid) for p in processes)}); Ctrl-C stops them",
        flush=True,
    )
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all(processes)
    failed = [p for p in processes if p.returncode not in (0, -signal.SIGTERM, 143)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
