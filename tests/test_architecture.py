"""The import graph of mpq_rl/, read from the source with ast: floors that never import upward, no circle, and the
run configuration at the edge (docs/architecture.md draws the floors)."""

from __future__ import annotations

import ast
from pathlib import Path

import mpq_rl

PACKAGE = Path(mpq_rl.__file__).parent

FLOORS: tuple[tuple[str, ...], ...] = (
    (
        "mpq_rl",
        "mpq_rl.errors",
        "mpq_rl.io",
        "mpq_rl.imports",
        "mpq_rl.registry",
        "mpq_rl.text_table",
        "mpq_rl.settings",
    ),
    ("mpq_rl.workloads",),
    ("mpq_rl.quantization",),
    ("mpq_rl.dashboards",),
    ("mpq_rl.workloads.workload",),
    ("mpq_rl.hardware",),
    ("mpq_rl.search",),
    ("mpq_rl.envs",),
    ("mpq_rl.agents",),
    ("mpq_rl.config",),
    ("mpq_rl.runs", "mpq_rl.deployment"),
    ("mpq_rl.adapt",),
    ("mpq_rl.cli", "mpq_rl.__main__"),
)
"""Lowest first: a module may import its own floor and the ones below. The longest listed prefix names a module's
floor (``mpq_rl.workloads.workload`` assembles a model with its quantizer settings, so it sits above quantization
while the rest of the workloads sit below)."""

UPWARD_ALLOWED: set[tuple[str, str]] = set()
"""Imports allowed to climb: none (the builders take typed sections; the run layer's assembly takes them out of the
RunConfig)."""

CONFIG_IMPORTERS_MAX = 6
"""Modules that import mpq_rl.config: the command line, adapt's run, and four of the run layer (the trainer, the
comparison, the run folder and the assembly of a workload, problem and environment from a config)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST, typing_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; without ``typing_only``, none under ``if TYPE_CHECKING:``."""
    found = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if not typing_only and isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imports(path: Path, typing_only: bool = True, prefix: str = "mpq_rl") -> set[str]:
    """The modules under ``prefix`` that ``path`` imports, anywhere in it (function bodies included; the imports
    only type checkers run unless ``typing_only`` is False)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text()), typing_only):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {target for target in found if target == prefix or target.startswith(prefix + ".")}


def graph(typing_only: bool = True) -> dict[str, set[str]]:
    return {module_name(path): imports(path, typing_only) for path in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    best = max(
        (
            (len(prefix), level)
            for level, prefixes in enumerate(FLOORS)
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        default=None,
    )
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[1]


def test_no_module_imports_a_floor_above_its_own():
    climbs = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in graph().items()
        for target in targets
        if floor(target) > floor(module) and (module, target) not in UPWARD_ALLOWED
    ]
    assert not climbs, "\n".join(climbs)


def test_the_import_graph_has_no_circle():
    modules = graph(typing_only=False)
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(modules.get(module, ())):
            if target not in modules:
                continue
            assert state.get(target) != 1, "import circle: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [])


def test_few_modules_import_the_run_configuration():
    importers = sorted(module for module, targets in graph().items() if "mpq_rl.config" in targets)
    assert len(importers) <= CONFIG_IMPORTERS_MAX, importers


def test_only_the_agents_import_stable_baselines3():
    importers = {module_name(path) for path in PACKAGE.rglob("*.py") if imports(path, prefix="stable_baselines3")}
    assert importers and all(module.startswith("mpq_rl.agents.") for module in importers), sorted(importers)
