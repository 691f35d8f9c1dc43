"""
The admin contract has one definition (L{kvpaxos.api.admin}, which the
client may import); the server's module (L{kvpaxos.admin.commands})
re-exports the same objects, so a client and the server speak the same AMP.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.admin import commands as server_side
from kvpaxos.api import admin as api_side

NAMES = (
    "Status", "MemberList", "MemberAdd", "MemberPromote", "MemberRemove", "TransferLeadership",
    "NotLeader", "Rejected", "Unavailable", "MEMBER", "MEMBER_LIST",
)


class OneContractTests(SynchronousTestCase):
    """The server uses the API's commands and errors themselves, not copies."""

    def test_same_objects(self):
        """Every command, error and argument list of the server is the API's."""
        for name in NAMES:
            self.assertIs(getattr(server_side, name), getattr(api_side, name), name)

    def test_error_codes(self):
        """Every change command maps the three errors to their codes."""
        for name in ("MemberList", "MemberAdd", "MemberPromote", "MemberRemove", "TransferLeadership"):
            errors = getattr(api_side, name).errors
            self.assertEqual(
                {errors[api_side.Rejected], errors[api_side.Unavailable], errors[api_side.NotLeader]},
                {b"REJECTED", b"UNAVAILABLE", b"NOT_LEADER"},
                name,
            )
