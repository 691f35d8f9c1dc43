"""
The C{kvpaxos} command's auth commands, etcdctl v3's, over the gRPC Auth
service with the client's auth methods (L{kvpaxos.client.auth}):

    kvpaxos [--user NAME[:PASSWORD]] [--password PASSWORD] COMMAND
    kvpaxos user add NAME[:PASSWORD] [--new-user-password P] [--no-password]
    kvpaxos user delete NAME | user get NAME [--detail] | user list
    kvpaxos user grant-role USER ROLE | user revoke-role USER ROLE
    kvpaxos user passwd NAME [--new-user-password P]
    kvpaxos role add NAME | role delete NAME | role get NAME | role list
    kvpaxos role grant-permission ROLE read|write|readwrite KEY [END] [--prefix | --from-key]
    kvpaxos role revoke-permission ROLE KEY [END] [--prefix | --from-key]
    kvpaxos auth enable | auth disable | auth status

C{grant} and C{revoke} are short for the two permission commands.  A
permission is on KEY, on [KEY, END), on every key starting with KEY
(C{--prefix}) or on every key from KEY on (C{--from-key}); an empty KEY is
etcdctl's C{"\\0"}, so C{"" --prefix} is every key.

Passwords, as etcdctl takes them: C{--user NAME:PASSWORD} splits at the
first C{:} (C{--user NAME --password PASSWORD} takes NAME whole);
C{user add NAME:PASSWORD} likewise unless C{--new-user-password} or
C{--no-password} is given (then NAME is whole).  A password not given is
asked for when stdin is a terminal (a new one twice), else it is a usage
error (L{ask_passwords}, run before anything is sent).

C{auth enable} does what etcdctl's does before it enables: it adds the role
C{root} if there is none and grants it to the user C{root}, which must
exist (found by listing, not by reading error text).  Text output is
etcdctl's lines; with C{--json}, one object with the fields (a change's
C{auth_revision} too).  A refused change (L{AuthRefused}), a missing or
wrong credential (L{Unauthenticated}) and a user without the root role
(L{PermissionDenied}) exit 1 with the client's one-line error.

Parsing and printing only: the tokens are the client's business.
"""

from __future__ import annotations

import argparse
import getpass as _getpass
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import TO_THE_END, check_key, check_name, prefix_end
from kvpaxos.client.actions import EXIT_FAILED, EXIT_OK, Actions, _bytes_fields
from kvpaxos.client.auth import Permission
from kvpaxos.client.txn_syntax import utf8_argument

__all__ = ["AUTH_COMMANDS", "AuthActions", "AuthCommand", "NoPassword", "add_commands", "add_user_options",
           "ask_passwords", "command", "read_password", "stdin_is_a_terminal", "user_option"]

#: The top-level commands this module adds (their actions: L{add_commands}).
AUTH_COMMANDS = ("user", "role", "auth")
#: Permission types, as etcdctl spells them (case does not matter).
KINDS = ("read", "write", "readwrite")
#: The user and role C{auth enable} sets up (etcd's).
ROOT = "root"

#: Reads a password without echoing it (C{prompt} -> the password).
read_password: Callable[[str], str] = _getpass.getpass


def stdin_is_a_terminal() -> bool:
    """Whether a password can be asked for on stdin."""
    return sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()


class NoPassword(Exception):
    """A password was needed, not given, and could not be asked for: a usage error (its message says why)."""


@dataclass(frozen=True)
class AuthCommand:
    """What a C{user}, C{role} or C{auth} command asks for."""

    #: C{"user add"}, C{"role grant-permission"}, C{"auth enable"}, ...
    action: str
    #: The user (user commands) or role (role commands) acted on.
    name: str = ""
    #: user grant-role, revoke-role: the role.
    role: str = ""
    #: user add, passwd: the new password; None: ask (unless C{no_password}).
    password: Optional[str] = None
    no_password: bool = False
    #: user get --detail: each role's permissions too.
    detail: bool = False
    #: grant-permission: read, write or readwrite.
    kind: str = ""
    key: bytes = b""
    #: None: the one key; L{TO_THE_END}: every key from C{key} on; else [key, end).
    end: Optional[bytes] = None
    #: every key starting with C{key} (C{end} None).
    prefix: bool = False


# --- parsing ------------------------------------------------------------------


def add_user_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Add C{--user} and C{--password} (after a command: default "not given")."""
    default = None if defaults else argparse.SUPPRESS
    parser.add_argument("--user", default=default, metavar="NAME[:PASSWORD]",
                        help="once auth is enabled: the user to act as (the password is asked for if not given)")
    parser.add_argument("--password", default=default, metavar="PASSWORD",
                        help="the password of --user (then --user is the whole name)")


def user_option(args: argparse.Namespace, error: Callable[[str], Any]) -> tuple[Optional[str], Optional[str]]:
    """
    C{(user, password)} of C{--user} and C{--password}: C{(None, None)}
    without a user; the password None when it is to be asked for.
    C{error(message)} reports a usage error (and raises).
    """
    user, password = getattr(args, "user", None), getattr(args, "password", None)
    if user is None:
        if password is not None:
            error("--password needs --user")
        return None, None
    if password is None:
        user, colon, given = user.partition(":")
        password = given if colon else None
    if password == "":
        error("--user: the password is empty")
    _check_name(user, "--user: user name", error)
    return user, password


def _checked(check: Callable[[Any, str], None], value, what: str, error: Callable[[str], Any]):
    """C{value}, once C{check(value, what)} passed (its L{InvalidArgument} is a usage error)."""
    try:
        check(value, what)
    except InvalidArgument as failure:
        error(str(failure))
    return value


def _check_name(name: str, what: str, error: Callable[[str], Any]) -> str:
    return _checked(check_name, name, what, error)


def _user_fields(args, error) -> dict[str, Any]:
    return {"name": _check_name(args.auth_name, "user name", error)}


def _role_fields(args, error) -> dict[str, Any]:
    return {"name": _check_name(args.auth_name, "role name", error)}


def _new_password(text: Optional[str], error) -> Optional[str]:
    if text == "":
        error("--new-user-password: the password is empty")
    return text


def _user_add_fields(args, error) -> dict[str, Any]:
    if args.no_password and args.new_user_password is not None:
        error("give --new-user-password or --no-password, not both")
    if args.no_password or args.new_user_password is not None:
        name, password = args.auth_name, _new_password(args.new_user_password, error)
    else:
        name, colon, password = args.auth_name.partition(":")
        if colon and password == "":
            error(f"{args.auth_name!r}: the password after ':' is empty")
        password = password if colon else None
    return {"name": _check_name(name, "user name", error), "password": password, "no_password": args.no_password}


def _user_get_fields(args, error) -> dict[str, Any]:
    return {**_user_fields(args, error), "detail": args.detail}


def _passwd_fields(args, error) -> dict[str, Any]:
    return {**_user_fields(args, error), "password": _new_password(args.new_user_password, error)}


def _user_role_fields(args, error) -> dict[str, Any]:
    return {**_user_fields(args, error), "role": _check_name(args.auth_role, "role name", error)}


def _permission_fields(args, error) -> dict[str, Any]:
    """KEY [END] --prefix --from-key, as etcdctl reads them (an empty KEY is "\\0")."""
    if args.prefix and args.from_key:
        error("--from-key and --prefix are mutually exclusive")
    key = _checked(check_key, utf8_argument(args.perm_key), "key", error) if args.perm_key else b"\0"
    end: Optional[bytes] = None
    if args.perm_end is not None:
        if args.prefix or args.from_key:
            error(f"unexpected END with --{'prefix' if args.prefix else 'from-key'}")
        end = _checked(check_key, utf8_argument(args.perm_end), "range end", error)
        if end <= key:
            error("END must come after KEY")
    elif args.from_key or (args.prefix and key == b"\0"):
        end = TO_THE_END  # "" --prefix: every key, as etcdctl grants it
    return {**_role_fields(args, error), "key": key, "end": end, "prefix": args.prefix and end is None}


def _grant_fields(args, error) -> dict[str, Any]:
    kind = args.perm_type.lower()
    if kind not in KINDS:
        error(f"invalid permission type {args.perm_type!r}: give read, write or readwrite")
    return {**_permission_fields(args, error), "kind": kind}


def add_commands(commands, streams, global_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """
    Add the C{user}, C{role} and C{auth} parsers to C{commands} (the
    C{kvpaxos} subparsers); C{global_options(parser)} adds the options every
    command takes after its name.
    """
    def group(name: str, help_text: str):
        parser = commands.add_parser(name, help=help_text, description=help_text, streams=streams)
        global_options(parser)
        return parser.add_subparsers(dest="auth_action", metavar="ACTION", required=True)

    def action(actions, command: str, name: str, help_text: str, fields=lambda args, error: {}, aliases=()):
        parser = actions.add_parser(name, aliases=list(aliases), help=help_text, description=help_text,
                                    streams=streams)
        parser.set_defaults(auth_command=f"{command} {name}", auth_fields=fields, auth_parser=parser)
        global_options(parser)
        return parser

    def names(parser, *metavars: str) -> None:
        for dest, metavar in zip(("auth_name", "auth_role"), metavars):
            parser.add_argument(dest, metavar=metavar)

    def permission(parser) -> None:
        parser.add_argument("perm_key", metavar="KEY")
        parser.add_argument("perm_end", metavar="END", nargs="?", help="the range is [KEY, END)")
        parser.add_argument("--prefix", action="store_true", help="every key starting with KEY")
        parser.add_argument("--from-key", action="store_true", help="every key from KEY on")

    user = group("user", "add, list and change users (auth)")
    add = action(user, "user", "add", "add a user (its password is asked for if not given)", _user_add_fields)
    names(add, "NAME[:PASSWORD]")
    add.add_argument("--new-user-password", metavar="PASSWORD", help="its password (then NAME is the whole name)")
    add.add_argument("--no-password", action="store_true",
                     help="no password: the user authenticates by client certificate only")
    names(action(user, "user", "delete", "delete a user", _user_fields), "NAME")
    get = action(user, "user", "get", "print a user's roles", _user_get_fields)
    names(get, "NAME")
    get.add_argument("--detail", action="store_true", help="print each role's permissions too")
    action(user, "user", "list", "print every user's name")
    names(action(user, "user", "grant-role", "grant a role to a user", _user_role_fields), "USER", "ROLE")
    names(action(user, "user", "revoke-role", "revoke a role from a user", _user_role_fields), "USER", "ROLE")
    passwd = action(user, "user", "passwd", "change a user's password (asked for if not given)", _passwd_fields)
    names(passwd, "NAME")
    passwd.add_argument("--new-user-password", metavar="PASSWORD", help="the new password")

    role = group("role", "add, list and change roles and their key permissions (auth)")
    names(action(role, "role", "add", "add a role", _role_fields), "NAME")
    names(action(role, "role", "delete", "delete a role (revoked from every user)", _role_fields), "NAME")
    names(action(role, "role", "get", "print a role's permissions", _role_fields), "NAME")
    action(role, "role", "list", "print every role's name")
    grant = action(role, "role", "grant-permission", "grant a role read, write or readwrite on a key or range",
                   _grant_fields, aliases=("grant",))
    names(grant, "ROLE")
    grant.add_argument("perm_type", metavar="read|write|readwrite")
    permission(grant)
    revoke = action(role, "role", "revoke-permission", "revoke a role's permission on exactly that key or range",
                    _permission_fields, aliases=("revoke",))
    names(revoke, "ROLE")
    permission(revoke)

    auth = group("auth", "enable and disable auth, and print whether it is enabled")
    action(auth, "auth", "enable", "enable auth (adds the role root and grants it to the user root if need be)")
    action(auth, "auth", "disable", "disable auth (root only)")
    action(auth, "auth", "status", "print whether auth is enabled, and the auth revision")


def command(args: argparse.Namespace) -> AuthCommand:
    """The L{AuthCommand} of parsed C{args}; a usage error is reported by the command's own parser."""
    return AuthCommand(args.auth_command, **args.auth_fields(args, args.auth_parser.error))


# --- passwords ----------------------------------------------------------------


def _ask(getpass: Callable[[str], str], prompt: str) -> str:
    try:
        password = getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise NoPassword("no password read") from None
    if not password:
        raise NoPassword("the password is empty")
    return password


def ask_passwords(invocation, getpass: Callable[[str], str] = read_password,
                  isatty: Callable[[], bool] = stdin_is_a_terminal):
    """
    Return C{invocation} (a L{kvpaxos.client.cli.Invocation}) with every
    password it needs: a new user's (C{user add}, C{user passwd}: asked for
    twice, as etcdctl does) and then C{--user}'s, each asked for with
    C{getpass(prompt)} when not given.

    @raise NoPassword: one is not given and C{isatty()} is false, the two
        answers differ, or an answer is empty.
    """
    auth = invocation.auth
    if auth is not None and auth.action in ("user add", "user passwd") and auth.password is None \
            and not auth.no_password:
        if not isatty():
            how = (f"{auth.name}:PASSWORD, --new-user-password PASSWORD or --no-password"
                   if auth.action == "user add" else "--new-user-password PASSWORD")
            raise NoPassword(f"{auth.action} {auth.name}: no password given, and stdin is not a terminal to ask"
                             f" on: give {how}")
        password = _ask(getpass, f"Password of {auth.name}: ")
        if _ask(getpass, f"Type password of {auth.name} again for confirmation: ") != password:
            raise NoPassword("given passwords are different")
        auth = replace(auth, password=password)
    password = invocation.password
    if invocation.user is not None and password is None:
        if not isatty():
            raise NoPassword(f"--user {invocation.user}: no password given, and stdin is not a terminal to ask on:"
                             f" give --user {invocation.user}:PASSWORD or --password PASSWORD")
        password = _ask(getpass, "Password: ")
    return replace(invocation, auth=auth, password=password)


# --- carrying out -------------------------------------------------------------


def _permission_json(permission: Permission) -> dict[str, Any]:
    return {"type": permission.kind, **_bytes_fields("key", permission.key),
            **_bytes_fields("range_end", permission.range_end)}


def _range_text(key: bytes, end: bytes, marked: bool = True) -> bytes:
    """
    A range as etcdctl prints it: C{[a, b)} or C{[a, <open ended>}, and
    (C{marked}) C{ (prefix a)} after a prefix's range.
    """
    line = b"[" + key + (b", <open ended>" if end == TO_THE_END else b", " + end + b")")
    if marked and key and prefix_end(key) == end:
        line += b" (prefix " + key + b")"
    return line


class AuthActions(Actions):
    """The C{user}, C{role} and C{auth} actions (L{Actions}: errors, output, exit statuses)."""

    @property
    def auth(self) -> AuthCommand:
        return self.invocation.auth

    def _done(self, line: str, **fields: Any) -> int:
        """The answer: etcdctl's C{line} (or lines), or the fields as JSON."""
        if self.invocation.json:
            self.json(fields)
        else:
            self.text(line)
        return EXIT_OK

    def _names(self, field: str, names: list[str]) -> int:
        """etcdctl's lists: one name a line."""
        if self.invocation.json:
            self.json({field: names})
        else:
            for name in names:
                self.text(name)
        return EXIT_OK

    def do_user_add(self) -> int:
        a = self.auth
        revision = self.client.user_add(a.name, None if a.no_password else a.password, no_password=a.no_password)
        return self._done(f"User {a.name} created", user=a.name, no_password=a.no_password, auth_revision=revision)

    def do_user_delete(self) -> int:
        revision = self.client.user_delete(self.auth.name)
        return self._done(f"User {self.auth.name} deleted", user=self.auth.name, auth_revision=revision)

    def do_user_passwd(self) -> int:
        a = self.auth
        revision = self.client.user_change_password(a.name, a.password)
        return self._done("Password updated", user=a.name, auth_revision=revision)

    def do_user_grant_role(self) -> int:
        a = self.auth
        return self._done(f"Role {a.role} is granted to user {a.name}", user=a.name, role=a.role,
                          auth_revision=self.client.user_grant_role(a.name, a.role))

    def do_user_revoke_role(self) -> int:
        a = self.auth
        return self._done(f"Role {a.role} is revoked from user {a.name}", user=a.name, role=a.role,
                          auth_revision=self.client.user_revoke_role(a.name, a.role))

    def do_user_get(self) -> int:
        a = self.auth
        roles = self.client.user_get(a.name)
        permissions = {role: self.client.role_get(role) for role in roles} if a.detail else {}
        if self.invocation.json:
            fields: dict[str, Any] = {"user": a.name, "roles": roles}
            if a.detail:
                fields["permissions"] = {role: [_permission_json(p) for p in found]
                                         for role, found in permissions.items()}
            self.json(fields)
            return EXIT_OK
        self.text(f"User: {a.name}")
        if not a.detail:
            self.text("Roles:" + "".join(f" {role}" for role in roles))
        for role in roles if a.detail else ():
            self.text("")
            self._print_role(role, permissions[role])
        return EXIT_OK

    def do_user_list(self) -> int:
        return self._names("users", self.client.user_list())

    def do_role_add(self) -> int:
        revision = self.client.role_add(self.auth.name)
        return self._done(f"Role {self.auth.name} created", role=self.auth.name, auth_revision=revision)

    def do_role_delete(self) -> int:
        revision = self.client.role_delete(self.auth.name)
        return self._done(f"Role {self.auth.name} deleted", role=self.auth.name, auth_revision=revision)

    def _print_role(self, role: str, permissions: list[Permission]) -> None:
        """etcdctl's C{role get}: the role, then the keys and ranges it may read, then write."""
        self.text(f"Role {role}")
        for title, kinds in (("KV Read:", ("read", "readwrite")), ("KV Write:", ("write", "readwrite"))):
            self.text(title)
            for p in permissions:
                if p.kind in kinds:
                    self.stdout.write(b"\t" + (_range_text(p.key, p.range_end) if p.range_end else p.key) + b"\n")

    def do_role_get(self) -> int:
        permissions = self.client.role_get(self.auth.name)
        if self.invocation.json:
            self.json({"role": self.auth.name, "permissions": [_permission_json(p) for p in permissions]})
        else:
            self._print_role(self.auth.name, permissions)
        return EXIT_OK

    def do_role_list(self) -> int:
        return self._names("roles", self.client.role_list())

    def _range_end(self) -> bytes:
        """The range end the permission command sent (b"": the one key)."""
        a = self.auth
        return prefix_end(a.key) if a.prefix else a.end or b""

    def _range_fields(self) -> dict[str, Any]:
        return {"role": self.auth.name, **_bytes_fields("key", self.auth.key),
                **_bytes_fields("range_end", self._range_end())}

    def do_role_grant_permission(self) -> int:
        a = self.auth
        revision = self.client.role_grant_permission(a.name, a.kind, a.key, a.end, prefix=a.prefix)
        return self._done(f"Role {a.name} updated", type=a.kind, auth_revision=revision, **self._range_fields())

    def do_role_revoke_permission(self) -> int:
        a = self.auth
        revision = self.client.role_revoke_permission(a.name, a.key, a.end, prefix=a.prefix)
        if self.invocation.json:
            self.json({**self._range_fields(), "auth_revision": revision})
            return EXIT_OK
        end = self._range_end()
        what = b"range " + _range_text(a.key, end, marked=False) if end else b"key " + a.key
        self.stdout.write(b"Permission of " + what + f" is revoked from role {a.name}\n".encode("utf-8"))
        return EXIT_OK

    def do_auth_enable(self) -> int:
        """etcdctl's: the role root added and granted to the user root if need be, then auth enabled."""
        if ROOT not in self.client.user_list():
            self.error(f"auth enable needs a user {ROOT}: run `kvpaxos user add {ROOT}` first"
                       f" (auth enable then grants it the role {ROOT})")
            return EXIT_FAILED
        role_created = ROOT not in self.client.role_list()
        if role_created:
            self.client.role_add(ROOT)
        role_granted = ROOT not in self.client.user_get(ROOT)
        if role_granted:
            self.client.user_grant_role(ROOT, ROOT)
        revision = self.client.auth_enable()
        return self._done("Authentication Enabled", enabled=True, auth_revision=revision,
                          root_role_created=role_created, root_role_granted=role_granted)

    def do_auth_disable(self) -> int:
        return self._done("Authentication Disabled", enabled=False, auth_revision=self.client.auth_disable())

    def do_auth_status(self) -> int:
        enabled, revision = self.client.auth_status()
        return self._done(f"Authentication Status: {str(enabled).lower()}\nAuthRevision: {revision}",
                          enabled=enabled, auth_revision=revision)
