"""
The byte formats of authentication state and commands
(L{kvpaxos.kv.auth}): a user and a role as the auth table stores them, and
an auth command as an C{Op.AUTH} request carries it in the log.

Layouts (names are UTF-8; integers big-endian)::

    user       := password_revision:u64 password_len:u16 password
                  nroles:u16 (name_len:u8 name)*nroles      (sorted, unique)
    role       := npermissions:u16 permission*npermissions  (sorted by range)
    permission := kind:u8 key_len:u16 key has_end:u8 [end_len:u16 end]
    command    := action:u8 name_len:u8 name role_len:u8 role
                  password_len:u16 password has_permission:u8 [permission]
                  token_key_len:u8 token_key

Every reader checks its input as hostile (the table may come from a peer's
snapshot, the command from a peer's log) and raises the caller's error
class: L{CorruptState} for stored state, L{MalformedCommand} for a command.
No I/O here; what the values mean is L{kvpaxos.kv.auth}'s.
"""

from __future__ import annotations

from kvpaxos.encoding.errors import CorruptState, MalformedCommand
from kvpaxos.encoding.reader import U8, U16, U64, Reader, as_bytes
from kvpaxos.kv.auth import (
    MAX_ROLE_PERMISSIONS,
    MAX_USER_ROLES,
    AuthAction,
    AuthCommand,
    KeyPermission,
    Permission,
    Role,
    User,
    check_command,
    check_name,
    check_permission,
)
from kvpaxos.kv.commands import InvalidArgument

_PERMISSIONS = {p.value: p for p in Permission}
_ACTIONS = {a.value: a for a in AuthAction}


def _name(name: str) -> bytes:
    data = name.encode("utf-8")
    return U8.pack(len(data)) + data


def _read_name(reader: Reader, what: str) -> str:
    data = reader.take(reader.u8())
    if not data:
        return ""
    try:
        name = data.decode("utf-8")
        check_name(name, what)
    except (UnicodeDecodeError, InvalidArgument) as error:
        reader.fail(f"bad {what}: {error}")
    return name


def _write_permission(p: KeyPermission, out: list) -> None:
    out += [U8.pack(p.kind), U16.pack(len(p.key)), p.key, U8.pack(p.end is not None)]
    if p.end is not None:
        out += [U16.pack(len(p.end)), p.end]


def _read_permission(reader: Reader) -> KeyPermission:
    kind = reader.code(_PERMISSIONS, "permission kind")
    key = reader.u16_bytes()
    end = reader.u16_bytes() if reader.flag() else None
    permission = KeyPermission(kind, key, end)
    try:
        check_permission(permission)
    except InvalidArgument as error:
        reader.fail(str(error))
    return permission


def encode_user(user: User) -> bytes:
    """Return the stored bytes of C{user} (its name is the table key)."""
    out = [U64.pack(user.password_revision), U16.pack(len(user.password)), user.password,
           U16.pack(len(user.roles))]
    out += [_name(role) for role in user.roles]
    return b"".join(out)


def decode_user(name: str, data) -> User:
    """
    Return the L{User} C{name} stored as C{data}.

    @raise CorruptState: C{data} is not a user.
    """
    reader = Reader(as_bytes(data, CorruptState), CorruptState, f"user {name!r}")
    password_revision = reader.u64()
    password = reader.u16_bytes()
    count = reader.count(U16, 2)
    if count > MAX_USER_ROLES:
        reader.fail(f"{count} roles, more than {MAX_USER_ROLES}")
    roles = tuple(_read_name(reader, "role name") for _ in range(count))
    if "" in roles or list(roles) != sorted(set(roles)):
        reader.fail("roles empty, out of order or repeated")
    reader.end()
    return User(name, password, password_revision, roles)


def encode_role(role: Role) -> bytes:
    """Return the stored bytes of C{role} (its name is the table key)."""
    out = [U16.pack(len(role.permissions))]
    for permission in role.permissions:
        _write_permission(permission, out)
    return b"".join(out)


def permission_order(p: KeyPermission) -> tuple:
    """The order a role keeps its permissions in (by range; one per range)."""
    return (p.key, p.end is None, p.end or b"")


def decode_role(name: str, data) -> Role:
    """
    Return the L{Role} C{name} stored as C{data}.

    @raise CorruptState: C{data} is not a role.
    """
    reader = Reader(as_bytes(data, CorruptState), CorruptState, f"role {name!r}")
    count = reader.count(U16, 5)
    if count > MAX_ROLE_PERMISSIONS:
        reader.fail(f"{count} permissions, more than {MAX_ROLE_PERMISSIONS}")
    permissions = tuple(_read_permission(reader) for _ in range(count))
    orders = [permission_order(p) for p in permissions]
    if orders != sorted(set(orders)):
        reader.fail("permissions out of order or repeated")
    reader.end()
    return Role(name, permissions)


def encode_command(command: AuthCommand) -> bytes:
    """
    Return the log bytes of C{command}.

    @raise InvalidArgument: C{command} is not well-formed (L{check_command}).
    """
    check_command(command)
    out = [U8.pack(command.action), _name(command.name), _name(command.role),
           U16.pack(len(command.password)), command.password, U8.pack(command.permission is not None)]
    if command.permission is not None:
        _write_permission(command.permission, out)
    out += [U8.pack(len(command.token_key)), command.token_key]
    return b"".join(out)


def read_command(reader: Reader) -> AuthCommand:
    """
    Read one command written by L{encode_command} (C{reader} raises
    L{MalformedCommand}, or its own error class).
    """
    action = reader.code(_ACTIONS, "auth action")
    name = _read_name(reader, "user name")
    role = _read_name(reader, "role name")
    password = reader.u16_bytes()
    permission = _read_permission(reader) if reader.flag() else None
    token_key = reader.take(reader.u8())
    command = AuthCommand(action, name, role, password, permission, token_key)
    try:
        check_command(command)
    except InvalidArgument as error:
        reader.fail(f"invalid auth command: {error}")
    return command


def decode_command(data) -> AuthCommand:
    """
    Return the L{AuthCommand} encoded in C{data}.

    @raise MalformedCommand: C{data} is not one.
    """
    reader = Reader(as_bytes(data, MalformedCommand), MalformedCommand, "auth command")
    command = read_command(reader)
    reader.end()
    return command
