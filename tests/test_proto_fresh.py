"""
The generated modules in kvpaxos/v1/ and kvpaxos/etcdpb/ are committed;
this test regenerates them from proto/ with grpc_tools.protoc into a
temporary directory and fails when the committed ones differ.  To fix a
failure, regenerate from the repository root:

    python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \\
        --grpc_python_out=. proto/kvpaxos/v1/kv.proto proto/kvpaxos/v1/auth.proto \\
        proto/kvpaxos/v1/watch.proto proto/kvpaxos/v1/lease.proto \\
        proto/kvpaxos/etcdpb/kv.proto proto/kvpaxos/etcdpb/rpc.proto
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ("kvpaxos/v1/kv.proto", "kvpaxos/v1/auth.proto", "kvpaxos/v1/watch.proto", "kvpaxos/v1/lease.proto", "kvpaxos/etcdpb/kv.proto", "kvpaxos/etcdpb/rpc.proto")
GENERATED = ("kv_pb2.py", "kv_pb2.pyi", "kv_pb2_grpc.py")


class GeneratedCodeTests(SynchronousTestCase):
    """The committed generated code matches proto/."""

    def test_generated_code_fresh(self) -> None:
        """Regenerating every .proto gives byte-identical committed modules."""
        from grpc_tools import protoc

        well_known = resources.files("grpc_tools") / "_proto"
        with tempfile.TemporaryDirectory() as out:
            status = protoc.main(
                [
                    "grpc_tools.protoc",
                    f"-I{PROTO_ROOT}",
                    f"-I{well_known}",
                    f"--python_out={out}",
                    f"--pyi_out={out}",
                    f"--grpc_python_out={out}",
                    *(str(PROTO_ROOT / proto) for proto in PROTOS),
                ]
            )
            self.assertEqual(status, 0, "protoc failed")
            stale = []
            for proto in PROTOS:
                package = Path(proto).parent
                for name in GENERATED:
                    name = name.replace("kv_", Path(proto).stem + "_")
                    fresh = (Path(out) / package / name).read_bytes()
                    committed = ROOT / package / name
                    if not committed.exists() or committed.read_bytes() != fresh:
                        stale.append(str(package / name))
        self.assertEqual(stale, [], "stale generated code; regenerate (see this module's docstring)")
