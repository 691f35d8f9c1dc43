"""
Debian's C{etcdctl lease ...} (and C{put --lease}) against a real twistd
kvpaxos node's etcd port and against a real etcd (Debian's etcd-server)
that the test starts: the same commands must print the same lines and
exit the same way once lease ids (16 hex digits, picked by each server)
and the seconds a lease has left are written as C{ID} and C{N}.  The
processes and C{etcdctl} are L{tests.test_etcd_process}'s (one etcd and
one kvpaxos node for the class, killed by pid; every wait bounded).

Not compared, because they differ by design: a grant under the minimum TTL
(etcd's minimum at its defaults is 2 s, kvpaxos's 1 s), and C{get -w
json}'s C{lease} of a record (kvpaxos's store does not tell: 0).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from twisted.trial.unittest import TestCase

from tests.test_etcd_process import COMMAND_S, SharedProcesses, etcdctl

_ID = re.compile(r"\b[0-9a-f]{16}\b")
_REMAINING = re.compile(r"remaining\(\d+s\)")


def normalized(answer: tuple) -> tuple:
    """An etcdctl answer (status, output, error lines) with lease ids and the seconds left written as ID and N."""
    status, out, error = answer
    return status, _REMAINING.sub("remaining(Ns)", _ID.sub("ID", out)), _ID.sub("ID", error)


class EtcdctlLeaseTests(SharedProcesses, TestCase):
    """etcdctl's lease commands print the same from kvpaxos as from etcd."""

    def run_both(self, scenario) -> list:
        """Run C{scenario(run)} against etcd, then kvpaxos; assert the same normalized answers; return etcd's."""
        answers = []
        for endpoint in (self.processes.etcd.endpoint, self.processes.kvpaxos[0]):
            runs = []

            def run(*arguments: str, endpoint=endpoint) -> tuple:
                answer = etcdctl(endpoint, *arguments)
                runs.append((_ID.sub("ID", " ".join(arguments)), normalized(answer)))
                return answer

            scenario(run, endpoint)
            answers.append(runs)
        etcd, kvpaxos = answers
        self.assertEqual([arguments for arguments, _ in kvpaxos], [arguments for arguments, _ in etcd])
        for (arguments, theirs), (_, ours) in zip(etcd, kvpaxos):
            self.assertEqual(ours, theirs, f"etcdctl {arguments}")
        return etcd

    def test_lease_lifecycle(self) -> None:
        """grant, put --lease, timetolive (--keys), keep-alive --once, list, revoke, and each after the revoke."""
        def scenario(run, endpoint) -> None:
            status, out, _ = run("lease", "grant", "60")
            self.assertEqual(status, 0, out)
            lease = out.split()[1]
            run("put", "--lease", lease, "ll/a", "1")
            run("put", "ll/b", "2", f"--lease={lease}")
            run("lease", "timetolive", lease, "--keys")
            run("lease", "timetolive", lease)
            run("lease", "keep-alive", "--once", lease)
            run("lease", "list")
            run("lease", "revoke", lease)
            run("get", "ll/", "--prefix")
            run("lease", "timetolive", lease, "--keys")
            run("lease", "revoke", lease)
            run("lease", "keep-alive", "--once", lease)
            run("put", "--lease", lease, "ll/c", "3")
            run("lease", "list")

        etcd = self.run_both(scenario)
        lines = [answer[1] for _, answer in etcd]
        self.assertEqual(lines[0], "lease ID granted with TTL(60s)\n")
        self.assertEqual(lines[3], "lease ID granted with TTL(60s), remaining(Ns), attached keys([ll/a ll/b])\n")
        self.assertEqual(lines[5], "lease ID keepalived with TTL(60)\n")
        self.assertEqual(lines[9], "lease ID already expired\n")
        self.assertEqual([answer[0] for _, answer in etcd][10:13], [1, 2, 1])  # ExitBadConnection for keep-alive

    def test_errors(self) -> None:
        """A TTL over etcd's maximum, a lease id that is not hex, an id in use, and a revoke of none: etcd's words."""
        def scenario(run, endpoint) -> None:
            run("lease", "grant", "9000000001")
            run("lease", "revoke", "xyz")
            run("lease", "revoke", "7fffffffffff0001")
            run("lease", "timetolive", "7fffffffffff0001")

        etcd = self.run_both(scenario)
        self.assertIn("too large lease TTL", etcd[0][1][2])

    def test_keep_alive_until_revoked(self) -> None:
        """keep-alive renews and prints until the lease is revoked, then prints etcdctl's last line and exits."""
        def scenario(run, endpoint) -> None:
            _, out, _ = run("lease", "grant", "3")
            lease = out.split()[1]
            process = subprocess.Popen(["etcdctl", "--endpoints", endpoint, "lease", "keep-alive", lease],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env=dict(os.environ, ETCDCTL_API="3"))
            try:
                first = process.stdout.readline().decode()
                run("lease", "revoke", lease)
                deadline = time.monotonic() + COMMAND_S
                while process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assertIsNotNone(process.poll(), "etcdctl lease keep-alive did not end after the revoke")
                rest = process.stdout.read().decode().splitlines()
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=5)
                process.stdout.close()
                process.stderr.close()
            self.assertEqual(_ID.sub("ID", first), "lease ID keepalived with TTL(3)\n")
            # Renewals may be answered between the first line and the revoke; the last line is the end.
            ending = [_ID.sub("ID", line) for line in rest if "keepalived" not in line]
            self.assertEqual((ending, process.returncode), (["lease ID expired or revoked."], 0))

        self.run_both(scenario)
