"""
Authentication and authorization as replicated state (etcd's model): users
with passwords and roles, roles with read, write or readwrite permission on
key ranges, an enabled flag, and the key that signs tokens.

What lives here: the values (L{User}, L{Role}, L{KeyPermission},
L{AuthState}), the log command that changes them (L{AuthCommand}, carried
by an C{Op.AUTH} request) and its checks, and the decisions: whether a
user may run a request (L{refusal}), and whether an auth command applies
(L{kvpaxos.kv.auth_apply}).  Byte formats are L{kvpaxos.encoding.auth};
password hashes and tokens L{kvpaxos.kv.credentials}.  No I/O, no clock,
no randomness: every random value (a salt, the token key) is made by the
proposing member and carried in the command, so applying is a function of
the log.

The auth table of the replicated state (a provider's C{auth_get},
C{auth_put}, C{auth_delete}, C{auth_items}) holds::

    b"enabled"        -> u8 0|1
    b"revision"       -> u64: one more for every auth change applied
    b"token_key"      -> the HMAC key of tokens (set by each enable)
    b"u" + name       -> a user (L{kvpaxos.encoding.auth.encode_user})
    b"r" + name       -> a role (L{kvpaxos.encoding.auth.encode_role})

Permission (etcd's rules): the C{root} role may do anything; any other
user may read a key or range only if the union of its roles' READ and
READWRITE permissions covers it, and write likewise with WRITE and
READWRITE.  A transaction needs read on every compare and range, write on
every put and delete of both branches (which branch runs is decided only
when it applies), and read too where it asks for C{prev_kv}.  While auth
is disabled everything is permitted and anyone may change users and
roles; while it is enabled only a user with the C{root} role may.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import MAX_KEY_BYTES, TO_THE_END, check_name
from kvpaxos.kv.commands import DeleteRange, Op, Put

#: The user and role that may do everything (etcd's names).
ROOT = "root"
#: The most permissions of one role, roles of one user, users and roles.
MAX_ROLE_PERMISSIONS = 32
MAX_USER_ROLES = 64
MAX_USERS = 10_000
MAX_ROLES = 10_000
#: The most bytes of a password hash record (L{kvpaxos.kv.credentials}).
MAX_PASSWORD_RECORD_BYTES = 512
#: The bytes of the token key an enable carries.
TOKEN_KEY_BYTES = 32

ENABLED_KEY = b"enabled"
REVISION_KEY = b"revision"
TOKEN_KEY_KEY = b"token_key"
USER_PREFIX = b"u"
ROLE_PREFIX = b"r"


class Permission(enum.IntEnum):
    """What a L{KeyPermission} allows (etcd's C{authpb.Permission.Type} numbers)."""

    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True, slots=True)
class KeyPermission:
    """
    C{kind} on the key C{key} (C{end} None), the range [C{key}, C{end}),
    or every key from C{key} on (C{end} L{TO_THE_END}): the conventions of
    L{kvpaxos.kv.commands.Range}.
    """

    kind: Permission
    key: bytes
    end: Optional[bytes] = None


@dataclass(frozen=True, slots=True)
class User:
    """
    A user: C{password}, its hash record (b"": none, so it authenticates
    only by client certificate), the auth C{password_revision} it was set
    at (tokens name it: a new password, or a user deleted and added again,
    ends every token issued before), and its role names, sorted.
    """

    name: str
    password: bytes = b""
    password_revision: int = 0
    roles: tuple = ()


@dataclass(frozen=True, slots=True)
class Role:
    """A role: its permissions, sorted by (key, end, kind), at most one per range."""

    name: str
    permissions: tuple = ()


@dataclass(frozen=True, slots=True)
class AuthState:
    """
    The whole auth table, decoded (what a member checks tokens and reads
    against): users and roles by name.
    """

    enabled: bool = False
    revision: int = 0
    token_key: bytes = b""
    users: Mapping[str, User] = field(default_factory=dict)
    roles: Mapping[str, Role] = field(default_factory=dict)


class AuthAction(enum.IntEnum):
    """What an L{AuthCommand} does (etcd's Auth RPC names)."""

    ENABLE = 1
    DISABLE = 2
    USER_ADD = 3
    USER_DELETE = 4
    USER_CHANGE_PASSWORD = 5
    USER_GRANT_ROLE = 6
    USER_REVOKE_ROLE = 7
    ROLE_ADD = 8
    ROLE_DELETE = 9
    ROLE_GRANT_PERMISSION = 10
    ROLE_REVOKE_PERMISSION = 11


@dataclass(frozen=True, slots=True)
class AuthCommand:
    """
    One change of the auth state, carried in the log by an C{Op.AUTH}
    request (whose C{user} is who asked).  Fields by action:

      - ENABLE: C{token_key} (L{TOKEN_KEY_BYTES} random bytes);
      - USER_ADD, USER_CHANGE_PASSWORD: C{name}, C{password} (a hash
        record, or b"" for no password);
      - USER_DELETE: C{name}; USER_GRANT_ROLE, USER_REVOKE_ROLE: C{name},
        C{role};
      - ROLE_ADD, ROLE_DELETE: C{role}; ROLE_GRANT_PERMISSION: C{role},
        C{permission}; ROLE_REVOKE_PERMISSION: C{role}, C{permission}
        (its kind is ignored: the range's permission is revoked).
    """

    action: AuthAction
    name: str = ""
    role: str = ""
    password: bytes = b""
    permission: Optional[KeyPermission] = None
    token_key: bytes = b""


@dataclass(frozen=True, slots=True)
class Credential:
    """
    What a request brings to name its user: C{token} (the C{token}
    metadata, "" none) and C{common_name} (its verified client
    certificate's, "" none, and only when the member checks client
    certificates).
    """

    token: str = ""
    common_name: str = ""


NO_CREDENTIAL = Credential()


# --- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthChanged:
    """An auth command applied: the auth state's C{auth_revision} after it."""

    auth_revision: int
    revision: int = 0


class AuthError(enum.Enum):
    """Why an auth command or a request was refused (etcd's error strings)."""

    PERMISSION_DENIED = "etcdserver: permission denied"
    USER_EXISTS = "etcdserver: user name already exists"
    USER_NOT_FOUND = "etcdserver: user name not found"
    ROLE_EXISTS = "etcdserver: role name already exists"
    ROLE_NOT_FOUND = "etcdserver: role name not found"
    ROLE_NOT_GRANTED = "etcdserver: role is not granted to the user"
    PERMISSION_NOT_GRANTED = "etcdserver: permission is not granted to the role"
    ROOT_USER_MISSING = "etcdserver: root user does not exist"
    ROOT_ROLE_MISSING = "etcdserver: root user does not have root role"
    INVALID_MANAGEMENT = "etcdserver: invalid auth management"
    TOO_MANY = "etcdserver: too many users, roles, grants or permissions"


@dataclass(frozen=True, slots=True)
class AuthRefused:
    """
    Refused, nothing changed: C{error} says why (C{PERMISSION_DENIED}: the
    request's user may not do this; the others: an auth command's
    precondition failed).
    """

    error: AuthError
    revision: int = 0


# --- checks (the caller's input) -------------------------------------------


def check_permission(permission) -> None:
    """Raise L{InvalidArgument} unless C{permission} is a well-formed L{KeyPermission}."""
    if type(permission) is not KeyPermission or not isinstance(permission.kind, Permission):
        raise InvalidArgument("a permission is a KeyPermission of READ, WRITE or READWRITE")
    key, end = permission.key, permission.end
    if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_BYTES:
        raise InvalidArgument(f"a permission's key must be 1 to {MAX_KEY_BYTES} bytes")
    if end is not None and (type(end) is not bytes or not 0 < len(end) <= MAX_KEY_BYTES):
        raise InvalidArgument(f"a permission's range end must be 1 to {MAX_KEY_BYTES} bytes")
    if end is not None and end != TO_THE_END and end <= key:
        raise InvalidArgument("a permission's range end must be after its key")


_NEEDS = {
    AuthAction.ENABLE: ("token_key",),
    AuthAction.DISABLE: (),
    AuthAction.USER_ADD: ("name", "password"),
    AuthAction.USER_DELETE: ("name",),
    AuthAction.USER_CHANGE_PASSWORD: ("name", "password"),
    AuthAction.USER_GRANT_ROLE: ("name", "role"),
    AuthAction.USER_REVOKE_ROLE: ("name", "role"),
    AuthAction.ROLE_ADD: ("role",),
    AuthAction.ROLE_DELETE: ("role",),
    AuthAction.ROLE_GRANT_PERMISSION: ("role", "permission"),
    AuthAction.ROLE_REVOKE_PERMISSION: ("role", "permission"),
}


def check_command(command) -> None:
    """
    Raise L{InvalidArgument} unless C{command} is a well-formed
    L{AuthCommand}: the fields its action takes, well-formed, and no others.
    """
    if type(command) is not AuthCommand or not isinstance(command.action, AuthAction):
        raise InvalidArgument("not an auth command")
    needs = _NEEDS[command.action]
    what = command.action.name.lower().replace("_", " ")
    if "name" in needs:
        check_name(command.name)
    elif command.name:
        raise InvalidArgument(f"{what} takes no user name")
    if "role" in needs:
        check_name(command.role, "role name")
    elif command.role:
        raise InvalidArgument(f"{what} takes no role name")
    if "password" in needs:
        if type(command.password) is not bytes or len(command.password) > MAX_PASSWORD_RECORD_BYTES:
            raise InvalidArgument(f"a password record is at most {MAX_PASSWORD_RECORD_BYTES} bytes")
    elif command.password:
        raise InvalidArgument(f"{what} takes no password")
    if "permission" in needs:
        check_permission(command.permission)
    elif command.permission is not None:
        raise InvalidArgument(f"{what} takes no permission")
    if "token_key" in needs:
        if type(command.token_key) is not bytes or len(command.token_key) != TOKEN_KEY_BYTES:
            raise InvalidArgument(f"enabling auth takes a {TOKEN_KEY_BYTES}-byte token key")
    elif command.token_key:
        raise InvalidArgument(f"{what} takes no token key")


# --- permission ----------------------------------------------------------------


def _interval(key: bytes, end: Optional[bytes]) -> tuple:
    """C{(start, stop)} of a key or range; C{stop} None: unbounded."""
    if end is None:
        return key, key + b"\x00"
    if end == TO_THE_END:
        return key, None
    return key, end


def covered(permissions: Iterable[KeyPermission], key: bytes, end: Optional[bytes]) -> bool:
    """
    Whether the union of C{permissions}' ranges covers the key or range
    C{key}..C{end} (conventions of L{kvpaxos.kv.commands.Range}; an empty
    range is covered).
    """
    start, stop = _interval(key, end)
    if stop is not None and stop <= start:
        return True
    reach = start
    for low, high in sorted((_interval(p.key, p.end) for p in permissions),
                            key=lambda pair: (pair[0], pair[1] is None, pair[1] or b"")):
        if low > reach:
            break
        if high is None:
            return True
        if high > reach:
            reach = high
            if stop is not None and reach >= stop:
                return True
    return False


@dataclass(frozen=True, slots=True)
class Grants:
    """What one user may do: everything (C{root}), or read and write ranges."""

    root: bool = False
    read: tuple = ()
    write: tuple = ()

    def may(self, key: bytes, end: Optional[bytes], write: bool) -> bool:
        """Whether the user may read (C{write} false) or write C{key}..C{end}."""
        return self.root or covered(self.write if write else self.read, key, end)


def grants_of(user: Optional[User], role_of) -> Grants:
    """
    Return the L{Grants} of C{user} (None: nobody, who may do nothing);
    C{role_of(name)} returns a role or None (a role deleted meanwhile).
    """
    if user is None:
        return Grants()
    read, write = [], []
    for name in user.roles:
        if name == ROOT:
            return Grants(root=True)
        role = role_of(name)
        for p in role.permissions if role is not None else ():
            if p.kind is not Permission.WRITE:
                read.append(p)
            if p.kind is not Permission.READ:
                write.append(p)
    return Grants(False, tuple(read), tuple(write))


def request_permitted(grants: Grants, request) -> bool:
    """
    Whether a user with C{grants} may run C{request} (a
    L{kvpaxos.kv.commands.Request} of a key op or a transaction; opening a
    session, compacting the history, granting a lease or its expiry needs
    nothing; an auth command is checked by its apply, a lease's revoke by
    L{kvpaxos.kv.auth_apply.AuthGuard} (it reads the lease's keys)).
    """
    if grants.root:
        return True
    op = request.op
    if op in (Op.OPEN_SESSION, Op.COMPACT, Op.LEASE_GRANT, Op.LEASE_EXPIRE):
        # etcd's rules: a compaction or a grant touches no key; an expiry is
        # the leader's own (only a LEASE_REVOKE's keys are checked, by the guard)
        return True
    if op in (Op.PUT, Op.DELETE, Op.APPEND):
        reads = request.prev_kv or op is Op.APPEND  # an append answers with the value
        return grants.may(request.key, None, True) and (not reads or grants.may(request.key, None, False))
    if op is Op.TXN:
        txn = request.txn
        for compare in txn.compares:
            if not grants.may(compare.key, None, False):
                return False
        for branch in (txn.success, txn.failure):
            for one in branch:
                kind = type(one)
                end = None if kind is Put else one.end
                if kind is Put or kind is DeleteRange:
                    if not grants.may(one.key, end, True):
                        return False
                    if one.prev_kv and not grants.may(one.key, end, False):
                        return False
                elif not grants.may(one.key, end, False):
                    return False
        return True
    return False


def state_grants(state: AuthState, name: str) -> Grants:
    """The L{Grants} of user C{name} in C{state} (nobody's if there is no such user)."""
    return grants_of(state.users.get(name), state.roles.get)
