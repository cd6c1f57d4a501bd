"""The shape of the package: every module imports on its own, imports run one way through the layers,
deferred imports say why, modules stay small, and the few tables that must agree do."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffpali"
ENTRY_POINTS = {"train": ROOT / "train.py", "evaluate": ROOT / "evaluate.py"}
MAX_LINES = 400
#: Over MAX_LINES and being shrunk where it is developed (the attention registry); remove once it is.
PENDING_SHRINK: set[str] = set()

#: Layers, lowest first: a module imports diffpali modules of its own layer or below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("diffpali", "diffpali.paths", "diffpali.files", "diffpali.jsonio", "diffpali.console",
                    "diffpali.lambda_history",
                    "diffpali.config", "diffpali.plan")),
    ("core", ("diffpali.attention", "diffpali.branches", "diffpali.towers", "diffpali.metrics", "diffpali.nonfinite",
              "diffpali.generation",
              "diffpali.progress", "diffpali.data", "diffpali.scenes", "diffpali.strategies")),
    ("model", ("diffpali.surgery", "diffpali.ffn", "diffpali.zoo", "diffpali.model", "diffpali.checkpointing",
               "diffpali.lambda_callback", "diffpali.loggers", "diffpali.lightning_module")),
    ("evals and report", ("diffpali.evals", "diffpali.report")),
    ("runner and jobs", ("diffpali.trained_evals", "diffpali.runner", "diffpali.jobs", "diffpali.basecard")),
    ("entry points", tuple(ENTRY_POINTS)),
]
#: Beyond the layers: who must never import whom (prefixes).
FORBIDDEN = [
    ("diffpali.zoo", ("diffpali.evals", "diffpali.report", "diffpali.runner", "diffpali.jobs",
                      "diffpali.lightning_module", "diffpali.basecard")),
    ("diffpali.evals", ("diffpali.report",)),
    ("diffpali.evals.base", ("diffpali.evals.vqa", "diffpali.evals.mmneedle", "diffpali.evals.pope",
                             "diffpali.evals.attention", "diffpali.evals.tasks")),
]


def module_files() -> dict[str, Path]:
    """Every diffpali module by dotted name (a package by its own name), and the two entry points."""
    found = dict(ENTRY_POINTS)
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(diffpali module imported, whether deferred into a function, line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node, parents):
            continue
        deferred, up = False, node
        while up in parents:
            up = parents[up]
            deferred = deferred or isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from . import table1` imports a module; `from .runs import Job` imports from one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found += [(target, deferred, node.lineno) for target in targets if target in known]
    return found


def layer_of(name: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer of tests/test_structure.py: add it to LAYERS"
    return max(matches)[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool, int]]]:
    files = module_files()
    return {name: imports(name, path, set(files)) for name, path in files.items()}


def test_imports_follow_the_layers(graph):
    wrong = [f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]}), line {line}"
             for source, edges in graph.items() for target, _, line in edges if layer_of(target) > layer_of(source)]
    assert not wrong, "\n".join(wrong)


def test_forbidden_imports_are_absent(graph):
    wrong = [f"{source} imports {target}, line {line}" for source, edges in graph.items() for target, _, line in edges
             for importer, banned in FORBIDDEN if source == importer or source.startswith(importer + ".")
             if any(target == b or target.startswith(b + ".") for b in banned)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle(graph):
    """Among the imports that run when a module loads, none leads back to where it started."""
    loading = {source: {target for target, deferred, _ in edges if not deferred} for source, edges in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(loading.get(name, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(loading):
        if name not in state:
            visit(name, [name])


def test_every_deferred_import_says_why(graph):
    """An import inside a function is for a heavy or optional dependency, with the reason on its line or above."""
    silent = []
    for path in module_files().values():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))):
                above = node.lineno - 2  # a group of imports may share the comment above its first line
                while above > 0 and lines[above].strip().startswith(("import ", "from ")):
                    above -= 1
                if "#" not in lines[node.lineno - 1] and not lines[above].strip().startswith("#"):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, "deferred imports without a reason:\n" + "\n".join(sorted(set(silent)))


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """Each module is imported first, in a process that has loaded no diffpali module (forked from one that
    loaded only third-party libraries), so an import that works only after another module has loaded fails."""
    names = [name for name in module_files() if name not in ENTRY_POINTS]
    script = (
        "import importlib, os, sys, traceback\n"
        "import torch, transformers, lightning, peft, datasets, hydra, omegaconf, PIL  # third-party only\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    if os.waitpid(pid, 0)[1] != 0:\n"
        "        failed.append(name)\n"
        "print('failed:', ' '.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


@pytest.mark.parametrize("module", ["diffpali.paths", "diffpali.config", "diffpali.jobs", "diffpali.report.__main__"])
def test_finding_folders_and_checking_configs_load_no_torch(module):
    """train.py checks the config (diffpali.config, diffpali.jobs) before torch loads; finding a folder never
    needs it; the report reads run directories without it."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_no_module_is_over_400_lines():
    sources = [*PACKAGE.rglob("*.py"), *ENTRY_POINTS.values(), *(ROOT / "benchmarks").glob("*.py"),
               *(ROOT / "scripts").glob("*.py")]
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in sources}
    over = {name: n for name, n in long.items() if n > MAX_LINES and name not in PENDING_SHRINK}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_task_table_serves_every_eval_task_the_config_allows():
    from diffpali.config import EVAL_TASKS
    from diffpali.evals.tasks import TASKS, task_runner

    assert set(TASKS) == set(EVAL_TASKS)
    assert {path.stem for path in (ROOT / "conf" / "eval").glob("*.yaml")} == set(EVAL_TASKS)
    with pytest.raises(ValueError, match="eval.task='nope': unknown task"):
        task_runner("nope")


def test_every_trainer_setting_is_an_argument_of_lightnings_trainer():
    """runner.train passes the trainer config to lightning.Trainer whole (``**asdict(cfg.trainer)``)."""
    import lightning as L

    from diffpali.config import TrainerConfig

    accepted = set(inspect.signature(L.Trainer.__init__).parameters)
    assert {f.name for f in fields(TrainerConfig)} <= accepted
