"""The layering of probe, checked: static, pure and fast (ast over the source tree).

Three promises of the README's architecture picture, each a test that names the
offending module and line:

- Only ``probe/net/`` (the network seam) opens connections. A module elsewhere
  that imports ``socket``, ``ssl`` or ``aiohttp``, or calls ``open_connection``,
  ``create_datagram_endpoint`` and their kin, would measure behind the seam's
  back: nothing it did would be recorded in a trace, replayed or scripted in a
  test. The servers (lab, the control helper's and collector's listening sides)
  and the report upload are exempt by name below, each with its reason.
- The product never imports the lab (``probe.lab``): the lab needs root, scapy
  and NetfilterQueue (the ``lab`` extra) and an emulated censor has no place in
  a volunteer's install. ``probe lab`` itself is loaded by name by the root
  command group (``importlib``), which is how the lab plugs in, not an import.
- The import graph of ``probe`` has no cycle. Only module-level imports count
  (those that run when the module is imported, including inside a top-level
  ``try``/``if``); imports inside functions run later and cannot deadlock a
  half-initialised module, and imports under ``if TYPE_CHECKING:`` never run at
  all, so neither is an edge. Importing ``probe.a.b`` is an edge to ``probe.a.b``
  only, not to the package ``probe.a`` (a package importing its own modules is the
  ordinary pattern).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROBE = Path(__file__).resolve().parent.parent / "probe"

NETWORK_MODULES = {"socket", "ssl", "aiohttp"}
NETWORK_CALLS = {
    "open_connection", "create_connection", "create_datagram_endpoint", "start_server",
    "create_server", "open_unix_connection", "start_unix_server", "sock_connect",
}  # not getaddrinfo: the seam has a method of that name (socket.getaddrinfo needs socket)

# Modules outside probe/net/ allowed to open sockets, and why. A path ending in "/"
# covers a package.
NETWORK_EXEMPT = {
    "probe/lab/": "the lab is servers and an emulated censor (injectors, queues, "
                  "observers): it opens sockets by design and is not the product",
    "probe/control/server.py": "the control helper's listening side (aiohttp.web); its "
                               "measurements go through the seam (network_factory)",
    "probe/control/udp_echo.py": "the control helper's UDP echo is a listening server "
                                 "(answers probes' reference flows); it measures nothing",
    "probe/collector/server.py": "the collector is a server: it receives reports",
    "probe/serving/connections.py": "the listening socket both servers share (aiohttp.web "
                                    "behind a connection guard); it measures nothing",
    "probe/spool.py": "uploading reports to the collector is not a measurement: it must "
                      "not be recorded in a trace or replayed, so it stays off the seam",
    "probe/certificates.py": "imports ssl only to find the system's trust store "
                             "(get_default_verify_paths); it opens no connection",
}


@dataclass(frozen=True)
class Module:
    name: str  # probe.net.network
    path: str  # probe/net/network.py
    tree: ast.Module
    is_package: bool


@functools.cache
def modules() -> tuple[Module, ...]:
    found = []
    for file in sorted(PROBE.rglob("*.py")):
        relative = file.relative_to(PROBE.parent)
        parts = list(relative.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        tree = ast.parse(file.read_text(), filename=str(relative))
        found.append(Module(".".join(parts), relative.as_posix(), tree, is_package))
    return tuple(found)


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of what ``from <...> import`` names (relative imports too)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Every module name an import statement may load (``from a import b``: a and a.b)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = _resolve(module, node)
    yield base
    for alias in node.names:
        yield f"{base}.{alias.name}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions or classes'
    methods, not under ``if TYPE_CHECKING:``)."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending += node.body
            pending += node.orelse
        elif isinstance(node, ast.Try):
            pending += [*node.body, *node.orelse, *node.finalbody]
            for handler in node.handlers:
                pending += handler.body
        elif isinstance(node, ast.With):
            pending += node.body
        elif isinstance(node, ast.ClassDef):
            pending += node.body  # a class body runs at import time


def _exempt(path: str) -> str | None:
    for prefix, reason in NETWORK_EXEMPT.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return reason
    return None


def network_offences(module: Module) -> Iterator[str]:
    """Every import of a socket library and every call that opens a connection."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [n.name for n in node.names] if isinstance(node, ast.Import) else [
                _resolve(module, node), *(a.name for a in node.names)]
            for name in names:
                if name.split(".")[0] in NETWORK_MODULES:
                    yield f"{module.path}:{node.lineno} imports {name}"
                elif isinstance(node, ast.ImportFrom) and name in NETWORK_CALLS:
                    yield f"{module.path}:{node.lineno} imports {name}"
        elif isinstance(node, ast.Attribute) and node.attr in NETWORK_CALLS:
            yield f"{module.path}:{node.lineno} calls .{node.attr}"


def test_only_the_network_seam_opens_sockets():
    offences = [
        offence
        for module in modules()
        if not module.path.startswith("probe/net/") and not _exempt(module.path)
        for offence in network_offences(module)
    ]
    assert not offences, (
        "network I/O outside probe/net/ (go through the Network seam, or add a named "
        "exemption with its reason):\n" + "\n".join(offences)
    )


def test_every_exemption_still_names_a_module():
    paths = {m.path for m in modules()}
    stale = [p for p in NETWORK_EXEMPT
             if not (p in paths or (p.endswith("/") and any(q.startswith(p) for q in paths)))]
    assert not stale, f"exemptions for modules that no longer exist: {stale}"


def test_the_product_never_imports_the_lab():
    offences = []
    for module in modules():
        if module.name == "probe.lab" or module.name.startswith("probe.lab."):
            continue
        for node in ast.walk(module.tree):  # function-level imports count too
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in imported_names(module, node):
                if name == "probe.lab" or name.startswith("probe.lab."):
                    offences.append(f"{module.path}:{node.lineno} imports {name}")
                    break
    assert not offences, "the product imports the lab:\n" + "\n".join(offences)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    names = {m.name for m in found}
    graph: dict[str, set[str]] = {m.name: set() for m in found}
    for module in found:
        for node in module_level_imports(module.tree):
            for name in imported_names(module, node):
                if name in names and name != module.name:
                    graph[module.name].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_checks_see_what_they_claim():
    """The checkers themselves: each rule fires on a constructed offender."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import probe.x\n"
        "try:\n    import probe.y\nexcept ImportError:\n    pass\n"
        "def f():\n    import probe.z\n"
    )
    loaded = {n for node in module_level_imports(tree) for n in imported_names(
        Module("probe.m", "probe/m.py", tree, False), node)}
    assert "probe.y" in loaded and "probe.x" not in loaded and "probe.z" not in loaded
    relative = ast.parse("from .network import Network\nfrom .. import lab\n")
    module = Module("probe.net.live", "probe/net/live.py", relative, False)
    names = {n for node in ast.walk(relative) if isinstance(node, ast.ImportFrom)
             for n in imported_names(module, node)}
    assert {"probe.net.network", "probe.lab"} <= names
    sneaky = ast.parse(
        "import socket\nfrom ssl import SSLContext\nfrom asyncio import open_connection\n"
        "async def f(loop):\n    await loop.create_datagram_endpoint(None)\n"
    )
    found = list(network_offences(Module("probe.m", "probe/m.py", sneaky, False)))
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports socket", "imports ssl", "imports open_connection",
        "calls .create_datagram_endpoint",
    ]
