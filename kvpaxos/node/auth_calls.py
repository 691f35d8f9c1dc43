"""
L{AuthCalls}: what the node offers the gRPC edge's C{kvpaxos.v1.Auth}
service, mixed into L{kvpaxos.node.service.ReplicaService} (which holds
C{auth}, an L{kvpaxos.node.auth.AuthPath}, and C{writes}).

  - L{AuthCalls.auth_change}: an auth command through the log (its
    password hashed first, off the reactor), answered once this member's
    copy of the auth state holds it;
  - L{AuthCalls.authenticate}: a token for a name and password;
  - L{AuthCalls.auth_state}: the applied auth state, for listing users and
    roles (root only while auth is enabled).

Nothing here decides whether a change applies: the state machine does
(L{kvpaxos.kv.auth_apply}), at its slot.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer

from kvpaxos.api.errors import ApiError
from kvpaxos.kv.auth import AuthCommand, Credential
from kvpaxos.kv.commands import Op, Request


class AuthCalls:
    """The node's auth calls (a mixin of the replica service)."""

    def _checked_read(self, credential: Optional[Credential], key: bytes, end, read) -> defer.Deferred:
        """
        Run C{read()} (a Deferred of a read of C{key}..C{end}) for
        C{credential}'s user: named now, and checked for permission when the
        read has run, against the auth state this member had applied by
        then (through the read's index, so a revoke answered before the
        read began is seen, even on a member that was behind when it came).
        """
        try:
            user = self.auth.user_of(credential)
        except ApiError:
            return defer.fail()

        def permitted(result):
            self.auth.check_read(user, key, end)
            return result

        return read().addCallback(permitted)

    def auth_change(self, command: AuthCommand, timeout_s: float, credential: Optional[Credential] = None,
                    password: Optional[str] = None) -> defer.Deferred:
        """
        Run auth command C{command} through the log as C{credential}'s user,
        with C{password} (a str) hashed into it first if given.  Returns a
        Deferred of its result (L{kvpaxos.kv.auth.AuthChanged} or
        L{kvpaxos.kv.auth.AuthRefused}), fired once this member's auth
        state holds it; or failing as L{submit} does, or with
        L{kvpaxos.api.errors.Unauthenticated} or
        L{kvpaxos.api.errors.PermissionDenied} (not root, while auth is
        enabled: checked here and again when it applies).
        """
        unserved = self._unserved()
        if unserved is not None:
            return unserved
        try:
            user = self.auth.user_of(credential)
            self.auth.check_root(user)
        except ApiError:
            return defer.fail()
        d = self.auth.prepare(command, password)
        d.addCallback(lambda ready: self.writes.submit(Request(Op.AUTH, user=user, auth=ready), timeout_s))
        d.addCallback(self.auth.after_reload)
        return d

    def authenticate(self, name: str, password: str) -> defer.Deferred:
        """A Deferred of a token for C{name} (L{kvpaxos.node.auth.AuthPath.authenticate})."""
        return self._unserved() or self.auth.authenticate(name, password)

    def auth_state(self, credential: Optional[Credential] = None, root: bool = True):
        """
        Return the applied L{kvpaxos.kv.auth.AuthState}.

        @param root: whether only a root user may see it (users and roles);
            C{False} for the enabled flag and revision alone, which anyone
            may see.
        @raise Unauthenticated, PermissionDenied: (C{root}) while auth is
            enabled, the credential names no user, or one without the root role.
        """
        if root:
            self.auth.check_root(self.auth.user_of(credential))
        return self.auth.state
