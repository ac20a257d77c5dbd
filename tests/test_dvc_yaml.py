"""dvc.yaml stays the exact pipeline map: each stage depends on exactly the library modules
its script imports (transitively) and on params keys that exist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from mnistflow.config import load_params, section
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.unit

PACKAGE = REPO_ROOT / "src" / "mnistflow"
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def imported_modules(path: Path) -> set[str]:
    """Files of the package imported anywhere in a file (module level or inside functions),
    as repository-relative paths such as ``src/mnistflow/data/idx.py``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistflow"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("mnistflow."))
    files = {PACKAGE.parent / (name.replace(".", "/") + ".py") for name in names}
    return {f.relative_to(REPO_ROOT).as_posix() for f in files if f.exists()}


def closure(script: Path) -> set[str]:
    """Every package file the script needs, following imports between modules."""
    todo, seen = list(imported_modules(script)), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(REPO_ROOT / module))
    return seen


def resolve(text: str, params: dict) -> str:
    """Expand ``${a.b}`` the way DVC templating does (only what dvc.yaml uses)."""
    while "${" in text:
        start = text.index("${")
        end = text.index("}", start)
        text = text[:start] + str(section(params, text[start + 2 : end])) + text[end + 1 :]
    return text


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_are_exactly_the_modules_it_imports(stage: str) -> None:
    spec = STAGES[stage]
    script = f"stages/{stage}.py"
    assert spec["cmd"].endswith(f"python {script}")
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    assert script in deps
    listed = {d for d in deps if d.startswith("src/mnistflow/")}
    assert listed == closure(REPO_ROOT / script), "dvc.yaml deps vs imports of " + script


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_params_exist(stage: str) -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    for key in STAGES[stage].get("params", []):
        assert isinstance(key, str), f"{stage}: a whole params file as params dep: {key}"
        section(params, resolve(key, params))  # raises naming the missing key


def test_params_are_checked_before_any_other_stage() -> None:
    """check_params comes first and reads the whole file (a file dep, so DVC's params views
    keep to the keys stages read); every other stage depends on its constant output, so a
    typo fails before any stage removes its outputs."""
    check = STAGES["check_params"]
    assert next(iter(STAGES)) == "check_params"
    assert "params.yaml" in check["deps"]
    assert "params" not in check
    assert check["outs"] == [{"${paths.check_params}": {"cache": False}}]
    for name, spec in STAGES.items():
        if name != "check_params":
            assert "${paths.check_params}" in spec["deps"], name


@pytest.mark.parametrize("package", ["tuning", "ops"])
@pytest.mark.parametrize(
    "script", sorted((REPO_ROOT / "stages").glob("*.py")), ids=lambda p: p.name
)
def test_no_stage_imports_tuning_or_operations(script: Path, package: str) -> None:
    """A stage has one mode and needs no service: nothing it imports, directly or through
    other modules, comes from ``mnistflow.tuning`` (so no stage can read a trial, report to a
    study or change what it writes for one) or ``mnistflow.ops`` (team server, PostgreSQL,
    sync, UI: editing them never reruns a stage)."""
    prefix = (PACKAGE / package).relative_to(REPO_ROOT).as_posix() + "/"
    needed = closure(script)
    assert needed, f"{script.name}: no package module found; is the import reader broken?"
    assert not [m for m in needed if m.startswith(prefix)], script.name
