"""
Authentication in the clients (C{kvpaxos.v1.Auth}, C{proto/kvpaxos/v1/auth.proto}):

  - L{Credentials}: the user and password a client was given and the token
    it holds (thread-safe; no I/O).  A client given C{user} and
    C{password} authenticates lazily, before its first request, and sends
    the token as the C{token} metadata key of every request; a request
    answered UNAUTHENTICATED (the token expired, or the user's password
    changed) renews the token once and is sent again, carrying the same
    session fields (so a write is still applied at most once).  While auth
    is disabled (C{Authenticate} answers C{AUTH_NOT_ENABLED}) requests go
    without a token, and the first UNAUTHENTICATED after it is enabled
    authenticates.  A client with a certificate (C{cert}, C{key}) against a
    member with C{client_cert_auth} needs no user: the certificate's
    common name is its user.
  - the auth operations (pure builders: L{auth_operation} and the table
    under it) and L{AuthMethods}, the methods both clients share: user,
    role and permission management, auth enable, disable and status.  In
    the blocking client they return their result; in the asyncio client
    they return an awaitable of it.

A client with a user sends unary RPCs (no C{KV.Stream}): a token is the
credential of one call.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple, Optional

from kvpaxos.api import errors as api_errors
from kvpaxos.client.errors import Failure, InvalidArgument
from kvpaxos.client.requests import BytesLike, Operation, _bytes, _range_end
from kvpaxos.v1 import auth_pb2

__all__ = ["AuthMethods", "Credentials", "Permission", "TOKEN_METADATA", "authenticate_operation"]

#: The metadata key a token travels under (as etcd's).
TOKEN_METADATA = "token"


class Credentials:
    """
    The user a client names and the token it holds.  Shared by every call
    of one client; C{_lock} only guards the fields (no I/O under it).  One
    call at a time authenticates (L{single_flight}): the others wait for
    its token instead of each costing the server a password hash.
    """

    def __init__(self, user: str, password: str) -> None:
        if not isinstance(user, str) or not user:
            raise InvalidArgument("a user name is a non-empty str")
        if not isinstance(password, str):
            raise InvalidArgument(f"user {user!r} needs a password (a str)")
        self.user = user
        self.password = password
        self._token: Optional[str] = None
        #: Authenticate answered that auth is disabled: send no token.
        self._not_enabled = False
        #: Grows at every change of the token: a late answer does not undo a newer one.
        self._generation = 0
        self._lock = threading.Lock()
        #: Held by the blocking client's one call that authenticates.
        self.single_flight = threading.Lock()

    def current(self) -> tuple[bool, Optional[tuple], int]:
        """
        C{(needs_token, metadata, generation)}, read at once: whether the
        client must authenticate before it sends, the metadata a request
        carries (None: no token), and the generation to hand L{authenticated}.
        """
        with self._lock:
            metadata = ((TOKEN_METADATA, self._token),) if self._token is not None else None
            return self._token is None and not self._not_enabled, metadata, self._generation

    def authenticated(self, token: Optional[str], generation: int) -> None:
        """
        C{Authenticate} answered C{token} (None: auth is disabled), asked at
        C{generation}; ignored if the token changed since.
        """
        with self._lock:
            if generation == self._generation:
                self._token, self._not_enabled = token, token is None
                self._generation += 1

    def refused(self, metadata: Optional[tuple]) -> None:
        """
        A request sent with C{metadata} was answered UNAUTHENTICATED: drop
        the token it carried (unless another call renewed it already), so
        that the next request authenticates.
        """
        with self._lock:
            held = ((TOKEN_METADATA, self._token),) if self._token is not None else None
            if held == metadata:
                self._token, self._not_enabled = None, False
                self._generation += 1

    def password_changed(self, name: str, password: str) -> None:
        """User C{name}'s password is now C{password}: this client's own, if it is its user."""
        if name == self.user:
            with self._lock:
                self.password = password


def unauthenticated(failure: Failure) -> bool:
    """Whether C{failure} is an UNAUTHENTICATED answer (a token to renew)."""
    return failure.reason == api_errors.UNAUTHENTICATED


def authenticate_operation(credentials: Credentials) -> Operation:
    """
    C{Authenticate} for C{credentials}, to the leader when known (the
    member that applied the latest auth changes first), carrying no token.
    """
    request = auth_pb2.AuthenticateRequest(name=credentials.user, password=credentials.password)
    return Operation("auth", "Authenticate", request, credential=False)


class Permission(NamedTuple):
    """
    A role's permission: C{kind} C{"read"}, C{"write"} or C{"readwrite"} on
    C{key} (C{range_end} empty), on [key, range_end), or on every key from
    C{key} on (C{range_end} C{b"\\0"}).
    """

    kind: str
    key: bytes
    range_end: bytes = b""


_KINDS = {
    "read": auth_pb2.Permission.READ, "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}
_KIND_NAMES = {value: name for name, value in _KINDS.items()}


def _kind(kind: str) -> int:
    try:
        return _KINDS[kind.lower()]
    except (KeyError, AttributeError):
        raise InvalidArgument(f"permission {kind!r} is not one of {', '.join(_KINDS)}") from None


def _name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"a {what} name is a non-empty str")
    return name


def _change(rpc: str, request: Any) -> Operation:
    # Through the log, to the leader; not in a session (the Auth requests
    # carry no session fields), so a deadline passed is an unknown outcome.
    return Operation("auth", rpc, request, write=True, session=False)


def _read(rpc: str, request: Any, credential: bool = True) -> Operation:
    return Operation("auth", rpc, request, leader=False, credential=credential)


def _permissions(response) -> list[Permission]:
    return [Permission(_KIND_NAMES.get(p.perm_type, str(p.perm_type)), p.key, p.range_end) for p in response.perm]


class AuthMethods:
    """
    The auth methods of both clients.  Each builds its operation and hands
    it to C{_auth_result(operation, read)}: the blocking client returns
    C{read(response)}, the asyncio client an awaitable of it.
    """

    _auth_result: Callable[[Operation, Callable[[Any], Any]], Any]
    _credentials: Optional[Credentials]

    def auth_enable(self):
        """Enable auth (it needs a user C{root} holding the role C{root}); return the auth revision."""
        return self._auth_result(_change("AuthEnable", auth_pb2.AuthEnableRequest()), _revision)

    def auth_disable(self):
        """Disable auth (root only); return the auth revision."""
        return self._auth_result(_change("AuthDisable", auth_pb2.AuthDisableRequest()), _revision)

    def auth_status(self):
        """Return C{(enabled, auth_revision)} (anyone may ask)."""
        return self._auth_result(_read("AuthStatus", auth_pb2.AuthStatusRequest(), credential=False),
                                 lambda r: (r.enabled, r.auth_revision))

    def user_add(self, name: str, password: Optional[str] = None, *, no_password: bool = False):
        """
        Add user C{name} with C{password}, or with C{no_password=True}
        none (the user authenticates by client certificate only).  Return
        the auth revision.
        """
        if no_password:
            if password is not None:
                raise InvalidArgument("give a password or no_password=True, not both")
        elif not isinstance(password, str) or not password:
            raise InvalidArgument("a password is a non-empty str (or no_password=True: none)")
        request = auth_pb2.UserAddRequest(name=_name(name, "user"), password=password or "",
                                          no_password=no_password)
        return self._auth_result(_change("UserAdd", request), _revision)

    def user_delete(self, name: str):
        """Delete user C{name}; its tokens stop working.  Return the auth revision."""
        return self._auth_result(_change("UserDelete", auth_pb2.UserDeleteRequest(name=_name(name, "user"))),
                                 _revision)

    def user_change_password(self, name: str, password: str):
        """Set user C{name}'s password; its tokens stop working.  Return the auth revision."""
        if not isinstance(password, str) or not password:
            raise InvalidArgument("a password is a non-empty str")
        request = auth_pb2.UserChangePasswordRequest(name=_name(name, "user"), password=password)

        def changed(response) -> int:
            if self._credentials is not None:  # the client's own password: renew with the new one
                self._credentials.password_changed(name, password)
            return response.auth_revision

        return self._auth_result(_change("UserChangePassword", request), changed)

    def user_grant_role(self, user: str, role: str):
        """Grant C{role} to C{user}; return the auth revision."""
        request = auth_pb2.UserGrantRoleRequest(user=_name(user, "user"), role=_name(role, "role"))
        return self._auth_result(_change("UserGrantRole", request), _revision)

    def user_revoke_role(self, user: str, role: str):
        """Revoke C{role} from C{user}; return the auth revision."""
        request = auth_pb2.UserRevokeRoleRequest(name=_name(user, "user"), role=_name(role, "role"))
        return self._auth_result(_change("UserRevokeRole", request), _revision)

    def user_get(self, name: str):
        """Return the roles of user C{name} (a list of str)."""
        request = auth_pb2.UserGetRequest(name=_name(name, "user"))
        return self._auth_result(_read("UserGet", request), lambda r: list(r.roles))

    def user_list(self):
        """Return every user's name, sorted."""
        return self._auth_result(_read("UserList", auth_pb2.UserListRequest()), lambda r: list(r.users))

    def role_add(self, name: str):
        """Add role C{name}; return the auth revision."""
        return self._auth_result(_change("RoleAdd", auth_pb2.RoleAddRequest(name=_name(name, "role"))), _revision)

    def role_delete(self, name: str):
        """Delete role C{name} (revoked from every user); return the auth revision."""
        return self._auth_result(_change("RoleDelete", auth_pb2.RoleDeleteRequest(role=_name(name, "role"))),
                                 _revision)

    def role_get(self, name: str):
        """Return the permissions of role C{name} (a list of L{Permission})."""
        request = auth_pb2.RoleGetRequest(role=_name(name, "role"))
        return self._auth_result(_read("RoleGet", request), _permissions)

    def role_list(self):
        """Return every role's name, sorted."""
        return self._auth_result(_read("RoleList", auth_pb2.RoleListRequest()), lambda r: list(r.roles))

    def role_grant_permission(self, role: str, kind: str, key: BytesLike,
                              range_end: Optional[BytesLike] = None, prefix: bool = False):
        """
        Grant role C{role} permission C{kind} (C{"read"}, C{"write"},
        C{"readwrite"}) on C{key}, on [key, range_end) (L{TO_THE_END}: every
        key from C{key} on), or on every key starting with C{key}
        (C{prefix=True}).  Return the auth revision.
        """
        key = _bytes(key)
        permission = auth_pb2.Permission(perm_type=_kind(kind), key=key, range_end=_range_end(key, range_end, prefix))
        request = auth_pb2.RoleGrantPermissionRequest(name=_name(role, "role"), perm=permission)
        return self._auth_result(_change("RoleGrantPermission", request), _revision)

    def role_revoke_permission(self, role: str, key: BytesLike, range_end: Optional[BytesLike] = None,
                               prefix: bool = False):
        """Revoke role C{role}'s permission on exactly that key or range; return the auth revision."""
        key = _bytes(key)
        request = auth_pb2.RoleRevokePermissionRequest(role=_name(role, "role"), key=key,
                                                       range_end=_range_end(key, range_end, prefix))
        return self._auth_result(_change("RoleRevokePermission", request), _revision)


def _revision(response) -> int:
    return response.auth_revision


def credentials_of(user: Optional[str], password: Optional[str]) -> Optional[Credentials]:
    """The L{Credentials} of a client given C{user} and C{password} (None: no user)."""
    if user is None:
        if password is not None:
            raise InvalidArgument("a password was given without a user")
        return None
    return Credentials(user, password)

