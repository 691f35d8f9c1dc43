"""
The C{kvpaxos txn} syntax: C{--compare}, C{--then} and C{--else}
expressions (L{TXN_HELP}) turned into the API's C{Compare} and
C{RequestOp} messages with the client's builders.  Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from typing import Optional

from kvpaxos import client as kvclient
from kvpaxos.client.errors import InvalidArgument
from kvpaxos.v1 import kv_pb2

__all__ = ["TXN_HELP", "TxnSyntaxError", "parse_compare", "parse_op", "utf8_argument"]

TXN_HELP = """\
Compare (all must hold for the --then branch to run; else --else runs):
  value(KEY) OP VALUE      OP is ==, !=, < or > (bytewise)
  version(KEY) OP N        writes since the key was created; 0 if missing
  create(KEY) OP N         revision that created the key; 0 if missing
  mod(KEY) OP N            revision of the key's latest write; 0 if missing
  exists(KEY) [== true|false]
Operations (--then, --else):
  put KEY VALUE | delete KEY | get KEY | range START [END]
Quote words with spaces shell-style inside the expression:
  kvpaxos txn --compare "value(k) == 'a b'" --then 'put k c' --else 'get k'
Prints SUCCESS or FAILURE, then one result per operation: OK for put, the
number deleted for delete, key and value lines for get and range.  Exits 0
when the --then branch ran, 1 when the --else branch ran."""


def utf8_argument(text: Optional[str]) -> Optional[bytes]:
    """Return a command-line argument as the bytes it was given in (None stays None)."""
    # surrogateescape gives back the exact bytes of an argument that was not
    # valid UTF-8 in the first place.
    return None if text is None else text.encode("utf-8", "surrogateescape")


class TxnSyntaxError(InvalidArgument):
    """A C{--compare}, C{--then} or C{--else} expression does not parse (the user's fault)."""


_CALL = re.compile(r"^(\w+)\((.*)\)$", re.DOTALL)
_NUMERIC_TARGETS = {
    "version": kvclient.compare_version,
    "create": kvclient.compare_create_revision, "create_revision": kvclient.compare_create_revision,
    "mod": kvclient.compare_mod_revision, "mod_revision": kvclient.compare_mod_revision,
}


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise TxnSyntaxError(f"{text!r}: {error}") from None


def parse_compare(text: str) -> kv_pb2.Compare:
    """
    Return the C{Compare} that C{text} (C{"value(k) == v"}, ...; see
    L{TXN_HELP}) describes.

    @raise TxnSyntaxError: it does not parse.
    """
    words = _words(text)
    match = _CALL.match(words[0]) if words else None
    if match is None or len(words) not in (1, 3):
        raise TxnSyntaxError(f"{text!r} is not TARGET(KEY) OP OPERAND")
    target, key = match.group(1), utf8_argument(match.group(2))
    if target == "exists":
        if len(words) == 1:
            return kvclient.compare_exists(key)
        op, operand = words[1], words[2].lower()
        if op not in ("==", "!=") or operand not in ("true", "false"):
            raise TxnSyntaxError(f"{text!r}: exists(KEY) compares with == or != to true or false")
        return kvclient.compare_exists(key, (operand == "true") == (op == "=="))
    if len(words) != 3:
        raise TxnSyntaxError(f"{text!r} needs an operator and an operand")
    op, operand = words[1], words[2]
    try:
        if target == "value":
            return kvclient.compare_value(key, op, utf8_argument(operand))
        if target in _NUMERIC_TARGETS:
            if not operand.isdigit():
                raise TxnSyntaxError(f"{text!r}: {target} compares with a whole number")
            return _NUMERIC_TARGETS[target](key, op, int(operand))
    except InvalidArgument as error:
        raise TxnSyntaxError(f"{text!r}: {error}") from None
    raise TxnSyntaxError(f"{text!r}: unknown target {target!r} (value, version, create, mod, exists)")


def parse_op(text: str) -> kv_pb2.RequestOp:
    """
    Return the C{RequestOp} that C{text} (C{"put k v"}, C{"delete k"},
    C{"get k"}, C{"range a [b]"}) describes.

    @raise TxnSyntaxError: it does not parse.
    """
    words = _words(text)
    name, args = (words[0], [utf8_argument(word) for word in words[1:]]) if words else ("", [])
    if name == "put" and len(args) == 2:
        return kvclient.put_op(*args)
    if name == "delete" and len(args) == 1:
        return kvclient.delete_op(args[0])
    if name == "get" and len(args) == 1:
        return kvclient.get_op(args[0])
    if name == "range" and len(args) in (1, 2):
        return kvclient.range_op(args[0], args[1] if len(args) == 2 else kvclient.TO_THE_END)
    raise TxnSyntaxError(f"{text!r} is not put KEY VALUE, delete KEY, get KEY or range START [END]")
