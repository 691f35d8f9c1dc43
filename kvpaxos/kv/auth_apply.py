"""
How the auth table changes and how requests are checked against it, at
apply: L{AuthGuard} (one per applied batch: is auth on, what may this user
do), L{apply_auth} (an C{Op.AUTH} request), and L{load_state} (the whole
table decoded, for the member that checks tokens and serves reads).

Deciding at apply, not when a member takes a request, is what makes a
revoke exact: the permission of a write is that of the auth state at its
slot, so no write applied after a revoke passes, whichever member took it
and however long it queued.  A refused request changes nothing (not even
its session: a retry is checked again).

Determinism as in L{kvpaxos.kv.machine}: the view, the request and nothing
else; the table's iteration is in key order.  No I/O.
"""

from __future__ import annotations

from bisect import insort
from typing import Iterable, Optional

from kvpaxos.encoding.auth import decode_role, decode_user, encode_role, encode_user, permission_order
from kvpaxos.encoding.reader import U8, U64
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.kv.auth import (
    ENABLED_KEY,
    MAX_ROLE_PERMISSIONS,
    MAX_ROLES,
    MAX_USER_ROLES,
    MAX_USERS,
    REVISION_KEY,
    ROLE_PREFIX,
    ROOT,
    TOKEN_KEY_KEY,
    USER_PREFIX,
    AuthAction,
    AuthChanged,
    AuthError,
    AuthRefused,
    AuthState,
    Grants,
    Role,
    User,
    grants_of,
    request_permitted,
)
from kvpaxos.kv.commands import Op, Request


def _user_key(name: str) -> bytes:
    return USER_PREFIX + name.encode("utf-8")


def _role_key(name: str) -> bytes:
    return ROLE_PREFIX + name.encode("utf-8")


def _u64(data) -> int:
    if data is None:
        return 0
    if len(data) != U64.size:
        raise CorruptState(f"auth revision of {len(data)} bytes")
    return U64.unpack(bytes(data))[0]


class AuthGuard:
    """
    The auth table as one batch's apply sees it, read as needed and kept
    for the batch (a user's grants are read once however many of its
    requests the batch holds); L{changed} forgets it after an auth command.
    """

    def __init__(self, view) -> None:
        self._view = view
        self._enabled: Optional[bool] = None
        self._grants: dict = {}

    def enabled(self) -> bool:
        """Whether auth is on."""
        if self._enabled is None:
            self._enabled = self._view.auth_get(ENABLED_KEY) == b"\x01"
        return self._enabled

    def user(self, name: str) -> Optional[User]:
        """Return user C{name}, or None."""
        data = self._view.auth_get(_user_key(name)) if name else None
        return None if data is None else decode_user(name, data)

    def role(self, name: str) -> Optional[Role]:
        """Return role C{name}, or None."""
        data = self._view.auth_get(_role_key(name))
        return None if data is None else decode_role(name, data)

    def grants(self, name: str) -> Grants:
        """What user C{name} may do (nothing if there is no such user)."""
        grants = self._grants.get(name)
        if grants is None:
            grants = self._grants[name] = grants_of(self.user(name), self.role)
        return grants

    def refusal(self, request: Request) -> Optional[AuthRefused]:
        """
        Return the refusal of C{request} (not an auth command) by the auth
        state, or None if it may apply: everything may while auth is off;
        while it is on, what its user's roles permit (L{request_permitted}).
        """
        if not self.enabled() or request.op is Op.AUTH:
            return None
        grants = self.grants(request.user)
        op = request.op
        if op is Op.LEASE_REVOKE:
            # etcd's rule: revoking deletes the lease's keys, so its user must
            # be one who may write every one of them
            if self._may_write_keys_of(grants, (request.lease,)):
                return None
        elif request_permitted(grants, request):
            # etcd's checkLeasePuts: attaching a key to a lease takes the
            # right to write the keys already on it (else one user could
            # pin its key to another's lease and block that lease's revoke)
            if op is Op.PUT and request.lease:
                leases = (request.lease,)
            elif op is Op.TXN:
                leases = tuple(o.lease for o in request.txn.success + request.txn.failure if getattr(o, "lease", 0))
            else:
                return None
            if self._may_write_keys_of(grants, leases):
                return None
        return AuthRefused(AuthError.PERMISSION_DENIED, self._view.revision())

    def _may_write_keys_of(self, grants, leases) -> bool:
        if grants.root:
            return True
        view = self._view
        return all(grants.may(key, None, True) for lease in leases for key in view.lease_keys(lease))

    def changed(self) -> None:
        """An auth command applied: forget what was read."""
        self._enabled = None
        self._grants.clear()


def apply_auth(view, request: Request, guard: AuthGuard):
    """
    Apply the auth command of C{request} to C{view}; return L{AuthChanged}
    (the auth revision after it: one more if it changed anything) or
    L{AuthRefused} (nothing changed).  While auth is on only a user with
    the C{root} role may change it.
    """
    command = request.auth
    revision = view.revision()
    if guard.enabled() and not guard.grants(request.user).root:
        return AuthRefused(AuthError.PERMISSION_DENIED, revision)
    auth_revision = _u64(view.auth_get(REVISION_KEY))
    outcome = _ACTIONS[command.action](view, guard, command, auth_revision + 1)
    if outcome is _UNCHANGED:
        return AuthChanged(auth_revision, revision)
    if outcome is not None:
        return AuthRefused(outcome, revision)
    view.auth_put(REVISION_KEY, U64.pack(auth_revision + 1))
    guard.changed()
    return AuthChanged(auth_revision + 1, revision)


#: What an action returns when it applied but changed nothing (a grant
#: already given, an enable of what is on): success, same revision.
_UNCHANGED = object()


def _count(view, prefix: bytes) -> int:
    return sum(1 for key, _ in view.auth_items() if key[:1] == prefix)


def _enable(view, guard, command, _revision):
    if guard.enabled():
        return _UNCHANGED
    root = guard.user(ROOT)
    if root is None:
        return AuthError.ROOT_USER_MISSING
    if ROOT not in root.roles:
        return AuthError.ROOT_ROLE_MISSING
    view.auth_put(ENABLED_KEY, U8.pack(1))
    view.auth_put(TOKEN_KEY_KEY, command.token_key)
    return None


def _disable(view, guard, _command, _revision):
    if not guard.enabled():
        return _UNCHANGED
    view.auth_put(ENABLED_KEY, U8.pack(0))
    return None


def _user_add(view, guard, command, revision):
    if guard.user(command.name) is not None:
        return AuthError.USER_EXISTS
    if _count(view, USER_PREFIX) >= MAX_USERS:
        return AuthError.TOO_MANY
    view.auth_put(_user_key(command.name), encode_user(User(command.name, command.password, revision)))
    return None


def _user_delete(view, guard, command, _revision):
    if guard.user(command.name) is None:
        return AuthError.USER_NOT_FOUND
    if guard.enabled() and command.name == ROOT:
        return AuthError.INVALID_MANAGEMENT
    view.auth_delete(_user_key(command.name))
    return None


def _user_change_password(view, guard, command, revision):
    user = guard.user(command.name)
    if user is None:
        return AuthError.USER_NOT_FOUND
    view.auth_put(_user_key(user.name), encode_user(User(user.name, command.password, revision, user.roles)))
    return None


def _user_grant_role(view, guard, command, _revision):
    user = guard.user(command.name)
    if user is None:
        return AuthError.USER_NOT_FOUND
    if guard.role(command.role) is None:
        return AuthError.ROLE_NOT_FOUND
    if command.role in user.roles:
        return _UNCHANGED
    if len(user.roles) >= MAX_USER_ROLES:
        return AuthError.TOO_MANY
    roles = tuple(sorted(user.roles + (command.role,)))
    view.auth_put(_user_key(user.name), encode_user(User(user.name, user.password, user.password_revision, roles)))
    return None


def _user_revoke_role(view, guard, command, _revision):
    user = guard.user(command.name)
    if user is None:
        return AuthError.USER_NOT_FOUND
    if command.role not in user.roles:
        return AuthError.ROLE_NOT_GRANTED
    if guard.enabled() and user.name == ROOT and command.role == ROOT:
        return AuthError.INVALID_MANAGEMENT
    roles = tuple(r for r in user.roles if r != command.role)
    view.auth_put(_user_key(user.name), encode_user(User(user.name, user.password, user.password_revision, roles)))
    return None


def _role_add(view, guard, command, _revision):
    if guard.role(command.role) is not None:
        return AuthError.ROLE_EXISTS
    if _count(view, ROLE_PREFIX) >= MAX_ROLES:
        return AuthError.TOO_MANY
    view.auth_put(_role_key(command.role), encode_role(Role(command.role)))
    return None


def _role_delete(view, guard, command, _revision):
    if guard.role(command.role) is None:
        return AuthError.ROLE_NOT_FOUND
    if guard.enabled() and command.role == ROOT:
        return AuthError.INVALID_MANAGEMENT
    view.auth_delete(_role_key(command.role))
    # Every user loses it (etcd's rule): read them all first, then write.
    holders = [decode_user(key[1:].decode("utf-8"), value) for key, value in view.auth_items()
               if key[:1] == USER_PREFIX]
    for user in holders:
        if command.role in user.roles:
            roles = tuple(r for r in user.roles if r != command.role)
            view.auth_put(_user_key(user.name),
                          encode_user(User(user.name, user.password, user.password_revision, roles)))
    return None


def _role_grant_permission(view, guard, command, _revision):
    role = guard.role(command.role)
    if role is None:
        return AuthError.ROLE_NOT_FOUND
    granted = command.permission
    order = permission_order(granted)
    kept = [p for p in role.permissions if permission_order(p) != order]
    if granted in role.permissions:
        return _UNCHANGED
    if len(kept) >= MAX_ROLE_PERMISSIONS:
        return AuthError.TOO_MANY
    insort(kept, granted, key=permission_order)
    view.auth_put(_role_key(role.name), encode_role(Role(role.name, tuple(kept))))
    return None


def _role_revoke_permission(view, guard, command, _revision):
    role = guard.role(command.role)
    if role is None:
        return AuthError.ROLE_NOT_FOUND
    order = permission_order(command.permission)
    kept = tuple(p for p in role.permissions if permission_order(p) != order)
    if len(kept) == len(role.permissions):
        return AuthError.PERMISSION_NOT_GRANTED
    view.auth_put(_role_key(role.name), encode_role(Role(role.name, kept)))
    return None


_ACTIONS = {
    AuthAction.ENABLE: _enable,
    AuthAction.DISABLE: _disable,
    AuthAction.USER_ADD: _user_add,
    AuthAction.USER_DELETE: _user_delete,
    AuthAction.USER_CHANGE_PASSWORD: _user_change_password,
    AuthAction.USER_GRANT_ROLE: _user_grant_role,
    AuthAction.USER_REVOKE_ROLE: _user_revoke_role,
    AuthAction.ROLE_ADD: _role_add,
    AuthAction.ROLE_DELETE: _role_delete,
    AuthAction.ROLE_GRANT_PERMISSION: _role_grant_permission,
    AuthAction.ROLE_REVOKE_PERMISSION: _role_revoke_permission,
}
assert set(_ACTIONS) == set(AuthAction)


def load_state(items: Iterable[tuple]) -> AuthState:
    """
    Return the L{AuthState} of the auth table's C{(key, value)} entries.

    @raise CorruptState: an entry is not of this format.
    """
    enabled, revision, token_key = False, 0, b""
    users: dict = {}
    roles: dict = {}
    for key, value in items:
        key, value = bytes(key), bytes(value)
        if key == ENABLED_KEY:
            enabled = value == b"\x01"
        elif key == REVISION_KEY:
            revision = _u64(value)
        elif key == TOKEN_KEY_KEY:
            token_key = value
        elif key[:1] in (USER_PREFIX, ROLE_PREFIX):
            try:
                name = key[1:].decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptState(f"auth entry {key!r}: name is not UTF-8") from None
            if key[:1] == USER_PREFIX:
                users[name] = decode_user(name, value)
            else:
                roles[name] = decode_role(name, value)
        else:
            raise CorruptState(f"unknown auth entry {key!r}")
    return AuthState(enabled, revision, token_key, users, roles)
