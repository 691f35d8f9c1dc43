"""
The admin contract has two homes until they are merged: the API's copy
(L{kvpaxos.api.admin}, which the client may import) and the server's
(L{kvpaxos.admin.commands}, to re-export the API's).  This test holds them
to the same commands, argument names and types, responses and error codes,
so a client and a server built from either speak the same AMP.
"""

from __future__ import annotations

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.admin import commands as server_side
from kvpaxos.api import admin as api_side

COMMANDS = ("Status", "MemberList", "MemberAdd", "MemberPromote", "MemberRemove", "TransferLeadership")


def shape(argument) -> tuple:
    """An AMP argument as comparable data: its type, whether optional, and what it holds."""
    inner: object = None
    if isinstance(argument, amp.AmpList):
        inner = fields(argument.subargs)
    elif isinstance(argument, amp.ListOf):
        inner = shape(argument.elementType)
    return type(argument).__name__, argument.optional, inner


def fields(arguments) -> list:
    return [(name, shape(argument)) for name, argument in arguments]


def error_codes(command) -> dict:
    return {error.__name__: code for error, code in getattr(command, "errors", {}).items()}


class AdminContractTests(SynchronousTestCase):
    """kvpaxos.api.admin and kvpaxos.admin.commands define the same commands."""

    def test_same_commands(self) -> None:
        """Every admin command has the same arguments, response and error codes in both modules."""
        for name in COMMANDS:
            ours, theirs = getattr(api_side, name), getattr(server_side, name)
            self.assertEqual(ours.commandName, theirs.commandName, name)
            self.assertEqual(fields(ours.arguments), fields(theirs.arguments), name)
            self.assertEqual(fields(ours.response), fields(theirs.response), name)
            self.assertEqual(error_codes(ours), error_codes(theirs), name)

    def test_same_errors(self) -> None:
        """The error classes carry the same names (REJECTED, UNAVAILABLE, NOT_LEADER)."""
        self.assertEqual(error_codes(api_side.MemberAdd),
                         {"NotLeader": b"NOT_LEADER", "Rejected": b"REJECTED", "Unavailable": b"UNAVAILABLE"})
