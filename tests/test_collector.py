"""util.collector: the garbage collector paused for short commands, and no collection at exit."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from mnistflow.util.collector import paused_gc
from tests.helpers import REPO_ROOT


@pytest.mark.unit
def test_paused_gc_pauses_inside_and_restores_after() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with paused_gc(pause=False):
        assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("the block failed")
    assert gc.isenabled()


@pytest.mark.unit
def test_paused_gc_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.e2e
def test_no_collection_at_exit_skips_the_shutdown_collection() -> None:
    """A cycle left at exit is finalized by the shutdown's collection, unless frozen."""
    script = textwrap.dedent(
        """
        import sys
        from mnistflow.util.collector import no_collection_at_exit

        class Node:
            def __del__(self):
                sys.stdout.write("finalized\\n")

        node = Node()
        node.me = node
        del node
        if sys.argv[1] == "frozen":
            no_collection_at_exit()
            no_collection_at_exit()  # once is enough; twice is harmless
        sys.stdout.write("exiting\\n")
        """
    )
    outputs = {}
    for mode in ("collected", "frozen"):
        proc = subprocess.run(
            [sys.executable, "-c", script, mode], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        outputs[mode] = proc.stdout
    assert outputs == {"collected": "exiting\nfinalized\n", "frozen": "exiting\n"}
