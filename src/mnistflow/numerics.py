"""The pinned floating-point environment: the same numbers from every x86-64 CPU with AVX2+FMA.

numpy's bundled OpenBLAS picks its matrix kernels per CPU (DYNAMIC_ARCH), numpy picks its own
SIMD loops per CPU (``exp``, ``log``, ``maximum``... have AVX-512 versions), and the BLAS thread
count changes how a product is split. Each changes the last bits of a fit, and twenty epochs
turn those bits into other weights and another test accuracy. The pin holds all three to one
choice that every CPU of the x86-64-v3 level (AVX2, FMA, BMI1/2...: Intel since Haswell, AMD
since Zen) runs:

- ``OPENBLAS_CORETYPE=Haswell``: OpenBLAS's AVX2+FMA kernels (read when the library loads);
- ``NPY_ENABLE_CPU_FEATURES=X86_V3``: numpy dispatches no SIMD loop above that level (and a
  preset ``NPY_DISABLE_CPU_FEATURES`` is cleared);
- ``OPENBLAS_NUM_THREADS=1``: one BLAS thread by default; the fit uses ``train.threads``.

Each must be in the environment before numpy loads, so :func:`pin` runs when the ``mnistflow``
package is imported (``mnistflow/__init__.py``), before any module of it imports numpy; child
processes (DVC stages, tune workers, servers) inherit the environment. What the environment
held before is kept in ``MNISTFLOW_NUMERICS_PRESET`` and recorded on every run.

A CPU whose flags do not prove the level (older x86, ARM, no ``/proc/cpuinfo``) keeps its own
kernels: forcing a kernel the CPU lacks dies with SIGILL. ``MNISTFLOW_NUMERICS=native`` turns
the pin off (faster on AVX-512 CPUs; results then match only machines of the same kind).

:func:`observe` reads what is really in force (threadpoolctl's kernel, numpy's dispatch), and
:func:`fingerprint` hashes the parts that decide the numbers: the BLAS libraries with their
versions and kernels, numpy's version and SIMD targets, the BLAS thread count and the machine
architecture. The CPU model, its level and the C library are recorded but not hashed, so two
CPUs under the pin share one fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

MODE_ENV = "MNISTFLOW_NUMERICS"  # pinned (default) | native
PRESET_ENV = "MNISTFLOW_NUMERICS_PRESET"  # JSON: what the watched variables held before the pin
MODES = ("pinned", "native")
LEVEL = "x86-64-v3"
# The /proc/cpuinfo flags of x86-64-v3 (abm = LZCNT); OpenBLAS's Haswell kernels need AVX2+FMA.
LEVEL_FLAGS = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})
V4_FLAGS = frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
V2_FLAGS = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})
PINNED: dict[str, str] = {
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_ENABLE_CPU_FEATURES": "X86_V3",
    "OPENBLAS_NUM_THREADS": "1",
}
CLEARED = ("NPY_DISABLE_CPU_FEATURES",)
# Variables that change which kernels or how many threads compute: recorded as preset.
WATCHED = (*PINNED, *CLEARED, "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MKL_CBWR")
# What the pin's kernels report through threadpoolctl, and numpy's dispatch targets it allows.
PINNED_KERNEL = "Haswell"
PINNED_SIMD = frozenset({"X86_V3", "baseline(X86_V2)"})
TAG_PREFIX = "numerics."
FINGERPRINT_TAG = f"{TAG_PREFIX}fingerprint"


class NumericsError(UserError):
    """``MNISTFLOW_NUMERICS`` has a value that is not a mode (exit status 2)."""


@dataclass(frozen=True)
class Plan:
    """What :func:`pin` does to the environment, decided from the CPU and the environment."""

    requested: str  # the mode asked for (MNISTFLOW_NUMERICS, default pinned)
    pinned: bool  # the pin's variables are set
    preset: dict[str, str]  # the watched variables as they were before any pin
    updates: dict[str, str | None] = field(default_factory=dict)  # None: remove the variable
    note: str = ""  # why the pin is off, for the one log line

    def apply(self, environ: MutableMapping[str, str]) -> None:
        """Set and remove the planned variables; keep the preset for child processes."""
        for name, value in self.updates.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        environ[PRESET_ENV] = json.dumps(self.preset, sort_keys=True)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first CPU in ``/proc/cpuinfo`` text (empty if none are listed)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str) -> str:
    """The model name of the first CPU in ``/proc/cpuinfo`` text, else the platform's word."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_level(machine: str, flags: frozenset[str]) -> str:
    """The x86-64 micro-architecture level the flags prove, or the machine name elsewhere."""
    if machine.lower() not in ("x86_64", "amd64"):
        return machine or "unknown"
    if not flags:
        return "x86-64 (flags unknown)"
    if flags >= LEVEL_FLAGS | V2_FLAGS:
        return "x86-64-v4" if flags >= V4_FLAGS else "x86-64-v3"
    return "x86-64-v2" if flags >= V2_FLAGS else "x86-64"


def preset_of(environ: Mapping[str, str]) -> dict[str, str]:
    """The watched variables as the user's environment set them, before any pin.

    A child of a pinned process inherits the pin; the parent's record of the preset
    (``MNISTFLOW_NUMERICS_PRESET``) then says what was there before it.
    """
    if PRESET_ENV in environ:
        try:
            saved = json.loads(environ[PRESET_ENV])
        except json.JSONDecodeError:
            saved = None
        if isinstance(saved, dict):
            return {str(k): str(v) for k, v in saved.items()}
    return {name: environ[name] for name in WATCHED if name in environ}


def plan(environ: Mapping[str, str], machine: str, flags: frozenset[str]) -> Plan:
    """Decide the environment: the pin where the CPU proves the level, else the preset.

    Raises:
        NumericsError: ``MNISTFLOW_NUMERICS`` is neither ``pinned`` nor ``native``.
    """
    requested = environ.get(MODE_ENV, "").strip().lower() or "pinned"
    if requested not in MODES:
        raise NumericsError(f"{MODE_ENV}={environ[MODE_ENV]!r}: expected one of {', '.join(MODES)}")
    preset = preset_of(environ)
    level = cpu_level(machine, flags)
    # Back to what the user's environment had: the watched variables of the preset only.
    restore: dict[str, str | None] = {name: preset.get(name) for name in WATCHED}
    if requested == "native":
        return Plan(requested, False, preset, restore, f"{MODE_ENV}=native")
    if level not in ("x86-64-v3", "x86-64-v4"):
        missing = ", ".join(sorted(LEVEL_FLAGS - flags)) if flags else "flags unknown"
        note = (
            f"this CPU ({level}; {missing}) cannot run the pinned {LEVEL} kernels: it runs its "
            "own, so its results are comparable only with machines of the same kind"
        )
        return Plan(requested, False, preset, restore, note)
    updates: dict[str, str | None] = {**restore, **PINNED}
    updates.update(dict.fromkeys(CLEARED))
    return Plan(requested, True, preset, updates)


@functools.cache
def read_cpuinfo() -> str:
    """``/proc/cpuinfo`` (empty where there is none: macOS, Windows), read once per process:
    the pin at import and every :func:`observe` use the same text."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Pinning:
    """What :func:`pin` did in this process."""

    plan: Plan | None = None
    error: NumericsError | None = None  # a bad MNISTFLOW_NUMERICS, reported by check()
    numpy_first: bool = False  # numpy was loaded before the pin: it could not take effect


def pin(environ: MutableMapping[str, str] | None = None, cpuinfo: str | None = None) -> Pinning:
    """Put the planned environment in force and say what was done. Never raises: a bad
    ``MNISTFLOW_NUMERICS`` is kept for :func:`check` to report at the entry point, where
    logging is set up.

    Args:
        environ: the environment to change (``os.environ``).
        cpuinfo: ``/proc/cpuinfo`` text (read from the system when None).
    """
    environ = os.environ if environ is None else environ
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    try:
        chosen = plan(environ, platform.machine(), cpu_flags(text))
    except NumericsError as exc:
        return Pinning(error=exc)
    chosen.apply(environ)
    return Pinning(plan=chosen, numpy_first="numpy" in sys.modules)


_pinning = Pinning()


def install() -> None:
    """:func:`pin` this process (``import mnistflow`` calls it, once, before numpy loads)."""
    global _pinning
    _pinning = pin()


def check(pinning: Pinning | None = None) -> None:
    """Report the pin's state in one line where it matters (every entry point calls this).

    Raises:
        NumericsError: ``MNISTFLOW_NUMERICS`` has a bad value.
    """
    pinning = _pinning if pinning is None else pinning
    if pinning.error:
        raise pinning.error
    current = pinning.plan
    if current is None:
        return
    if current.note and current.requested == "pinned":
        log.warning("numerics: %s", current.note)
    elif current.note:
        log.info("numerics: %s: the CPU's own kernels, comparable only with its kind", current.note)
    if current.pinned and pinning.numpy_first:
        log.warning(
            "numerics: numpy was loaded before mnistflow, so the pinned kernels are not in "
            "force in this process (import mnistflow first); the run records what was in force"
        )


def _blas_libraries() -> list[dict[str, object]]:
    """threadpoolctl's view of the BLAS libraries loaded (numpy's, and scipy's if loaded)."""
    import numpy  # noqa: F401  (loads its BLAS)
    import scipy.linalg  # noqa: F401  (loads scipy's own, which sklearn uses too)
    from threadpoolctl import threadpool_info

    return [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]


def _numpy_simd() -> list[str]:
    """The dispatch targets numpy's SIMD loops use on this machine (its public introspection)."""
    from numpy.lib.introspect import opt_func_info

    return sorted(
        {
            str(entry["current"])
            for per_type in opt_func_info().values()
            for entry in per_type.values()
        }
    )


def observe() -> dict[str, str]:
    """What is in force in this process, as flat strings (the MLflow tags, without prefix)."""
    import numpy

    text = read_cpuinfo()
    current = _pinning.plan
    blas = _blas_libraries()
    kernels = sorted({str(lib.get("architecture", "?")) for lib in blas})
    simd = _numpy_simd()
    threads = sorted({int(lib.get("num_threads", 0)) for lib in blas})
    pinned = (
        current is not None
        and current.pinned
        and kernels == [PINNED_KERNEL]
        and set(simd) <= PINNED_SIMD
    )
    libc = " ".join(platform.libc_ver()).strip() or "unknown"
    hashed = {
        "blas": ", ".join(
            sorted(
                {
                    f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
                    for lib in blas
                }
            )
        ),
        "numpy": f"{numpy.__version__} simd {'+'.join(simd)}",
        "blas_threads": ",".join(map(str, threads)),
        "machine": platform.machine(),
    }
    preset = current.preset if current else preset_of(os.environ)
    return {
        **hashed,
        "pinned": "true" if pinned else "false",
        "mode": current.requested if current else "unknown",
        "note": current.note if current and current.note else "none",
        "cpu": cpu_model(text),
        "cpu_level": cpu_level(platform.machine(), cpu_flags(text)),
        "libc": libc,
        "preset": "; ".join(f"{k}={v}" for k, v in sorted(preset.items())) or "none",
        "fingerprint": fingerprint(hashed),
    }


def fingerprint(hashed: Mapping[str, str]) -> str:
    """12 hex digits of SHA-256 over the fields that decide the numbers."""
    return hashlib.sha256(json.dumps(dict(hashed), sort_keys=True).encode()).hexdigest()[:12]


def summary(observed: Mapping[str, str]) -> dict[str, str]:
    """The part of :func:`observe` a report shows: pinned or not, and the fingerprint."""
    return {key: observed[key] for key in ("pinned", "fingerprint", "blas", "numpy")}


def describe(summary: Mapping[str, str]) -> str:
    """One sentence for a report: what computed these numbers and who reproduces them."""
    fp = summary.get("fingerprint", "?")
    if summary.get("pinned") == "true":
        return (
            f"pinned to {LEVEL} (OpenBLAS {PINNED_KERNEL}, numpy {'/'.join(sorted(PINNED_SIMD))}"
            f"), fingerprint `{fp}`: every {LEVEL} CPU gives these figures"
        )
    return (
        f"not pinned ({summary.get('blas', '?')}; numpy {summary.get('numpy', '?')}), "
        f"fingerprint `{fp}`: only machines with this fingerprint give these figures"
    )


def tags(observed: Mapping[str, str]) -> dict[str, str]:
    """:func:`observe`'s fields as MLflow tags (``numerics.<field>``)."""
    return {f"{TAG_PREFIX}{key}": value for key, value in observed.items()}


def same_environment(a: Mapping[str, str], b: Mapping[str, str]) -> bool | None:
    """Whether two runs' tags name the same fingerprint; None if either run has none."""
    fa, fb = a.get(FINGERPRINT_TAG), b.get(FINGERPRINT_TAG)
    if not fa or not fb:
        return None
    return fa == fb


def difference_cause(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    """Why two runs' numbers may differ, as far as their floating-point environments tell.

    Args:
        a, b: the runs' MLflow tags.
    """
    fa, fb = a.get(FINGERPRINT_TAG, "none"), b.get(FINGERPRINT_TAG, "none")
    if same_environment(a, b):
        return f"same numerics fingerprint {fa}: a real difference (code, data, params or a bug)"
    return (
        f"another floating-point environment (numerics fingerprint {fa} "
        f"[{a.get(TAG_PREFIX + 'blas', '?')}; {a.get(TAG_PREFIX + 'cpu', '?')}] against {fb} "
        f"[{b.get(TAG_PREFIX + 'blas', '?')}; {b.get(TAG_PREFIX + 'cpu', '?')}]): "
        "last-digit differences are expected; rerun both pinned to compare"
    )
