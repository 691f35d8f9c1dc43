"""
The import rules between the client and the server (issue 10): the client
package speaks only the API, and nothing that runs in a node imports the
client.  Checked on the source with C{ast}, following every C{kvpaxos}
import (at module level, in functions, under C{TYPE_CHECKING}) from module
to module, so an indirect import breaks the rule as a direct one does.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: What the client may not reach, directly or through another module.
CLIENT_FORBIDDEN = (
    "kvpaxos.kv", "kvpaxos.node", "kvpaxos.paxos", "kvpaxos.storage", "kvpaxos.admin",
    "kvpaxos.testing", "kvpaxos.plugins", "kvpaxos.tap", "kvpaxos.config", "kvpaxos.cluster",
)
#: Every module that runs in a node (the twistd plugin, the wiring and each
#: layer); the test harness (C{kvpaxos.testing}) is a client of the product
#: and may use the client.
SERVER_PACKAGES = (
    "kvpaxos.api", "kvpaxos.node", "kvpaxos.paxos", "kvpaxos.kv", "kvpaxos.storage",
    "kvpaxos.admin", "kvpaxos.plugins", "kvpaxos.tap", "kvpaxos.config", "kvpaxos.restore",
    "twisted.plugins.kvpaxos_plugin",
)


def module_file(name: str) -> Optional[Path]:
    """The source file of module C{name} in this checkout, or None (not ours, or not a module)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """
    The C{kvpaxos} modules that C{path} imports anywhere in its source,
    with the packages each one's import runs (C{kvpaxos.a.b} runs
    C{kvpaxos} and C{kvpaxos.a} too).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            # "from kvpaxos.client import cli" imports the module kvpaxos.client.cli.
            names.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}"))
    ours = set()
    for name in names:
        if name == "kvpaxos" or name.startswith("kvpaxos."):
            parts = name.split(".")
            ours.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in ours if module_file(name) is not None}


def reached(start: str) -> dict[str, str]:
    """Every module C{start} imports, directly or not, each with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for name in imported(module_file(current)):
            if name not in seen and name != start:
                seen[name] = current
                todo.append(name)
    return seen


def chain(seen: dict[str, str], start: str, name: str) -> str:
    path = [name]
    while path[-1] != start and path[-1] in seen:
        path.append(seen[path[-1]])
    return " <- ".join(path)


def modules_under(package: str) -> list[str]:
    """C{package} and every module in it (a plain module: just itself)."""
    path = module_file(package)
    if path is None:
        raise AssertionError(f"no module {package}")
    if path.name != "__init__.py":
        return [package]
    return sorted(module_name(p) for p in path.parent.rglob("*.py"))


def under(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class ImportRuleTests(SynchronousTestCase):
    """The client speaks only the API; the server never imports the client."""

    def test_client_speaks_only_the_api(self) -> None:
        """No module of kvpaxos.client reaches kvpaxos.kv, .node, .paxos, .storage (or the rest of the server)."""
        modules = modules_under("kvpaxos.client")
        self.assertIn("kvpaxos.client.cli", modules)
        broken = []
        for module in modules:
            seen = reached(module)
            broken += [chain(seen, module, name) for name in seen if under(name, CLIENT_FORBIDDEN)]
        self.assertEqual(broken, [])

    def test_client_reaches_only_the_api_contract(self) -> None:
        """
        Of kvpaxos.api, the client reaches only its contract: errors,
        limits, endpoints, the admin commands and the snapshot file format.
        """
        contract = {"kvpaxos.api", "kvpaxos.api.errors", "kvpaxos.api.limits", "kvpaxos.api.endpoints",
                    "kvpaxos.api.admin", "kvpaxos.api.backup"}
        reached_api = {name for module in modules_under("kvpaxos.client") for name in reached(module)
                       if under(name, ("kvpaxos.api",))}
        self.assertEqual(reached_api - contract, set())
        self.assertIn("kvpaxos.api.errors", reached_api)

    def test_server_does_not_import_the_client(self) -> None:
        """No module that runs in a node imports kvpaxos.client, directly or not."""
        broken = []
        for package in SERVER_PACKAGES:
            for module in modules_under(package):
                seen = reached(module)
                broken += [chain(seen, module, name) for name in seen if under(name, ("kvpaxos.client",))]
        self.assertEqual(broken, [])

    def test_rule_catches_an_import(self) -> None:
        """The walk sees imports in functions and relative imports (a check that can fail)."""
        self.assertIn("kvpaxos.api.server", reached("kvpaxos.tap"))  # imported inside makeService
        self.assertIn("kvpaxos.kv.commands", reached("kvpaxos.api.statuses"))
        self.assertTrue(under("kvpaxos.kv.commands", CLIENT_FORBIDDEN))
