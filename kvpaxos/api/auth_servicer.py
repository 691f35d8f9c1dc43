"""
The C{kvpaxos.v1.Auth} servicer: users, roles, permissions and tokens, on
the gRPC thread's event loop like L{kvpaxos.api.servicers}.  Each method
checks the request's shape, makes one node call (an auth change through
the log, C{Authenticate}, or a read of the applied auth state) and
converts the answer.  Whether a change applies, and who may make it, is
the node's and the state machine's to decide.
"""

from __future__ import annotations

from functools import partial

from kvpaxos.api.errors import AuthRefused, InvalidArgument
from kvpaxos.api.servicers import _abort_for, _checked, _NodeCalls, _rpc
from kvpaxos.kv.auth import (
    AuthAction,
    AuthChanged,
    AuthCommand,
    KeyPermission,
    Permission,
    check_command,
)
from kvpaxos.v1 import auth_pb2, auth_pb2_grpc

#: The longest password taken (scrypt hashes anything; this bounds the work).
MAX_PASSWORD_CHARS = 1024


def _permission(kind: int, key: bytes, range_end: bytes) -> KeyPermission:
    try:
        kind = Permission(kind)
    except ValueError:
        raise InvalidArgument(f"unknown permission type {kind}") from None
    return KeyPermission(kind, key, range_end or None)


def _permission_to_proto(p: KeyPermission) -> auth_pb2.Permission:
    return auth_pb2.Permission(perm_type=int(p.kind), key=p.key, range_end=p.end or b"")


def _password(password: str) -> str:
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidArgument(f"a password is at most {MAX_PASSWORD_CHARS} characters")
    return password


class AuthServicer(auth_pb2_grpc.AuthServicer):
    """C{kvpaxos.v1.Auth}, for a node that offers L{kvpaxos.node.auth_calls.AuthCalls}."""

    def __init__(self, node, calls: _NodeCalls) -> None:
        self._node = node
        self._calls = calls

    async def _change(self, context, command: AuthCommand, password=None) -> auth_pb2.AuthChangeResponse:
        """Run C{command} (checked first) through the node; answer with the auth revision."""
        member = self._calls.member_id
        check = command
        if password is not None:  # the hash replaces the password before the log
            check = AuthCommand(command.action, command.name, command.role, b"x")
        _checked(member, partial(check_command, check))
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.auth_change(command, timeout_s, credential, password))
        if not isinstance(result, AuthChanged):
            _abort_for(TypeError(f"unexpected result {type(result).__name__}"), header.member_id)
        return auth_pb2.AuthChangeResponse(header=header, auth_revision=result.auth_revision)

    async def _state(self, context, root: bool = True):
        credential = self._calls.credential(context)
        return await self._calls.call(context, lambda timeout_s: self._node.auth_state(credential, root))

    @_rpc
    async def AuthEnable(self, request, context):
        # The token key is the node's to make (auth_change).
        return await self._change(context, AuthCommand(AuthAction.ENABLE, token_key=b"\0" * 32))

    @_rpc
    async def AuthDisable(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.DISABLE))

    @_rpc
    async def AuthStatus(self, request, context):
        state, header = await self._state(context, root=False)
        return auth_pb2.AuthStatusResponse(header=header, enabled=state.enabled, auth_revision=state.revision)

    @_rpc
    async def Authenticate(self, request, context):
        _checked(self._calls.member_id, partial(_password, request.password))
        name, password = request.name, request.password
        token, header = await self._calls.call(context, lambda timeout_s: self._node.authenticate(name, password))
        return auth_pb2.AuthenticateResponse(header=header, token=token, ttl=int(self._node.auth.token_ttl_s))

    @_rpc
    async def UserAdd(self, request, context):
        password = None if request.no_password else _checked(self._calls.member_id,
                                                              partial(_password, request.password))
        if password == "":
            _checked(self._calls.member_id, partial(_refuse, "a password is empty: set no_password for a "
                                                    "user that authenticates by client certificate only"))
        return await self._change(context, AuthCommand(AuthAction.USER_ADD, name=request.name), password)

    @_rpc
    async def UserDelete(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.USER_DELETE, name=request.name))

    @_rpc
    async def UserChangePassword(self, request, context):
        password = _checked(self._calls.member_id, partial(_password, request.password))
        if password == "":
            _checked(self._calls.member_id, partial(_refuse, "a password is empty"))
        return await self._change(context, AuthCommand(AuthAction.USER_CHANGE_PASSWORD, name=request.name),
                                  password)

    @_rpc
    async def UserGrantRole(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.USER_GRANT_ROLE, name=request.user,
                                                       role=request.role))

    @_rpc
    async def UserRevokeRole(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.USER_REVOKE_ROLE, name=request.name,
                                                       role=request.role))

    @_rpc
    async def UserGet(self, request, context):
        state, header = await self._state(context)
        user = state.users.get(request.name)
        if user is None:
            _abort_for(_not_found("etcdserver: user name not found"), header.member_id)
        return auth_pb2.UserGetResponse(header=header, roles=list(user.roles))

    @_rpc
    async def UserList(self, request, context):
        state, header = await self._state(context)
        return auth_pb2.UserListResponse(header=header, users=sorted(state.users))

    @_rpc
    async def RoleAdd(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.ROLE_ADD, role=request.name))

    @_rpc
    async def RoleDelete(self, request, context):
        return await self._change(context, AuthCommand(AuthAction.ROLE_DELETE, role=request.role))

    @_rpc
    async def RoleGet(self, request, context):
        state, header = await self._state(context)
        role = state.roles.get(request.role)
        if role is None:
            _abort_for(_not_found("etcdserver: role name not found"), header.member_id)
        return auth_pb2.RoleGetResponse(header=header, perm=[_permission_to_proto(p) for p in role.permissions])

    @_rpc
    async def RoleList(self, request, context):
        state, header = await self._state(context)
        return auth_pb2.RoleListResponse(header=header, roles=sorted(state.roles))

    @_rpc
    async def RoleGrantPermission(self, request, context):
        perm = request.perm
        permission = _checked(self._calls.member_id, partial(_permission, perm.perm_type, perm.key, perm.range_end))
        return await self._change(context, AuthCommand(AuthAction.ROLE_GRANT_PERMISSION, role=request.name,
                                                       permission=permission))

    @_rpc
    async def RoleRevokePermission(self, request, context):
        permission = KeyPermission(Permission.READWRITE, request.key, request.range_end or None)
        return await self._change(context, AuthCommand(AuthAction.ROLE_REVOKE_PERMISSION, role=request.role,
                                                       permission=permission))


def _refuse(message: str):
    raise InvalidArgument(message)


def _not_found(message: str) -> AuthRefused:
    return AuthRefused(message)
