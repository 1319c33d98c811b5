"""The arrows between the project's modules, read from their source with `ast` (nothing is imported).

Every import counts, also one inside a function: a lazy import is still an arrow.
Rules (docs/architecture.md): no cycles; the library (src/difflab) never imports flows, tasks or ops,
except the CLI that starts them; nothing outside the CLI imports it; only the `tracking` package and the
CLI import MLflow or Prefect in the library (the CLI is the package src/difflab/cli/: every module in it);
`errors` is below `tracking`; `tracking` never imports the page, and the page renders without `tracking`
(only `page.gather` reads runs through it); ops/runs.py and ops/stack.py do not import each other;
the math modules never reach the typed config or pydantic, not even through another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"difflab": ROOT / "src" / "difflab", "flows": ROOT / "flows", "tasks": ROOT / "tasks",
            "ops": ROOT / "ops"}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = (pkg, *path.relative_to(folder).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks: imports for annotations, never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (getattr(node.test, "id", None) or getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imported_names(name: str, path: Path, runtime_only: bool = False) -> set[str]:
    """Every dotted name an import statement in the file names (relative imports resolved); with runtime_only,
    not those under `if TYPE_CHECKING:`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


CLI = "difflab.cli"


def _in_cli(module: str) -> bool:
    """The CLI package or a module in it."""
    return module == CLI or module.startswith(CLI + ".")


def _project_module(dotted: str) -> str | None:
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


IMPORTS = {m: _imported_names(m, p) for m, p in MODULES.items()}
EDGES = {m: {t for n in names if (t := _project_module(n)) and t != m} for m, names in IMPORTS.items()}
RUNTIME_IMPORTS = {m: _imported_names(m, p, runtime_only=True) for m, p in MODULES.items()}
RUNTIME_EDGES = {m: {t for n in names if (t := _project_module(n)) and t != m} for m, names in RUNTIME_IMPORTS.items()}
"""What loading a module really imports: every import but the annotation-only ones under `if TYPE_CHECKING:`."""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_every_package():
    assert {"difflab.ddpm", "difflab.cli", "flows.part_b", "tasks.training", "ops.runs", "ops.stack"} <= set(MODULES)
    assert "difflab.ddpm" in EDGES["difflab.sampling"] and "flows.part_b" in EDGES["flows.pipeline"]


def test_no_import_cycle_among_project_modules():
    assert _cycles(EDGES) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("difflab") and not _in_cli(m)))
def test_the_library_does_not_import_flows_tasks_or_ops(module):
    upward = {t for t in EDGES[module] if t.split(".")[0] in ("flows", "tasks", "ops")}
    assert not upward, f"{module} imports {sorted(upward)}"


def test_nothing_in_the_project_imports_the_cli():
    assert sorted(m for m, targets in EDGES.items() if not _in_cli(m) and any(map(_in_cli, targets))) == []


def test_only_tracking_and_the_cli_import_mlflow_or_prefect_in_the_library():
    offenders = {m for m, names in IMPORTS.items() if m.startswith("difflab") and not _in(m, "difflab.tracking") and not _in_cli(m)
                 and any(n.split(".")[0] in ("mlflow", "prefect") for n in names)}
    assert offenders == set()


def test_the_cli_rules_cover_every_module_of_the_cli_package():
    """The CLI is a package: its modules are the CLI (they may start flows), and no library module is."""
    cli_modules = {m for m in MODULES if _in_cli(m)}
    assert {CLI, "difflab.cli.failures", "difflab.cli.prefect_server"} <= cli_modules
    assert not _in_cli("difflab.client") and not _in_cli("difflab.config")
    assert any(t.startswith("flows") or t.startswith("ops") for m in cli_modules for t in IMPORTS[m])


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_tracking_package_is_split_and_covered_by_the_mlflow_rule():
    """The rule above covers every module of the package, not only its __init__."""
    assert {"difflab.tracking", "difflab.tracking.store", "difflab.tracking.runs", "difflab.tracking.log",
            "difflab.tracking.query", "difflab.tracking.models"} <= set(MODULES)
    assert any(n.split(".")[0] == "mlflow" for n in IMPORTS["difflab.tracking.store"])


def test_tracking_never_imports_the_page_and_the_page_renders_without_tracking():
    tracking_mods = [m for m in MODULES if _in(m, "difflab.tracking")]
    assert {t for m in tracking_mods for t in EDGES[m] if _in(t, "difflab.page")} == set()
    renderers = [m for m in MODULES if _in(m, "difflab.page") and m != "difflab.page.gather"]
    assert "difflab.page.render" in renderers
    assert {m for m in renderers for t in EDGES[m] if _in(t, "difflab.tracking")} == set()


def test_layer_arrows_named_in_the_design():
    assert "difflab.tracking" not in EDGES["difflab.errors"]
    assert not {t for t in EDGES["difflab.names"]}  # names are below everything: writers and readers import them
    assert "ops.stack" not in EDGES["ops.runs"] and "ops.runs" not in EDGES["ops.stack"]
    assert not {t for m in MODULES if m.startswith("tasks") for t in EDGES[m] if t.startswith("flows")}


MAX_LINES = 450
"""No Python file in src/, tasks/, flows/ or ops/ is longer (issue 18)."""
def test_no_python_file_exceeds_the_line_limit():
    lines = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = {m: n for m, n in lines.items() if n > MAX_LINES}
    assert over == {}, f"over {MAX_LINES} lines: {over}; split them (docs/architecture.md)"


def test_a_flow_file_run_as_a_script_is_the_cli_command():
    """`python flows/part_b.py ARGS` is `difflab part-b ARGS` without the flow importing the CLI."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    res = subprocess.run([sys.executable, str(ROOT / "flows" / "part_b.py"), "--profile", "tiny", "--print-config"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["profile"] == "tiny"  # `difflab part-b`'s own option, parsed by the CLI


MATH_MODULES = ("difflab.unet", "difflab.ddpm", "difflab.sampling", "difflab.train", "difflab.fastpath",
                "difflab.metrics", "difflab.judge", "difflab.spec", "difflab.edits", "difflab.generator")
"""Plain PyTorch taking plain dataclasses (fastpath.Speed, judge.JudgeSettings); the pydantic config is
converted at the edges (stages, planning, tasks). edits/* is every module under difflab.edits; the generator
is the served model's code (its stage lookup goes through stages.py, whose config imports are annotations)."""


def _reachable(module: str, edges: dict[str, set[str]] | None = None) -> dict[str, str]:
    """Every project module reachable from `module` at run time (or along `edges`), each with the module that
    imports it (for the message)."""
    edges = RUNTIME_EDGES if edges is None else edges
    seen, todo = {module: ""}, [module]
    while todo:
        m = todo.pop()
        for t in edges.get(m, ()):
            if t not in seen:
                seen[t] = m
                todo.append(t)
    return seen


def _path_to(seen: dict[str, str], target: str) -> str:
    chain = [target]
    while seen[chain[-1]]:
        chain.append(seen[chain[-1]])
    return " -> ".join(reversed(chain))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(MATH_MODULES)))
def test_the_math_modules_never_reach_the_config_or_pydantic(module):
    seen = _reachable(module)
    config = sorted(m for m in seen if m == "difflab.config" or m.startswith("difflab.config."))
    assert not config, f"{module} reaches the typed config: {_path_to(seen, config[0])}"
    pydantic = sorted(m for m in seen if any(n.split(".")[0] == "pydantic" for n in RUNTIME_IMPORTS[m]))
    assert not pydantic, f"{module} reaches pydantic: {_path_to(seen, pydantic[0])} imports pydantic"


def test_the_math_rule_sees_a_config_import():
    """The rule above would catch a math module importing the config through another module."""
    seen = _reachable("difflab.planning")
    assert "difflab.config" in seen and any(m.startswith("difflab.config.") for m in seen)
    assert "difflab.config" in _reachable("difflab.stages", EDGES)  # an annotation-only import is still an arrow
    assert "difflab.config" not in _reachable("difflab.stages")  # ... but not one that runs
    assert _type_checking_only(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pydantic\n"))
    assert {m for m in MODULES if m.startswith(MATH_MODULES)} >= {"difflab.ddpm", "difflab.edits.algorithms",
                                                                   "difflab.judge", "difflab.train"}


def test_importing_the_math_loads_no_pydantic():
    """The same rule, run: a fresh interpreter importing every math module (the served generator included)."""
    import os
    import subprocess
    import sys

    mods = sorted(m for m in MODULES if m.startswith(MATH_MODULES))
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m.startswith('difflab.config')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
