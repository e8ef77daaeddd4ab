"""The package's layering: module imports form no cycle, and every layer imports downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import td3_jax

PACKAGE = Path(td3_jax.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(include_deferred: bool) -> dict[str, set[str]]:
    """td3_jax modules each module imports; deferred (in-function) imports only if asked."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if include_deferred else tree.body
        found = set()
        for node in nodes:
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("td3_jax"):
                # `from pkg import submodule` needs the submodule; `from module import name`, the module.
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            found |= {target for target in targets if target in modules and target != name}
        graph[name] = found
    return graph


def test_module_level_imports_form_no_cycle():
    graph = _imports(include_deferred=False)
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target):] + [target] if target in trail else [name, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_layers_import_downward_only():
    graph = _imports(include_deferred=True)
    assert not graph["td3_jax.errors"], "errors.py sits at the bottom: it imports nothing of td3_jax"
    importers_of_cli = sorted(name for name, targets in graph.items() if "td3_jax.cli" in targets)
    assert importers_of_cli == [], f"only the entry point may import the CLI: {importers_of_cli}"
    for name, targets in graph.items():
        if name.startswith("td3_jax.core"):
            assert all(t.startswith("td3_jax.core") for t in targets), (name, targets)
        if name.startswith(("td3_jax.envs", "td3_jax.replay", "td3_jax.checkpoint")):
            upward = [t for t in targets if t.startswith(("td3_jax.training", "td3_jax.diagnose", "td3_jax.bench"))]
            assert not upward, f"{name} imports the layers above it: {upward}"
