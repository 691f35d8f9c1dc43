"""
The C{kvpaxos} command's actions: L{Actions} carries out one parsed
L{kvpaxos.client.cli.Invocation} with a L{Client} and prints its result
(text, or one JSON object with C{--json}); each action returns the exit
status.  Argument parsing is L{kvpaxos.client.cli}'s; the auth commands'
actions are L{kvpaxos.client.auth_cli.AuthActions}, a subclass.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, BinaryIO

from kvpaxos import client as kvclient
from kvpaxos.client.blocking import Client
from kvpaxos.client.errors import ClientError, RequestFailed, Unauthenticated
from kvpaxos.v1 import kv_pb2

if TYPE_CHECKING:
    from kvpaxos.client.cli import Invocation

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _bytes_fields(name: str, value: bytes) -> dict[str, str]:
    """C{value} for JSON under C{name}: as text when it is UTF-8, else in base64 under C{name_base64}."""
    try:
        return {name: value.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(value).decode("ascii")}


def _value_fields(value: bytes) -> dict[str, str]:
    """A value for JSON: as text when it is UTF-8, else in base64."""
    return _bytes_fields("value", value)


def _kv_fields(kv: kv_pb2.KeyValue, keys_only: bool = False) -> dict[str, Any]:
    fields = {**_bytes_fields("key", kv.key), "version": kv.version,
              "create_revision": kv.create_revision, "mod_revision": kv.mod_revision}
    if not keys_only:
        fields.update(_value_fields(kv.value))
    return fields


def _header_fields(endpoint: str, header: kv_pb2.ResponseHeader) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "member_id": header.member_id,
        "leader_id": header.leader_id or None,
    }


#: What grpc says when a TLS handshake fails or a plaintext client meets a TLS port.
_HANDSHAKE_SIGNS = ("Socket closed", "handshake", "SSL", "certificate")


def tls_hint(message: str, tls: bool) -> str:
    """A hint to add to C{message} when it looks like a TLS mismatch, else ''."""
    if not any(sign in message for sign in _HANDSHAKE_SIGNS):
        return ""
    if not tls:
        return " (if the node serves TLS: give --cacert, and --cert and --key if it asks for a client certificate)"
    return (" (the TLS handshake may have failed: --cacert must be the CA that signed the node's certificate,"
            " and a node with client_cert_auth needs --cert and --key from its trusted CA)")


class Output:
    """How a command writes: one-line errors on stderr, JSON or text on stdout."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def error(self, message: str) -> None:
        self.stderr.write(f"kvpaxos: error: {message}\n".encode("utf-8", "replace"))

    def json(self, obj: dict) -> None:
        self.stdout.write(json.dumps(obj, sort_keys=True).encode("utf-8") + b"\n")

    def text(self, line: str) -> None:
        self.stdout.write(line.encode("utf-8") + b"\n")


class Actions(Output):
    """Carries out one L{Invocation} with a L{Client}; each action returns an exit status."""

    def __init__(self, invocation: "Invocation", client: Client, stdout: BinaryIO, stderr: BinaryIO) -> None:
        super().__init__(stdout, stderr)
        self.invocation = invocation
        self.client = client

    def error(self, message: str) -> None:
        super().error(message + tls_hint(message, self.invocation.tls is not None))

    def run(self) -> int:
        # "user grant-role" is do_user_grant_role (kvpaxos.client.auth_cli.AuthActions).
        action = getattr(self, "do_" + self.invocation.action.replace(" ", "_").replace("-", "_"))
        try:
            return action()
        except RequestFailed as failure:
            # The node answered: no TLS hint, whatever its message says (it may name certificates).
            Output.error(self, str(failure) + self._credential_hint(failure))
            return EXIT_FAILED
        except ClientError as failure:
            self.error(str(failure))
            return EXIT_FAILED

    def _credential_hint(self, failure: ClientError) -> str:
        """What to add to an UNAUTHENTICATED error of a command that named no user and no certificate."""
        i = self.invocation
        if isinstance(failure, Unauthenticated) and i.user is None and (i.tls is None or i.tls[1] is None):
            return " (give --user NAME[:PASSWORD])"
        return ""

    def do_put(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.put_operation(i.key, i.value, lease=i.lease))
        if i.json:
            self.json({"key": i.key_text, "existed": response.existed, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_get(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.get_operation(i.key, i.consistency))
        if i.json:
            fields = _value_fields(response.value) if response.found else {}
            self.json({"key": i.key_text, "found": response.found, **fields, **_header_fields(endpoint, response.header)})
        elif response.found:
            self.stdout.write(response.value + b"\n")
        else:
            self.error("key not found")
        return EXIT_OK if response.found else EXIT_FAILED

    def do_delete(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.delete_operation(i.key))
        if i.json:
            self.json({"key": i.key_text, "deleted": response.deleted, **_header_fields(endpoint, response.header)})
        else:
            self.text("OK")
        return EXIT_OK

    def do_append(self) -> int:
        i = self.invocation
        endpoint, response = self.client.call(kvclient.append_operation(i.key, i.value))
        if i.json:
            self.json({
                "key": i.key_text, "existed": response.existed,
                **_value_fields(response.value), **_header_fields(endpoint, response.header),
            })
        else:
            self.stdout.write(response.value + b"\n")
        return EXIT_OK

    def _print_kvs(self, kvs, keys_only: bool) -> None:
        for kv in kvs:
            self.stdout.write(kv.key + b"\n")
            if not keys_only:
                self.stdout.write(kv.value + b"\n")

    def do_range(self) -> int:
        i = self.invocation
        end = kvclient.TO_THE_END if i.end is None and not i.prefix else i.end
        result = self.client.range(i.key, end, prefix=i.prefix, limit=i.limit, keys_only=i.keys_only,
                                   count_only=i.count_only, consistency=i.consistency)
        if i.json:
            obj = {"count": result.count, "more": result.more, "revision": result.revision}
            if not i.count_only:
                obj["kvs"] = [_kv_fields(kv, i.keys_only) for kv in result.kvs]
            self.json(obj)
        elif i.count_only:
            self.text(str(result.count))
        else:
            self._print_kvs(result.kvs, i.keys_only)
        return EXIT_OK

    def do_watch(self) -> int:
        """Print each event as etcdctl does (its type, then key and value; with --prev-kv the old ones first)."""
        i, spec = self.invocation, self.invocation.watch
        seen = 0
        with self.client.watch(i.key, i.end, prefix=i.prefix, start_revision=spec.revision,
                               prev_kv=spec.prev_kv) as events:
            try:
                for event in events:
                    if i.json:
                        obj = {"type": event.kind.upper(), "revision": event.revision, **_kv_fields(event.kv)}
                        if event.prev_kv is not None:
                            obj["prev_kv"] = _kv_fields(event.prev_kv)
                        self.json(obj)
                    else:
                        self.text(event.kind.upper())
                        if event.prev_kv is not None:
                            self._print_kvs([event.prev_kv], False)
                        self._print_kvs([event.kv], False)
                    self.stdout.flush()
                    seen += 1
                    if spec.max_events and seen >= spec.max_events:
                        break
            except KeyboardInterrupt:
                pass
        return EXIT_OK

    def do_compact(self) -> int:
        """Print as etcdctl does (C{compacted revision N}); a refusal is an error line and exit 1."""
        i = self.invocation
        compacted = self.client.compact(i.revision)
        if i.json:
            self.json({"compact_revision": compacted})
        else:
            self.text(f"compacted revision {compacted}")
        return EXIT_OK

    def do_cas(self) -> int:
        i = self.invocation
        operation = kvclient.cas_operation(
            i.key, i.value, expected_value=i.expect.value, expected_version=i.expect.version,
            expected_absent=i.expect.absent)
        endpoint, response = self.client.call(operation)
        succeeded, current = kvclient.cas_result(response)
        if i.json:
            self.json({
                "key": i.key_text, "succeeded": succeeded,
                "current": None if current is None else _kv_fields(current),
                **_header_fields(endpoint, response.header),
            })
        elif succeeded:
            self.text("OK")
        elif current is None:
            self.error("not swapped: the key does not exist")
        else:
            self.error(f"not swapped: the key has version {current.version}")
        return EXIT_OK if succeeded else EXIT_FAILED

    def do_txn(self) -> int:
        i = self.invocation
        spec = i.txn
        operation = kvclient.txn_operation(spec.compares, spec.success, spec.failure)
        endpoint, response = self.client.call(operation)
        branch = spec.success if response.succeeded else spec.failure
        if i.json:
            results = []
            for op in response.responses:
                kind = op.WhichOneof("response")
                if kind == "response_put":
                    results.append({"put": {"existed": op.response_put.existed}})
                elif kind == "response_delete_range":
                    results.append({"delete": {"deleted": op.response_delete_range.deleted}})
                else:
                    found = op.response_range
                    results.append({"range": {"count": found.count, "more": found.more,
                                              "kvs": [_kv_fields(kv) for kv in found.kvs]}})
            self.json({"succeeded": response.succeeded, "responses": results,
                       **_header_fields(endpoint, response.header)})
        else:
            self.text("SUCCESS" if response.succeeded else "FAILURE")
            for request, op in zip(branch, response.responses):
                kind = op.WhichOneof("response")
                if kind == "response_put":
                    self.text("OK")
                elif kind == "response_delete_range":
                    self.text(str(op.response_delete_range.deleted))
                else:
                    self._print_kvs(op.response_range.kvs, request.request_range.keys_only)
        return EXIT_OK if response.succeeded else EXIT_FAILED

    def do_status(self) -> int:
        """Ask every endpoint (not just the first that answers), once each."""
        i = self.invocation
        members: list[dict[str, Any]] = []
        failed = False
        for endpoint in i.endpoints:
            try:
                response = self.client.member_status(endpoint)
            except ClientError as failure:
                failed = True
                members.append({"endpoint": endpoint, "error": str(failure)})
                continue
            members.append({
                "endpoint": endpoint,
                "member_id": response.member_id,
                "role": response.role,
                "leader_id": response.leader_id or None,
                "voters": list(response.voters),
                "learners": list(response.learners),
                "chosen_index": response.chosen_index,
                "applied_index": response.applied_index,
                "ballot_round": response.ballot_round,
                "used_bytes": response.used_bytes,
                "quota_bytes": response.quota_bytes,
                "space_alarm": response.space_alarm,
            })
        if i.json:
            self.json({"members": members})
        else:
            self._status_table(members)
        return EXIT_FAILED if failed else EXIT_OK

    def _status_table(self, members: list[dict[str, Any]]) -> None:
        def ids(values) -> str:
            return ",".join(map(str, values)) or "-"

        rows = [("ENDPOINT", "ID", "ROLE", "LEADER", "ROUND", "VOTERS", "LEARNERS", "CHOSEN", "APPLIED")]
        for member in members:
            if "error" in member:
                self.error(member["error"])
                continue
            if member["space_alarm"]:
                self.error(f"{member['endpoint']}: space alarm: {member['used_bytes']} of the "
                           f"{member['quota_bytes']}-byte quota in use; writes that grow the store are refused")
            rows.append((
                member["endpoint"], str(member["member_id"]), member["role"],
                str(member["leader_id"] or "-"), str(member["ballot_round"]), ids(member["voters"]),
                ids(member["learners"]),
                str(member["chosen_index"]), str(member["applied_index"]),
            ))
        if len(rows) == 1:
            return
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            self.text("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
