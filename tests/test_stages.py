"""The stage scripts stay short: read config, call the library, write outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

STAGES = Path(__file__).resolve().parent.parent / "stages"
MAX_MAIN_LINES = 40


def main_lengths() -> dict[str, int]:
    """Stage file name -> lines of its module-level ``main()``, ``def`` to last line."""
    out = {}
    for path in sorted(STAGES.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert len(mains) == 1, f"{path.name}: expected one module-level main()"
        out[path.name] = mains[0].end_lineno - mains[0].lineno + 1
    return out


def test_every_stage_main_is_at_most_40_lines() -> None:
    lengths = main_lengths()
    assert {"train.py", "evaluate.py"} <= set(lengths)  # the glob found the stages
    too_long = {name: n for name, n in lengths.items() if n > MAX_MAIN_LINES}
    assert not too_long, f"main() longer than {MAX_MAIN_LINES} lines: {too_long}"
