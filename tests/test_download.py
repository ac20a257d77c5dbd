"""Download against a real HTTP server on 127.0.0.1 (and local folders): mirrors, retries,
timeouts, integrity, and the rule that no invalid file is left in raw_dir."""

from __future__ import annotations

import gzip
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mnistflow.config import DatasetSpec, DownloadConfig, FileSpec
from mnistflow.data.download import (
    DownloadError,
    backoff_delay,
    download_dataset,
    env_mirror,
    fetch_file,
    mirror_order,
    source_for,
    verify_file,
)
from tests.helpers import REPO_ROOT, run, use_tiny_dataset, workspace_env

Route = Callable[[BaseHTTPRequestHandler], None]
NAME = "train-labels-idx1-ubyte.gz"

# Small timeouts keep the failure cases fast; two attempts exercise the retry path.
CFG = DownloadConfig(
    mirror="", connect_timeout=2.0, read_timeout=0.3, retries=2, backoff=0.01, file_deadline=30
)


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer  # type: ignore[assignment]

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        self.server.seen.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class MirrorServer(ThreadingHTTPServer):
    """A real HTTP server with per-path behaviours and a request counter."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.seen: list[str] = []  # request paths in arrival order (shared with SilentServer)
        self.release = threading.Event()  # lets hanging handlers finish at teardown

    def url(self, prefix: str) -> str:
        """Mirror base URL for a path prefix like ``/good/``."""
        return f"http://127.0.0.1:{self.server_address[1]}{prefix}"


@pytest.fixture
def server() -> Iterator[MirrorServer]:
    srv = MirrorServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


# ------------------------------------------------------------------- route behaviours


def serve(body: bytes, content_type: str = "application/gzip") -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return route


def truncated(body: bytes) -> Route:
    """Announce the full length, send half, close the connection."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.close_connection = True

    return route


def hang(server: MirrorServer, after_headers: bytes | None) -> Route:
    """Send nothing (or the headers and ``after_headers``), then stall until teardown."""

    def route(h: BaseHTTPRequestHandler) -> None:
        if after_headers is not None:
            h.send_response(200)
            h.send_header("Content-Length", str(len(after_headers) * 4))
            h.end_headers()
            h.wfile.write(after_headers)
            h.wfile.flush()
        server.release.wait(10)
        h.close_connection = True

    return route


def fail_first(status: int, then: Route) -> Route:
    """Answer ``status`` on the first request, then behave like ``then``."""
    calls = Counter[str]()

    def route(h: BaseHTTPRequestHandler) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            h.send_error(status)
        else:
            then(h)

    return route


# --------------------------------------------------------------------------- helpers


def spec_of(files: dict[str, dict], mirrors: list[str]) -> DatasetSpec:
    raw = {"mirrors": mirrors, "classes": [str(i) for i in range(10)], "files": files}
    return DatasetSpec.from_section(raw, "datasets.tiny")


def file_spec(files: dict[str, dict], name: str = NAME) -> FileSpec:
    (entry,) = [f for f in files.values() if f["name"] == name]
    return FileSpec(**entry)


def assert_raw_dir_clean(raw_dir: Path, files: dict[str, dict]) -> None:
    """raw_dir holds only verified files: no invalid file and no temporary left behind."""
    specs = {f["name"]: FileSpec(**f) for f in files.values()}
    for path in raw_dir.iterdir() if raw_dir.exists() else []:
        assert path.name in specs, f"unexpected file left in raw_dir: {path.name}"
        verify_file(path, specs[path.name])  # raises if invalid


def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------- pure helpers


@pytest.mark.unit
def test_mirror_order_env_then_param_then_dataset() -> None:
    order = mirror_order("/env", "http://param/", ["http://a/", "/env", "", "http://b/"])
    assert order == ["/env", "http://param/", "http://a/", "http://b/"]
    assert mirror_order(None, "", ["http://a/"]) == ["http://a/"]
    # relative folders are anchored at the project root, not a DVC temp workspace's cwd
    anchored = mirror_order("../shared/mnist", "", ["http://a/"], Path("/repo"))
    assert anchored == [str(Path("/repo/../shared/mnist")), "http://a/"]


@pytest.mark.unit
def test_source_for_each_kind(tmp_path: Path) -> None:
    assert source_for("https://h/mnist", "f.gz").url == "https://h/mnist/f.gz"
    assert source_for("https://h/mnist/", "f.gz").url == "https://h/mnist/f.gz"
    assert source_for(str(tmp_path), "f.gz").path == tmp_path / "f.gz"
    assert source_for(tmp_path.as_uri(), "f.gz").path == tmp_path / "f.gz"
    with pytest.raises(ValueError, match="unsupported scheme 'ftp'"):
        source_for("ftp://h/", "f.gz")


@pytest.mark.unit
def test_backoff_doubles() -> None:
    assert [backoff_delay(0.5, a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.unit
def test_env_mirror_new_name_wins_and_old_name_is_an_alias(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="mnistflow.data.download")
    assert env_mirror({"MNISTFLOW_MIRROR": "/new", "MNIST_MIRROR": "/old"}) == "/new"
    assert "environment variable MNISTFLOW_MIRROR: /new" in caplog.text
    assert env_mirror({"MNIST_MIRROR": " /old "}) == "/old"
    assert "environment variable MNIST_MIRROR: /old" in caplog.text
    assert env_mirror({"MNISTFLOW_MIRROR": "", "MNIST_MIRROR": "/old"}) == "/old"
    assert env_mirror({}) is None


# ----------------------------------------------------------------------- HTTP mirrors


@pytest.mark.unit
def test_good_mirror_downloads_and_verifies_all_files(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    for f in files.values():
        server.routes[f"/good/{f['name']}"] = serve((folder / f["name"]).read_bytes())
    raw_dir = tmp_path / "raw"
    paths = download_dataset(spec_of(files, [server.url("/good/")]), raw_dir, CFG, None)
    assert [p.name for p in paths] == [f["name"] for f in files.values()]
    for p in paths:
        assert p.read_bytes() == (folder / p.name).read_bytes()
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(f["name"] for f in files.values())
    assert_raw_dir_clean(raw_dir, files)


@pytest.mark.unit
def test_404_on_first_mirror_then_second_succeeds(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    server.routes[f"/b/{NAME}"] = serve((folder / NAME).read_bytes())
    raw_dir = tmp_path / "raw"
    path = fetch_file(file_spec(files), raw_dir, [server.url("/a/"), server.url("/b/")], CFG)
    assert path.read_bytes() == (folder / NAME).read_bytes()
    assert server.hits[f"/a/{NAME}"] == 1  # a 404 is not retried
    assert server.hits[f"/b/{NAME}"] == 1


@pytest.mark.unit
def test_5xx_is_retried(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    server.routes[f"/m/{NAME}"] = fail_first(503, serve((folder / NAME).read_bytes()))
    path = fetch_file(file_spec(files), tmp_path / "raw", [server.url("/m/")], CFG)
    assert path.exists()
    assert server.hits[f"/m/{NAME}"] == 2


def _one_mirror_failure(
    server: MirrorServer, files: dict, raw_dir: Path, route: Route
) -> tuple[str, float]:
    """Serve ``route`` as the only mirror; return the DownloadError text and the time taken."""
    server.routes[f"/m/{NAME}"] = route
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_file(file_spec(files), raw_dir, [server.url("/m/")], CFG)
    elapsed = time.monotonic() - start
    assert not (raw_dir / NAME).exists()
    assert list(raw_dir.iterdir()) == []  # no temporary file either
    return str(info.value), elapsed


@pytest.mark.unit
def test_flipped_content_byte_is_a_checksum_mismatch_and_not_retried(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    content = bytearray(gzip.decompress((folder / NAME).read_bytes()))
    content[-1] ^= 0x01  # a well-formed gzip of the wrong content
    message, _ = _one_mirror_failure(
        server, files, tmp_path / "raw", serve(gzip.compress(bytes(content)))
    )
    assert "checksum mismatch" in message
    assert server.hits[f"/m/{NAME}"] == 1


@pytest.mark.unit
def test_flipped_gzip_byte_is_rejected(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    data = bytearray((folder / NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    message, _ = _one_mirror_failure(server, files, tmp_path / "raw", serve(bytes(data)))
    assert "corrupt gzip data" in message or "checksum mismatch" in message


@pytest.mark.unit
def test_html_page_instead_of_gzip_is_rejected(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    page = b"<!DOCTYPE html><html><body>Moved to our new site</body></html>"
    message, _ = _one_mirror_failure(server, files, tmp_path / "raw", serve(page, "text/html"))
    assert "not gzip (starts with b'<!DOCTYPE html" in message


@pytest.mark.unit
def test_truncated_transfer_is_retried_then_rejected(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    body = (folder / NAME).read_bytes()
    message, _ = _one_mirror_failure(server, files, tmp_path / "raw", truncated(body))
    assert f"truncated transfer (received {len(body) // 2} of {len(body)} bytes)" in message
    assert "after 2 attempts" in message
    assert server.hits[f"/m/{NAME}"] == CFG.retries


@pytest.mark.unit
@pytest.mark.parametrize("partial", [None, b"\x1f\x8b"], ids=["before-headers", "mid-body"])
def test_hanging_server_times_out(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path, partial: bytes | None
) -> None:
    _, files = tiny_mirror
    message, elapsed = _one_mirror_failure(server, files, tmp_path / "raw", hang(server, partial))
    assert "read timeout (no data for 0.3s)" in message
    assert server.hits[f"/m/{NAME}"] == CFG.retries
    assert elapsed < 5  # two 0.3 s timeouts, not the server's 10 s stall


@pytest.mark.unit
def test_already_valid_file_is_not_downloaded_again(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    server.routes[f"/m/{NAME}"] = serve((folder / NAME).read_bytes())
    raw_dir = tmp_path / "raw"
    fetch_file(file_spec(files), raw_dir, [server.url("/m/")], CFG)
    mtime = (raw_dir / NAME).stat().st_mtime_ns
    fetch_file(file_spec(files), raw_dir, [server.url("/m/")], CFG)
    assert server.hits[f"/m/{NAME}"] == 1
    assert (raw_dir / NAME).stat().st_mtime_ns == mtime


@pytest.mark.unit
def test_invalid_existing_file_is_replaced(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    server.routes[f"/m/{NAME}"] = serve((folder / NAME).read_bytes())
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / NAME).write_bytes(gzip.compress(b"stale content of another dataset"))
    (raw_dir / f".{NAME}.abc123.tmp").write_bytes(b"left by a killed run")
    fetch_file(file_spec(files), raw_dir, [server.url("/m/")], CFG)
    assert server.hits[f"/m/{NAME}"] == 1
    assert [p.name for p in raw_dir.iterdir()] == [NAME]
    assert_raw_dir_clean(raw_dir, files)


@pytest.mark.unit
def test_invalid_existing_file_is_removed_even_when_all_mirrors_fail(
    tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / NAME).write_bytes(b"garbage")
    with pytest.raises(DownloadError):
        fetch_file(file_spec(files), raw_dir, [str(tmp_path / "empty")], CFG)
    assert list(raw_dir.iterdir()) == []


@pytest.mark.unit
def test_all_mirrors_failed_lists_each_mirror_and_reason(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    server.routes[f"/html/{NAME}"] = serve(b"<html>login</html>", "text/html")
    refused = refused_url()
    missing = tmp_path / "no-such-folder"
    mirrors = [server.url("/gone/"), server.url("/html/"), refused, str(missing)]
    raw_dir = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch_file(file_spec(files), raw_dir, mirrors, CFG)
    lines = str(info.value).splitlines()
    assert lines[0] == f"could not download {NAME} from any mirror:"
    assert lines[1] == f"  - {server.url('/gone/')}{NAME}: HTTP 404 Not Found"
    assert lines[2].startswith(f"  - {server.url('/html/')}{NAME}: not gzip")
    assert lines[3] == f"  - {refused}{NAME}: connection refused (after 2 attempts)"
    assert lines[4] == f"  - {missing / NAME}: file not found"
    assert "MNISTFLOW_MIRROR=/path/to/folder" in lines[5]
    assert "MNIST_MIRROR also works" in lines[5]
    assert "download.mirror" in lines[5]
    assert list(raw_dir.iterdir()) == []


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; counts them.

    Each accepted connection is also appended to ``seen`` as ``"hung"`` (pass another
    server's list to get one log of both servers' requests in arrival order).
    """

    def __init__(self, seen: list[str] | None = None) -> None:
        self.seen = [] if seen is None else seen
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hung/"
        self.connections: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)  # kept open: the client waits for an answer
            self.seen.append("hung")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.mark.e2e
@pytest.mark.parametrize("defaults", [False, True], ids=["test-params", "default-params"])
def test_hung_mirror_costs_one_timeout_then_is_tried_last(
    server: MirrorServer,
    tiny_mirror: tuple[Path, dict],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    defaults: bool,
) -> None:
    folder, files = tiny_mirror
    for f in files.values():
        server.routes[f"/good/{f['name']}"] = serve((folder / f["name"]).read_bytes())
    cfg = CFG
    if defaults:  # params.yaml's retries, backoff and deadline; only the read timeout shorter
        section = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["download"]
        cfg = DownloadConfig(**section).model_copy(update={"read_timeout": CFG.read_timeout})
    hung = SilentServer(server.seen)
    raw_dir = tmp_path / "raw"
    try:
        paths = download_dataset(
            spec_of(files, [hung.url, server.url("/good/")]), raw_dir, cfg, None
        )
    finally:
        hung.close()
    assert len(paths) == 4
    assert_raw_dir_clean(raw_dir, files)
    # one timeout at the hung mirror, then straight on to the good one; never back
    names = [f["name"] for f in files.values()]
    assert server.seen == ["hung"] + [f"/good/{n}" for n in names]
    assert caplog.text.count(f"mirror {hung.url} timed out: trying it last") == 1


def hang_first(server: MirrorServer, then: Route) -> Route:
    """Stall on the first request (the client's read timeout ends it), then behave like ``then``."""
    calls = Counter[str]()
    stall = hang(server, None)

    def route(h: BaseHTTPRequestHandler) -> None:
        calls["n"] += 1
        (stall if calls["n"] == 1 else then)(h)

    return route


@pytest.mark.unit
def test_timed_out_mirror_is_retried_only_after_every_other_mirror_failed(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    body = (folder / NAME).read_bytes()
    server.routes[f"/slow/{NAME}"] = hang_first(server, serve(body))
    server.routes[f"/html/{NAME}"] = serve(b"<html>login</html>", "text/html")
    mirrors = [server.url("/slow/"), server.url("/gone/"), server.url("/html/")]
    path = fetch_file(file_spec(files), tmp_path / "raw", mirrors, CFG)
    assert path.read_bytes() == body
    assert server.seen == [f"/slow/{NAME}", f"/gone/{NAME}", f"/html/{NAME}", f"/slow/{NAME}"]


@pytest.mark.unit
def test_hung_only_mirror_gets_all_its_attempts_and_the_error_says_so(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    _, files = tiny_mirror
    cfg = CFG.model_copy(update={"retries": 3})
    hung = SilentServer(server.seen)
    raw_dir = tmp_path / "raw"
    try:
        with pytest.raises(DownloadError) as info:
            fetch_file(file_spec(files), raw_dir, [hung.url, server.url("/gone/")], cfg)
    finally:
        hung.close()
    # first attempt, the other mirror, then the remaining two attempts
    assert server.seen == ["hung", f"/gone/{NAME}", "hung", "hung"]
    lines = str(info.value).splitlines()
    assert lines[1] == f"  - {hung.url}{NAME}: read timeout (no data for 0.3s) (after 3 attempts)"
    assert lines[2] == f"  - {server.url('/gone/')}{NAME}: HTTP 404 Not Found"
    assert list(raw_dir.iterdir()) == []


def trickle(server: MirrorServer, body: bytes, every: float) -> Route:
    """Announce the whole body, then send it one byte every ``every`` seconds."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for byte in body:
            if server.release.is_set():
                break
            try:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            except OSError:  # the client gave up
                break
            time.sleep(every)
        h.close_connection = True

    return route


@pytest.mark.e2e
def test_trickling_mirror_is_abandoned_at_the_file_deadline(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    body = (folder / NAME).read_bytes()
    # 1 byte every 0.2 s never trips the 0.3 s read timeout; only the deadline stops it
    server.routes[f"/m/{NAME}"] = trickle(server, body, every=0.2)
    cfg = CFG.model_copy(update={"file_deadline": 1.0})
    raw_dir = tmp_path / "raw"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_file(file_spec(files), raw_dir, [server.url("/m/")], cfg)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"{server.url('/m/')}{NAME}: deadline of 1s per file passed" in message
    assert server.hits[f"/m/{NAME}"] == 1  # the deadline covers all attempts: no retry
    assert 1.0 <= elapsed < 1.0 + CFG.read_timeout + 1
    assert list(raw_dir.iterdir()) == []


# ----------------------------------------------------------------------- local mirrors


@pytest.mark.unit
@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-url"])
def test_local_folder_mirror(tiny_mirror: tuple[Path, dict], tmp_path: Path, as_uri: bool) -> None:
    folder, files = tiny_mirror
    mirror = folder.as_uri() if as_uri else str(folder)
    raw_dir = tmp_path / "raw"
    download_dataset(spec_of(files, []), raw_dir, CFG, mirror)
    for f in files.values():
        assert (raw_dir / f["name"]).read_bytes() == (folder / f["name"]).read_bytes()
    assert_raw_dir_clean(raw_dir, files)


@pytest.mark.unit
def test_local_mirror_with_bad_file_falls_through_to_next(
    tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / NAME).write_bytes(b"<html>")
    path = fetch_file(file_spec(files), tmp_path / "raw", [str(bad), str(folder)], CFG)
    assert path.read_bytes() == (folder / NAME).read_bytes()


# ------------------------------------------------------------- the stage, end to end


@pytest.mark.e2e
def test_stage_env_mirror_wins_over_param_and_dataset_mirrors(
    server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    for f in files.values():
        body = (folder / f["name"]).read_bytes()
        for prefix in ("/env/", "/param/", "/dataset/"):
            server.routes[f"{prefix}{f['name']}"] = serve(body)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    use_tiny_dataset(files, download={"mirror": server.url("/param/")})(params)
    params["datasets"]["tiny"]["mirrors"] = [server.url("/dataset/")]
    work = tmp_path / "work"
    (work / ".dvc").mkdir(parents=True)  # stages run at a DVC repository's root
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO_ROOT / "dvc.yaml", work / "dvc.yaml")  # what the stage may read
    env = workspace_env()
    env["PYTHONPATH"] = str(REPO_ROOT / "src")

    env["MNIST_MIRROR"] = server.url("/env/")
    run([sys.executable, str(REPO_ROOT / "stages" / "download.py")], work, env)
    assert {p.split("/")[1] for p in server.hits} == {"env"}
    assert sum(server.hits.values()) == 4

    # without the variable, download.mirror comes before the dataset's mirrors
    for p in (work / "data" / "raw").iterdir():
        p.unlink()
    del env["MNIST_MIRROR"]
    run([sys.executable, str(REPO_ROOT / "stages" / "download.py")], work, env)
    assert {p.split("/")[1] for p in server.hits} == {"env", "param"}
    assert_raw_dir_clean(work / "data" / "raw", files)


# ------------------------------------------------------------------------------ HTTPS


def _self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with ``cryptography`` (locked dep)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(
    server: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> MirrorServer:
    """The same server behind TLS, its certificate trusted through SSL_CERT_FILE."""
    import ssl

    cert, key = _self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return server


@pytest.mark.unit
def test_https_mirror_and_read_timeout_over_tls(
    tls_server: MirrorServer, tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, files = tiny_mirror
    body = (folder / NAME).read_bytes()
    tls_server.routes[f"/ok/{NAME}"] = serve(body)
    tls_server.routes[f"/stall/{NAME}"] = hang(tls_server, body[:10])
    base = tls_server.url("/").replace("http://", "https://")
    raw_dir = tmp_path / "raw"
    with pytest.raises(DownloadError, match=r"read timeout \(no data for 0\.3s\)"):
        fetch_file(file_spec(files), raw_dir, [base + "stall/"], CFG)
    assert list(raw_dir.iterdir()) == []
    path = fetch_file(file_spec(files), raw_dir, [base + "ok/"], CFG)
    assert path.read_bytes() == body
