"""
The golden protocol traces of tests/testdata/*.txt (see
L{kvpaxos.testing.traces}): each file is replayed against the core and its
printed output compared with the file.  To accept a deliberate change of
output, run with C{KVPAXOS_REWRITE_TRACES=1} and review the diff.
"""

from __future__ import annotations

import glob
import os

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.testing import traces

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
REWRITE = os.environ.get("KVPAXOS_REWRITE_TRACES") == "1"


class TraceFileTests(SynchronousTestCase):
    """One test per trace file; see the module docstring."""

    def check(self, name: str) -> None:
        path = os.path.join(TESTDATA, name)
        with open(path) as f:
            expected, actual = traces.run_file(f.read())
        if REWRITE:
            with open(path, "w") as f:
                f.write(actual)
            return
        if actual != expected:
            self.fail(
                f"{name} differs from its golden output"
                " (KVPAXOS_REWRITE_TRACES=1 rewrites it):\n"
                + traces.diff(name, expected, actual)
            )


def _add(name: str) -> None:
    stem = os.path.splitext(name)[0].replace("-", "_")

    def test(self) -> None:
        self.check(name)

    test.__doc__ = f"The core replays tests/testdata/{name} as its golden output says."
    setattr(TraceFileTests, f"test_{stem}", test)


for _path in sorted(glob.glob(os.path.join(TESTDATA, "*.txt"))):
    _add(os.path.basename(_path))


class ParseTests(SynchronousTestCase):
    """The trace file format."""

    def test_round_trip(self) -> None:
        """A file whose outputs are right is reproduced byte for byte."""
        text = "# a comment\nadd-nodes 1\n----\nstarted 1, voters=1\n\nstatus\n----\n" \
            "1: follower promised=0.0 leader=None chosen=0 applied=0 snapshot=0 voters=1 state=-\n"
        expected, actual = traces.run_file(text)
        self.assertEqual(actual, text)

    def test_timeout_is_a_message(self) -> None:
        """A lone voter stepped an election timeout campaigns and wins at once."""
        trace = traces.Trace()
        trace.run("add-nodes 1")
        self.assertEqual(trace.run("campaign 1"), "1 becomes pre-candidate\n1 becomes candidate 1.1")
        trace.run("stabilize")
        self.assertTrue(trace.replicas[1].is_leader)
