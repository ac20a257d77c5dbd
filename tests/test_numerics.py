"""The pinned floating-point environment: the plan per CPU, its one line, what a run records."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from mnistflow import numerics

pytestmark = pytest.mark.unit

# /proc/cpuinfo excerpts: flags as Linux lists them for three kinds of x86-64 CPU.
V2 = "fpu sse sse2 pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm"
V3 = V2 + " avx avx2 fma bmi1 bmi2 f16c abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"


def cpuinfo(flags: str, model: str = "Some CPU") -> str:
    return f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n"


def test_cpu_level_from_the_flags() -> None:
    flags = {name: numerics.cpu_flags(cpuinfo(text)) for name, text in (("v2", V2), ("v3", V3))}
    assert numerics.cpu_level("x86_64", flags["v2"]) == "x86-64-v2"
    assert numerics.cpu_level("x86_64", flags["v3"]) == "x86-64-v3"
    assert numerics.cpu_level("x86_64", numerics.cpu_flags(cpuinfo(V4))) == "x86-64-v4"
    assert numerics.cpu_level("x86_64", frozenset({"avx2"})) == "x86-64"
    assert numerics.cpu_level("aarch64", frozenset()) == "aarch64"
    assert numerics.cpu_model(cpuinfo(V3, "AMD EPYC 7B13")) == "AMD EPYC 7B13"


@pytest.mark.parametrize("flags", [V3, V4])
def test_pin_on_a_cpu_that_proves_the_level(flags: str) -> None:
    environ = {"OPENBLAS_CORETYPE": "SandyBridge", "NPY_DISABLE_CPU_FEATURES": "X86_V3"}
    pinning = numerics.pin(environ, cpuinfo(flags))
    assert pinning.plan is not None
    assert pinning.plan.pinned
    assert environ["OPENBLAS_CORETYPE"] == "Haswell"
    assert environ["NPY_ENABLE_CPU_FEATURES"] == "X86_V3"
    assert environ["OPENBLAS_NUM_THREADS"] == "1"
    assert "NPY_DISABLE_CPU_FEATURES" not in environ
    # what was there before is kept for the record (and for child processes)
    assert json.loads(environ[numerics.PRESET_ENV]) == {
        "OPENBLAS_CORETYPE": "SandyBridge",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3",
    }


@pytest.mark.parametrize(
    ("machine_flags", "missing"),
    [(V2, "avx2"), ("", "flags unknown")],
)
def test_a_cpu_below_the_level_keeps_its_own_kernels_with_one_line(
    machine_flags: str, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"OPENBLAS_L2_SIZE": "2048"}
    pinning = numerics.pin(environ, cpuinfo(machine_flags) if machine_flags else "")
    assert pinning.plan is not None
    assert not pinning.plan.pinned
    # no kernel forced: a CPU without AVX2 would die with SIGILL in the Haswell kernels
    assert "OPENBLAS_CORETYPE" not in environ
    assert "NPY_ENABLE_CPU_FEATURES" not in environ
    assert environ["OPENBLAS_L2_SIZE"] == "2048"
    with caplog.at_level(logging.INFO, logger="mnistflow.numerics"):
        numerics.check(pinning)
    lines = [r for r in caplog.records if r.name == "mnistflow.numerics"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert missing in lines[0].getMessage()
    assert "comparable only with machines of the same kind" in lines[0].getMessage()


def test_native_restores_what_the_user_had_under_a_pinned_parent() -> None:
    parent = {"OPENBLAS_CORETYPE": "Zen"}
    numerics.pin(parent, cpuinfo(V3))
    assert parent["OPENBLAS_CORETYPE"] == "Haswell"
    child = {**parent, numerics.MODE_ENV: "native"}  # a child asked for the CPU's own kernels
    pinning = numerics.pin(child, cpuinfo(V3))
    assert pinning.plan is not None
    assert not pinning.plan.pinned
    assert child["OPENBLAS_CORETYPE"] == "Zen"
    assert "NPY_ENABLE_CPU_FEATURES" not in child
    assert "OPENBLAS_NUM_THREADS" not in child


def test_a_bad_mode_is_one_error_naming_the_variable() -> None:
    environ = {numerics.MODE_ENV: "fast"}
    pinning = numerics.pin(environ, cpuinfo(V3))
    assert "OPENBLAS_CORETYPE" not in environ  # nothing applied
    with pytest.raises(numerics.NumericsError, match="MNISTFLOW_NUMERICS='fast'"):
        numerics.check(pinning)


def test_observe_in_this_process_reports_the_kernel_it_loaded() -> None:
    from threadpoolctl import threadpool_info

    seen = numerics.observe()
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas, "numpy's OpenBLAS is loaded"
    for lib in blas:  # the oracle: threadpoolctl's own report, read here
        assert lib["architecture"] in seen["blas"]
    assert seen["fingerprint"] == numerics.fingerprint(
        {k: seen[k] for k in ("blas", "numpy", "blas_threads", "machine")}
    )
    assert len(seen["fingerprint"]) == 12
    pinned = {lib["architecture"] for lib in blas} == {"Haswell"}
    assert seen["pinned"] == ("true" if pinned else "false")


def test_the_fingerprint_ignores_the_cpu_model_and_changes_with_the_kernel() -> None:
    base = {"blas": "openblas 0.3.31 Haswell", "numpy": "2.4 simd X86_V3", "blas_threads": "1"}
    assert numerics.fingerprint(base) == numerics.fingerprint(dict(base))
    assert numerics.fingerprint(base) != numerics.fingerprint(
        {**base, "blas": "openblas 0.3.31 SkylakeX"}
    )
    a = {numerics.FINGERPRINT_TAG: "aaa", "numerics.cpu": "Intel"}
    b = {numerics.FINGERPRINT_TAG: "aaa", "numerics.cpu": "AMD"}
    assert numerics.same_environment(a, b) is True
    assert "real difference" in numerics.difference_cause(a, b)
    c = {numerics.FINGERPRINT_TAG: "ccc"}
    assert numerics.same_environment(a, c) is False
    assert "aaa" in numerics.difference_cause(a, c)
    assert "ccc" in numerics.difference_cause(a, c)
    assert numerics.same_environment(a, {}) is None


NUMERIC_LIBRARIES = {"numpy", "scipy", "sklearn", "pandas", "mlflow", "optuna", "matplotlib"}


def entry_points() -> list[Path]:
    """Every script a user or DVC runs: the stages and the benchmarks (the CLI is a package)."""
    root = Path(__file__).resolve().parents[1]
    return sorted((root / "stages").glob("*.py")) + sorted((root / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", entry_points(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_entry_point_imports_mnistflow_before_numpy(script: Path) -> None:
    """The pin works only if `import mnistflow` runs before numpy loads (read from the code)."""
    first: dict[str, int] = {}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            first.setdefault(name.split(".")[0], node.lineno)
    numeric = {name: line for name, line in first.items() if name in NUMERIC_LIBRARIES}
    if numeric:
        assert "mnistflow" in first, f"{script.name} imports {sorted(numeric)} but not mnistflow"
        assert first["mnistflow"] < min(numeric.values()), f"{script.name}: mnistflow comes later"
