"""The house's shape: subpackages by concern whose imports go one way (data and models at the bottom, training
and deploy above them, reports and the command line on top), no import cycle between modules, nothing in
deploy/ that needs training code, and no module or function that a newcomer cannot read in one sitting."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "hf_spam"

# A module may import modules of its own layer or below. Utilities used everywhere sit at the bottom.
LAYERS = {
    "argtypes": 0,
    "malloc": 0,
    "progress": 0,
    "data": 1,
    "models": 2,
    "evaluation": 3,
    "deploy": 4,
    "training": 5,
    "reports": 6,
    "cli": 7,
    "train": 7,
}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The hf_spam modules `path` imports, at the top or inside functions; not those under `if TYPE_CHECKING:`,
    which only annotations read."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_spam"):
            found.add(node.module)
            for alias in node.names:  # `from hf_spam.data import splits` names a module
                if (
                    (PACKAGE / node.module.removeprefix("hf_spam").strip(".").replace(".", "/") / alias.name)
                    .with_suffix(".py")
                    .is_file()
                ):
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hf_spam")}
    return found - {"hf_spam"}


# spam_metric/ is an `evaluate` metric script, loaded by path (`evaluate.load`), never imported.
MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.parent.name != "spam_metric"}
GRAPH = {name: imports_of(path) & set(MODULES) for name, path in MODULES.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_every_module_belongs_to_a_layer():
    assert all(module == "hf_spam" or module.split(".")[1] in LAYERS for module in MODULES), sorted(MODULES)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "hf_spam"))
def test_imports_go_one_way(module):
    upward = sorted(other for other in GRAPH[module] if layer(other) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports {upward} from above it"


def test_no_import_cycle():
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for other in sorted(GRAPH[module]):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_deploy_needs_no_training_code():
    """Serving a model must not import the trainer, the trunk cache or anything else of training, even
    indirectly: checked on the import graph and in a fresh interpreter."""

    def reachable(module, seen):
        for other in GRAPH[module]:
            if other not in seen:
                seen.add(other)
                reachable(other, seen)
        return seen

    for module in (m for m in GRAPH if m.startswith("hf_spam.deploy.")):
        assert not {m for m in reachable(module, set()) if m.startswith("hf_spam.training")}, module
    code = (
        "import sys, hf_spam.deploy.serve, hf_spam.deploy.export, hf_spam.deploy.classifier; "
        "print(sorted(m for m in sys.modules if m.startswith('hf_spam.training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_modules_and_functions_stay_readable():
    long_modules = {
        name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    long_functions = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long_functions[f"{name}.{node.name}"] = n
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_training_recipe_reads_on_one_screen():
    """`hf_spam/train.py` runs `training.run.train`: parse -> data -> model -> trainer -> evaluate -> save/push,
    each stage a named function, the whole on one screen."""
    source = (PACKAGE / "training" / "run.py").read_text()
    recipe = next(
        node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "train"
    )
    assert recipe.end_lineno - recipe.lineno + 1 <= 60
    body = ast.get_source_segment(source, recipe)
    stages = ["data_stage(", "model_stage(", "trunk_stage(", "SpamTrainer(", "evaluate_run(", "save_run("]
    assert [body.index(stage) for stage in stages] == sorted(body.index(stage) for stage in stages)
