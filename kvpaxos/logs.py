"""
Structured logs (issue 13, part 7): with C{log_format = "json"}
(C{--log-format json}) a node logs one JSON object per line, as
C{twisted.logger}'s JSON observer writes events, each with the node's
C{member_id}.

twistd chooses its log observer before the plugin builds the node, from
its own C{--logger} option, a dotted name it imports.  So the plugin's
options (L{kvpaxos.tap.Options}), once they know the format, name
L{json_observer} there, and leave here what it needs (L{configure}): the
member id, and where twistd would log (standard output for C{-}, or with
C{--nodaemon} and no C{--logfile}; else that file, C{twistd.log} for a
daemon, rotated by size and on SIGUSR1 as twistd's own file is).
"""

from __future__ import annotations

import sys
from typing import Optional

from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python import logfile
from zope.interface import provider

__all__ = ["LOG_FORMATS", "OBSERVER", "configure", "json_observer"]

#: The log formats a node writes.
LOG_FORMATS = ("text", "json")

#: The dotted name twistd's C{--logger} is given for JSON logs.
OBSERVER = "kvpaxos.logs.json_observer"

_settings: dict = {"member_id": None, "logfile": None}


def configure(member_id: int, path: Optional[str]) -> None:
    """What L{json_observer} writes: C{member_id} in every record, to C{path} (C{-} or None: standard output)."""
    _settings["member_id"] = member_id
    _settings["logfile"] = path


def json_observer() -> ILogObserver:
    """twistd's log observer for JSON logs: one JSON object per line, with the member id."""
    path = _settings["logfile"]
    out = sys.stdout if path in (None, "", "-") else logfile.LogFile.fromFullPath(path)
    if out is not sys.stdout:
        rotate_on_sigusr1(out)
    write = jsonFileLogObserver(out, recordSeparator="")
    member_id = _settings["member_id"]

    @provider(ILogObserver)
    def observer(event: dict) -> None:
        write(dict(event, member_id=member_id))

    return observer


def rotate_on_sigusr1(log_file) -> None:
    """
    Rotate C{log_file} on SIGUSR1, in the reactor thread, as twistd does its
    own log file (logrotate's C{postrotate} sends it), unless something
    else handles the signal already.
    """
    import signal

    if not hasattr(signal, "SIGUSR1") or signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None, 0):
        return

    def rotate(signum, frame) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)

    try:
        signal.signal(signal.SIGUSR1, rotate)
    except ValueError:  # not the main thread
        pass
