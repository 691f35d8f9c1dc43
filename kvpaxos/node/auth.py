"""
L{AuthPath}: who a caller is and what it may read, at one member, and how
an auth change is prepared before it enters the log.

  - The member keeps the auth table of its applied state decoded
    (L{AuthPath.state}), read again from the store whenever an applied
    batch held an auth command or a snapshot was installed
    (L{AuthPath.applied}); an auth change's caller is answered only once
    the member's copy holds it (L{AuthPath.after_reload}), so a user just
    added can authenticate at once at the member that added it.
  - A credential (L{Credential}: a token, or a client certificate's common
    name) names a user (L{AuthPath.user_of}); while auth is disabled
    nobody needs one.  Writes carry the user into the log and are checked
    when they apply (L{kvpaxos.kv.auth_apply}); reads are checked here,
    against the applied state, when they are taken.
  - Password hashing and checking (scrypt) run in a thread
    (C{run_in_thread}), never on the reactor; the token key of an enable
    and a password's salt come from C{random_bytes}.

What must not live here: the decision of what applies (the state machine's)
or how requests travel (the write and read paths').
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from kvpaxos.api.errors import AuthNotEnabled, PermissionDenied, Unauthenticated
from kvpaxos.kv.auth import NO_CREDENTIAL, TOKEN_KEY_BYTES, AuthAction, AuthCommand, AuthState, Credential, state_grants
from kvpaxos.kv.auth_apply import load_state
from kvpaxos.kv.credentials import ScryptCost, hash_password, issue_token, password_matches, token_user

#: etcd's default token TTL (--auth-token-ttl, seconds).
DEFAULT_TOKEN_TTL_S = 300.0

AUTH_FAILED = "etcdserver: authentication failed, invalid user ID or password"
INVALID_TOKEN = "etcdserver: invalid auth token"
NOT_ENABLED = "etcdserver: authentication is not enabled"
USER_EMPTY = ("etcdserver: user name is empty (auth is enabled: send a token from Auth.Authenticate "
              "as the 'token' metadata, or a client certificate)")


def _in_thread(call, *args):
    return threads.deferToThread(call, *args)


class AuthPath:
    """
    The auth state at one member, and the checks made against it.

    @param store: the member's store (C{auth_items()}).
    @param wall: wall-clock seconds (token expiry), C{time.time} by default.
    @param token_ttl_s: how long a token lasts.
    @param cost: the scrypt cost of new password hashes.
    @param run_in_thread: C{run_in_thread(call, *args)} returns a
        Deferred of C{call(*args)} run off the reactor.
    @param random_bytes: C{random_bytes(n)}, for token keys and salts.
    """

    log = Logger()

    def __init__(self, store, wall: Callable[[], float] = time.time, token_ttl_s: float = DEFAULT_TOKEN_TTL_S,
                 cost: ScryptCost = ScryptCost(), run_in_thread=_in_thread,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._store = store
        self._wall = wall
        self.token_ttl_s = token_ttl_s
        self._cost = cost
        self._run_in_thread = run_in_thread
        self._random_bytes = random_bytes
        self.state = AuthState()
        self._stale = False
        self._waiting: list = []

    # --- the applied state ----------------------------------------------------

    def reload(self) -> None:
        """Read the auth table of the store's applied state again; wake whoever waited for it."""
        before = self.state
        self.state = load_state(self._store.auth_items())
        self._stale = False
        if before.enabled != self.state.enabled:
            self.log.info("auth {what}", what="enabled" if self.state.enabled else "disabled")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def applied(self, results, snapshot_installed: bool = False) -> None:
        """
        Applied C{(request, result)} pairs (and perhaps a snapshot): note
        whether the auth table may have changed (read again at L{durable}).
        """
        if snapshot_installed or any(request.auth is not None for request, _ in results):
            self._stale = True

    def durable(self) -> None:
        """The applied state is durable: read the auth table again if it changed."""
        if self._stale:
            self.reload()

    def after_reload(self, result):
        """
        Return C{result} once the member's copy holds every auth change
        applied so far (a Deferred, or C{result} itself if it does).
        """
        if not self._stale:
            return result
        d = defer.Deferred()
        self._waiting.append(d)
        d.addCallback(lambda _: result)
        return d

    def stop(self, error: Exception) -> None:
        """Fail whoever waits for a reload."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(error)

    # --- credentials ------------------------------------------------------------

    def user_of(self, credential: Optional[Credential]) -> str:
        """
        Return the user C{credential} names ("" while auth is disabled:
        nobody needs one; a client certificate's common name even then).

        @raise Unauthenticated: auth is enabled and the credential names no
            user of the applied state: none given, a token that does not
            verify, has expired or names a deleted user or an old password,
            or a certificate name that is no user.
        """
        state = self.state
        credential = credential or NO_CREDENTIAL
        if not state.enabled:
            # A certificate's name is verified by TLS: carried even while this
            # member sees auth disabled, so a write it takes before it has
            # applied an enable is still its user's when it applies after it.
            return credential.common_name or ""
        if credential.token:
            name = token_user(state, credential.token, self._wall())
            if name is None:
                raise Unauthenticated(INVALID_TOKEN)
            return name
        if credential.common_name:
            if credential.common_name not in state.users:
                raise Unauthenticated(f"{AUTH_FAILED}: no user named by the client certificate's common name")
            return credential.common_name
        raise Unauthenticated(USER_EMPTY)

    def check_read(self, user: str, key: bytes, end: Optional[bytes]) -> None:
        """
        @raise PermissionDenied: auth is enabled and C{user} may not read
            C{key}..C{end}.
        """
        state = self.state
        if state.enabled and not state_grants(state, user).may(key, end, False):
            raise PermissionDenied("etcdserver: permission denied")

    def check_root(self, user: str) -> None:
        """
        @raise PermissionDenied: auth is enabled and C{user} has not the root role.
        """
        state = self.state
        if state.enabled and not state_grants(state, user).root:
            raise PermissionDenied("etcdserver: permission denied")

    def authenticate(self, name: str, password: str) -> defer.Deferred:
        """
        Return a Deferred of a token for user C{name} if C{password} is
        theirs (checked in a thread).

        @raise AuthNotEnabled: auth is disabled (as the Deferred's failure).
        @raise Unauthenticated: no such user, or the wrong password.
        """
        if not self.state.enabled:
            return defer.fail(AuthNotEnabled(NOT_ENABLED))
        user = self.state.users.get(name)
        record = user.password if user is not None else b""
        if not record:
            return defer.fail(Unauthenticated(AUTH_FAILED))
        d = self._run_in_thread(password_matches, record, password)

        def checked(matches: bool) -> str:
            state = self.state
            now = state.users.get(name)
            # The user may have changed while the hash ran.
            if not matches or now is None or now.password != record or not state.enabled:
                raise Unauthenticated(AUTH_FAILED)
            return issue_token(state, name, self._wall(), self.token_ttl_s)

        return d.addCallback(checked)

    # --- auth changes ----------------------------------------------------------

    def prepare(self, command: AuthCommand, password: Optional[str] = None) -> defer.Deferred:
        """
        Return a Deferred of C{command} ready for the log: an enable given
        a new token key, a user's C{password} (a str; None: none) hashed
        in a thread into its record.
        """
        if command.action is AuthAction.ENABLE:
            return defer.succeed(dataclasses.replace(command, token_key=self._random_bytes(TOKEN_KEY_BYTES)))
        if password is None:
            return defer.succeed(command)
        salt = self._random_bytes(16)
        d = self._run_in_thread(hash_password, password, self._cost, salt)
        return d.addCallback(lambda record: dataclasses.replace(command, password=record))
