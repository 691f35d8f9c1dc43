"""
Passwords and tokens: how a member turns a password into the hash record a
C{USER_ADD} carries (L{hash_password}), checks a password against it
(L{password_matches}), and issues and checks the tokens of
C{Auth.Authenticate} (L{issue_token}, L{token_user}).

Passwords are hashed with scrypt (RFC 7914, C{hashlib.scrypt}: n=2**14,
r=8, p=1, a 16-byte random salt; about 50 ms and 16 MiB): CPU work for a
pool thread, never the reactor or the gRPC loop.  The record names its
parameters, so a cheaper setting (the simulator's) still verifies.

A token is C{kvp1.<payload>.<mac>} (base64url): the user name, the
user's password revision and an expiry in wall-clock seconds, signed with
HMAC-SHA256 under the replicated token key, so any member checks any
member's token (etcd's simple tokens are per member).  Expiry is wall-clock
because tokens cross machines; it decides only whether a client must
authenticate again, never what the log holds.  A deleted user, a changed
password (a new password revision), a disabled and re-enabled auth (a new
key) or an expired token is refused.  No I/O here; the clock is the
caller's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Optional

from kvpaxos.kv.auth import AuthState

#: scrypt's cost settings for new passwords.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_PREFIX = "kvp1."
_TOKEN_MAX_CHARS = 1024


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """The scrypt parameters of a new hash (the default is the real one)."""

    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P


def hash_password(password: str, cost: ScryptCost = ScryptCost(), salt: Optional[bytes] = None) -> bytes:
    """
    Return the hash record of C{password} (C{b"scrypt$n$r$p$salt$hash"},
    salt and hash in hex) with a new random salt unless C{salt} is given.
    Slow on purpose: call it in a pool thread.
    """
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=cost.n, r=cost.r, p=cost.p,
                            maxmem=256 * cost.n * cost.r + (1 << 20), dklen=_HASH_BYTES)
    return f"scrypt${cost.n}${cost.r}${cost.p}${salt.hex()}${digest.hex()}".encode("ascii")


def password_matches(record: bytes, password: str) -> bool:
    """
    Whether C{password} is the one C{record} was made from (b"": a user
    without a password, which no password matches).  Slow: a pool thread's.
    """
    try:
        kind, n, r, p, salt, digest = record.decode("ascii").split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = bytes.fromhex(salt), bytes.fromhex(digest)
    except (UnicodeDecodeError, ValueError):
        return False
    if kind != "scrypt" or not (1 < n <= 1 << 20 and 0 < r <= 32 and 0 < p <= 16):
        return False
    again = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                           maxmem=256 * n * r + (1 << 20), dklen=len(digest))
    return hmac.compare_digest(again, digest)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(state: AuthState, name: str, now_s: float, ttl_s: float) -> str:
    """
    Return a token for user C{name} of C{state}, valid for C{ttl_s}
    seconds from wall-clock C{now_s}.

    @raise KeyError: there is no such user.
    """
    user = state.users[name]
    encoded = name.encode("utf-8")
    payload = struct.pack(">B", len(encoded)) + encoded + struct.pack(">QQ", user.password_revision,
                                                                     int(now_s + ttl_s))
    mac = hmac.new(state.token_key, payload, hashlib.sha256).digest()
    return f"{_PREFIX}{_b64(payload)}.{_b64(mac)}"


def token_user(state: AuthState, token: str, now_s: float) -> Optional[str]:
    """
    Return the user C{token} names if it is valid in C{state} at
    wall-clock C{now_s}: signed with C{state}'s key, not expired, its
    user there with the same password revision.  Else None.
    """
    if not state.token_key or type(token) is not str or len(token) > _TOKEN_MAX_CHARS:
        return None
    if not token.startswith(_PREFIX) or token.count(".") != 2:
        return None
    try:
        payload_text, mac_text = token[len(_PREFIX):].split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except ValueError:
        return None
    expected = hmac.new(state.token_key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        return None
    size = payload[0] if payload else 0
    if len(payload) != 1 + size + 16:
        return None
    try:
        name = payload[1:1 + size].decode("utf-8")
    except UnicodeDecodeError:
        return None
    password_revision, expiry = struct.unpack(">QQ", payload[1 + size:])
    user = state.users.get(name)
    if user is None or user.password_revision != password_revision or now_s >= expiry:
        return None
    return name
