"""The real-data fixture (tests/conftest.py ``shared_mnist``) fetches the dataset the way the
download stage does, from real sources on 127.0.0.1, and fails in one line when none answers."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from mnistflow.config import DatasetSpec, DownloadConfig, config, load_params
from mnistflow.ops.postgres import free_port
from tests.helpers import REPO_ROOT, SHARED_MNIST, fetch_dataset, real_data_sources

pytestmark = pytest.mark.unit

# One quick attempt per source: the sources here answer at once or refuse at once.
FAST = {"connect_timeout": 2, "read_timeout": 2, "retries": 1, "backoff": 0, "file_deadline": 10}


class _Files(http.server.SimpleHTTPRequestHandler):
    served: list[str]

    def do_GET(self) -> None:
        self.served.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_mirror(tiny_mirror: tuple[Path, dict]) -> Iterator[tuple[str, list[str]]]:
    """The tiny dataset's folder served over HTTP on 127.0.0.1: (base URL, paths served)."""
    folder, _ = tiny_mirror
    served: list[str] = []
    handler = partial(type("Files", (_Files,), {"served": served}), directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    httpd.server_close()


def tiny_spec(files: dict[str, dict]) -> DatasetSpec:
    return config({"d": {"mirrors": [], "classes": ["0"], "files": files}}, "d", DatasetSpec)


def download_cfg() -> DownloadConfig:
    params = load_params(REPO_ROOT / "params.yaml")
    return config({"download": {**params["download"], **FAST}}, "download", DownloadConfig)


def test_the_data_comes_from_the_first_source_that_answers_and_stays_cached(
    tiny_mirror: tuple[Path, dict], http_mirror: tuple[str, list[str]], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    url, served = http_mirror
    closed = f"http://127.0.0.1:{free_port()}/"
    sources = [str(tmp_path / "no-such-folder"), closed, url]
    cache = fetch_dataset(tiny_spec(files), sources, download_cfg(), tmp_path / "cache")
    for spec in files.values():
        content = gzip.decompress((cache / spec["name"]).read_bytes())
        assert hashlib.sha256(content).hexdigest() == spec["sha256"]
    assert sorted(served) == sorted(f"/{spec['name']}" for spec in files.values())
    # a second session finds the files in the cache: no source is asked again
    assert fetch_dataset(tiny_spec(files), [closed], download_cfg(), cache) == cache
    assert len(served) == len(files)


def test_no_source_is_one_line_naming_every_source(
    tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    closed = f"http://127.0.0.1:{free_port()}/"
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(pytest.fail.Exception) as failed:
        fetch_dataset(tiny_spec(files), [missing, closed], download_cfg(), tmp_path / "cache")
    message = str(failed.value)
    assert "\n" not in message
    assert missing in message
    assert closed in message
    assert not list((tmp_path / "cache").glob("*.gz"))  # nothing half-written


def test_the_sources_are_the_download_stages_with_the_local_mirror_first() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    params["download"]["mirror"] = "https://params.example/mnist/"
    env = {"MNISTFLOW_MIRROR": "/env/mirror"}
    public = params["datasets"]["mnist"]["mirrors"]
    assert real_data_sources(params, env) == [
        "/env/mirror",
        "https://params.example/mnist/",
        str(SHARED_MNIST),
        *public,
    ]
    assert real_data_sources(load_params(REPO_ROOT / "params.yaml"), {}) == [
        str(SHARED_MNIST),
        *public,
    ]
