"""The `mnistflow` command: subcommands end to end on a real store, user errors without traces."""

from __future__ import annotations

import gc
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mnistflow import cli
from tests.helpers import REPO_ROOT, workspace_env
from tests.mlflow_fixtures import Store, copy_store, mnist_like_digits, shared_store

CLI = str(Path(sys.executable).parent / "mnistflow")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory holding the repository's params.yaml."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy2(REPO_ROOT / "params.yaml", folder / "params.yaml")
    return folder


@pytest.fixture
def store(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Store:
    """A writable copy of the shared store, selected by MLFLOW_TRACKING_URI."""
    own = copy_store(shared_store(tmp_path_factory), tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own.uri)
    return own


def _mnistflow(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed entry point as a user would."""
    return subprocess.run(
        [CLI, *args], cwd=cwd, env=workspace_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def listed_commands(help_text: str) -> dict[str, str]:
    """Command -> its help as ``mnistflow --help`` prints it (argparse's layout: a command at
    4 spaces under "positional arguments", its help beside it, wrapped lines deeper)."""
    section = help_text.split("positional arguments:")[1].split("\n\n")[0]
    out: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            name, _, text = line.strip().partition(" ")
            out[name] = text.strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


@pytest.mark.unit
def test_help_lists_every_command_module_and_each_one_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One command per module of mnistflow/cli (wait_queue.py is wait-queue), each with a
    help line, and each listed name is a command that prints its own usage."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = listed_commands(capsys.readouterr().out)
    modules = Path(cli.__file__).parent.glob("*.py")
    expected = {p.stem.replace("_", "-") for p in modules} - {"--init--", "--main--"}
    assert set(listed) == expected
    assert all(len(text.split()) >= 3 for text in listed.values()), listed
    assert "leaderboard" in listed["leaderboard"]
    assert "queue" in listed["wait-queue"]
    for name in listed:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: mnistflow {name} ")


@pytest.mark.unit
def test_only_the_chosen_commands_module_is_set_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.chosen_command(["--params", "p.yaml", "--log-level", "DEBUG", "register"]) == (
        "register"
    )
    assert cli.chosen_command(["--params", "register", "leaderboard"]) == "leaderboard"
    assert cli.chosen_command(["--help"]) is None
    assert cli.chosen_command(["nope"]) is None
    # the chosen command still has its own options
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "--run" in capsys.readouterr().out


@pytest.mark.e2e
def test_missing_params_file_is_exit_2_without_traceback(work: Path) -> None:
    proc = _mnistflow(["--params", "nope.yaml", "leaderboard"], work)
    assert proc.returncode == 2
    assert "nope.yaml: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_missing_params_section_names_the_key(work: Path) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    del params["registry"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _mnistflow(["register"], work)
    assert proc.returncode == 2
    assert "missing key 'registry'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_predict_bad_image_is_exit_2_naming_the_file(work: Path) -> None:
    (work / "scan.png").write_text("not an image")
    proc = _mnistflow(["predict", "scan.png"], work)
    assert proc.returncode == 2
    assert "scan.png: not an image file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.unit
def test_leaderboard_register_predict_end_to_end(
    work: Path, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several commands in one process (a user's shell starts one per command)."""
    monkeypatch.chdir(work)
    assert cli.main(["leaderboard"]) == 0
    assert gc.isenabled()  # paused for the command only (util/collector.py)
    text = (work / "reports" / "leaderboard.md").read_text()
    assert "**Best:** `wide-alpha`" in text
    assert (work / "reports" / "leaderboard.png").stat().st_size > 10_000

    assert cli.main(["register"]) == 0
    best = store.runs["wide-alpha"].run_id
    assert capsys.readouterr().out == (
        f"models:/mnist-mlp@champion\tversion 1\trun {best}\ttest_accuracy 0.9811\n"
    )

    images, labels = mnist_like_digits(3, seed=11)
    names = []
    for i, image in enumerate(images):
        names.append(f"digit{i}.png")
        Image.fromarray(image, mode="L").save(work / names[-1])
    assert cli.main(["predict", *names]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == names
    assert [int(line[1]) for line in lines] == list(labels)
    assert all(0.0 < float(line[2]) <= 1.0 for line in lines)

    assert cli.main(["predict", "--run", store.runs["small"].run_id, names[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{names[0]}\t")

    # params of another dataset: its leaderboard is empty, and no MNIST model serves it
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dataset"] = "fashion-mnist"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, and predict's model loading
    # restores the process's previous global URI (an earlier test's store): select ours again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert cli.main(["leaderboard"]) == 0
    assert "No run has a headline accuracy yet." in (work / "reports/leaderboard.md").read_text()
    assert cli.main(["predict", "--run", store.runs["small"].run_id, names[0]]) == 2
    assert cli.main(["predict", names[0]]) == 2  # no fashion-mnist-mlp@champion
    assert cli.main(["register"]) == 2
    assert capsys.readouterr().out == ""  # nothing predicted, nothing registered


@pytest.mark.e2e
def test_ui_on_a_busy_port_is_a_user_error(work: Path, store: Store) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = workspace_env()
        env["MLFLOW_TRACKING_URI"] = store.uri
        proc = subprocess.run(
            [CLI, "ui", "--port", str(port)], cwd=work, env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "Traceback" not in proc.stderr
