"""Fetch a dataset's files from an ordered list of mirrors, verified by decompressed SHA-256.

A mirror is an http(s) URL (the file URL is the mirror plus the file name), a local folder,
or a ``file://`` URL. The first half of this module is pure helpers (mirror order, URL
building, content hashing, error text); the second half does the I/O (HTTP with timeouts
and retries, local copies) and owns the rule that nothing unverified is left in ``raw_dir``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from mnistflow.util.errors import UserError
from mnistflow.util.fileio import atomic_path
from mnistflow.config import DatasetSpec, DownloadConfig, FileSpec

log = logging.getLogger(__name__)

CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
LOCAL_MIRROR_HINT = (
    "To use a local copy, put the dataset's .gz files in a folder and point at it with "
    "MNIST_MIRROR=/path/to/folder (environment) or download.mirror: /path/to/folder "
    "(params.yaml); either is tried before the public mirrors."
)


class DownloadError(UserError):
    """A file could not be fetched and verified from any mirror."""

    exit_code = 3


class FetchError(Exception):
    """One attempt at one mirror failed.

    Attributes:
        reason: short human-readable cause ("HTTP 404 Not Found", "read timeout ...").
        transient: whether retrying the same mirror may help (timeouts, 5xx, resets).
    """

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Source:
    """Where one file comes from: an http(s) URL or a local path."""

    mirror: str
    url: str | None
    path: Path | None

    def __str__(self) -> str:
        if self.url is not None:
            return self.url
        return str(self.path) if self.path is not None else self.mirror


def mirror_order(
    env_mirror: str | None,
    param_mirror: str,
    dataset_mirrors: Iterable[str],
    root: Path | None = None,
) -> list[str]:
    """The mirrors to try, in order: env ``MNIST_MIRROR``, ``download.mirror``, the dataset's.

    Empty entries are skipped and duplicates keep their first position. A relative folder
    is taken relative to ``root`` (the project root), not the working directory: a queued
    DVC experiment runs in a temporary copy where ``../shared/mnist`` would point elsewhere.
    """
    ordered: list[str] = []
    for mirror in (env_mirror or "", param_mirror, *dataset_mirrors):
        mirror = mirror.strip()
        if root is not None and mirror and "://" not in mirror:
            mirror = str(root / Path(mirror).expanduser())
        if mirror and mirror not in ordered:
            ordered.append(mirror)
    return ordered


def source_for(mirror: str, name: str) -> Source:
    """Resolve a mirror and a file name into a Source.

    Raises:
        ValueError: a URL scheme other than http, https or file.
    """
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        base = mirror if mirror.endswith("/") else mirror + "/"
        return Source(mirror, base + urllib.parse.quote(name), None)
    if parsed.scheme == "file":
        folder = Path(urllib.request.url2pathname(parsed.path))
        return Source(mirror, None, folder / name)
    if "://" in mirror:
        raise ValueError(
            f"mirror {mirror!r}: unsupported scheme {parsed.scheme!r} "
            "(use http://, https://, file:// or a folder path)"
        )
    return Source(mirror, None, Path(mirror).expanduser() / name)


def gz_content_sha256(stream: BinaryIO, name: str) -> str:
    """SHA-256 of the decompressed content of a gzip stream, read in chunks.

    Args:
        stream: a binary file object positioned at the start of the gzip data.
        name: the file name, used in errors.

    Returns:
        The hex digest.

    Raises:
        FetchError: (not transient) not gzip, or a corrupt/truncated gzip stream.
    """
    head = stream.read(2)
    if head != GZIP_MAGIC:
        start = head + stream.read(30)
        raise FetchError(f"not gzip (starts with {start!r})", transient=False)
    stream.seek(0)
    digest = hashlib.sha256()
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            while chunk := gz.read(CHUNK):
                digest.update(chunk)
    except EOFError as exc:
        raise FetchError(f"truncated gzip data ({exc})", transient=False) from exc
    except (OSError, zlib.error) as exc:
        raise FetchError(f"corrupt gzip data ({exc})", transient=False) from exc
    return digest.hexdigest()


def verify_file(path: Path, spec: FileSpec) -> None:
    """Check a local .gz file against its expected decompressed SHA-256.

    Raises:
        FetchError: (not transient) not gzip, corrupt, or a checksum mismatch.
    """
    with path.open("rb") as fh:
        actual = gz_content_sha256(fh, spec.name)
    if actual != spec.sha256:
        raise FetchError(
            f"checksum mismatch (decompressed SHA-256 {actual[:16]}..., "
            f"expected {spec.sha256[:16]}...)",
            transient=False,
        )


def failure_message(name: str, failures: list[tuple[Source, str]]) -> str:
    """The DownloadError text: every mirror tried, why it failed, and the local-mirror hint."""
    if not failures:
        lines = ["  (no mirrors configured: datasets.<name>.mirrors is empty)"]
    else:
        lines = [f"  - {source}: {reason}" for source, reason in failures]
    return (
        f"could not download {name} from any mirror:\n"
        + "\n".join(lines)
        + "\n"
        + (LOCAL_MIRROR_HINT)
    )


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubles each time."""
    return backoff * 2 ** (attempt - 1)


# ------------------------------------------------------------------------------- I/O


class _ReadTimeoutMixin:
    """An http.client connection whose socket switches to the read timeout once connected.

    urllib uses one timeout for both connecting and reading; a slow server and a dead one
    deserve different patience, so the connect timeout applies to connect (and the TLS
    handshake) and the read timeout to every later wait for bytes.
    """

    sock: socket.socket
    read_timeout: float

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)


class _HTTPConnection(_ReadTimeoutMixin, http.client.HTTPConnection):
    def __init__(self, *args, read_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout


class _HTTPSConnection(_ReadTimeoutMixin, http.client.HTTPSConnection):
    def __init__(self, *args, read_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_HTTPConnection, read_timeout=self._read_timeout), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            partial(_HTTPSConnection, read_timeout=self._read_timeout),
            req,
            context=self._context,  # type: ignore[attr-defined]
        )


def _describe_oserror(exc: BaseException, cfg: DownloadConfig, phase: str) -> str:
    """Short text for a socket-level error during ``phase`` ("connect" or "read")."""
    if isinstance(exc, TimeoutError):
        if phase == "connect":
            return f"connect timeout after {cfg.connect_timeout:g}s"
        return f"read timeout (no data for {cfg.read_timeout:g}s)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host name lookup failed ({exc.strerror})"
    return f"connection error ({type(exc).__name__}: {exc})"


def _http_fetch(url: str, dest: Path, cfg: DownloadConfig, name: str) -> None:
    """Stream ``url`` into ``dest`` with a progress bar.

    Raises:
        FetchError: HTTP error status, timeout, connection error or a short transfer.
    """
    opener = urllib.request.build_opener(
        _HTTPHandler(cfg.read_timeout), _HTTPSHandler(cfg.read_timeout)
    )
    request = urllib.request.Request(url, headers={"User-Agent": "mnistflow"})
    try:
        response = opener.open(request, timeout=cfg.connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise FetchError(f"HTTP {exc.code} {exc.reason}", transient) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, BaseException) else OSError(exc.reason)
        # an unknown host name stays unknown; "temporary failure in name resolution" may pass
        unknown_host = isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_NONAME
        raise FetchError(
            _describe_oserror(reason, cfg, "connect"), transient=not unknown_host
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        # urllib does not wrap errors raised while waiting for the response headers
        raise FetchError(_describe_oserror(exc, cfg, "read"), transient=True) from exc

    received = 0
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with dest.open("wb") as fh, _progress(name, expected) as bar:
            while chunk := _read_chunk(response, received, cfg):
                fh.write(chunk)  # a local write error (disk full) is not the mirror's fault
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" at an early close instead of raising, so count ourselves.
    if expected is not None and received < expected:
        raise FetchError(
            f"truncated transfer (received {received} of {expected} bytes)", transient=True
        )


def _read_chunk(response: http.client.HTTPResponse, received: int, cfg: DownloadConfig) -> bytes:
    """The next chunk of a response body (b"" at its end), network errors as FetchError."""
    try:
        return response.read(CHUNK)
    except http.client.IncompleteRead as exc:
        raise FetchError(
            f"truncated transfer (received {received + len(exc.partial)} bytes)",
            transient=True,
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(_describe_oserror(exc, cfg, "read"), transient=True) from exc


def _progress(name: str, total: int | None) -> tqdm:
    """A byte progress bar for one file."""
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _local_fetch(path: Path, dest: Path, name: str) -> None:
    """Copy a file from a local mirror into ``dest``.

    Raises:
        FetchError: (not transient) missing or unreadable source.
    """
    try:
        size = path.stat().st_size
        src = path.open("rb")
    except FileNotFoundError as exc:
        raise FetchError("file not found", transient=False) from exc
    except IsADirectoryError as exc:
        raise FetchError("is a directory, not a file", transient=False) from exc
    except OSError as exc:
        raise FetchError(f"cannot open ({exc.strerror})", transient=False) from exc
    with src, dest.open("wb") as fh, _progress(name, size) as bar:
        while True:
            try:
                chunk = src.read(CHUNK)
            except OSError as exc:
                raise FetchError(f"cannot read ({exc.strerror})", transient=False) from exc
            if not chunk:
                break
            fh.write(chunk)
            bar.update(len(chunk))


def _fetch_once(source: Source, dest: Path, spec: FileSpec, cfg: DownloadConfig) -> None:
    """One attempt: fetch into ``dest`` and verify it; raise FetchError otherwise."""
    if source.url is not None:
        _http_fetch(source.url, dest, cfg, spec.name)
    else:
        assert source.path is not None
        _local_fetch(source.path, dest, spec.name)
    verify_file(dest, spec)


def _try_source(source: Source, target: Path, spec: FileSpec, cfg: DownloadConfig) -> str | None:
    """Fetch one file from one source with retries; rename it to ``target`` only if valid.

    Returns:
        None on success, else the reason the source failed.
    """
    for attempt in range(1, cfg.retries + 1):
        try:
            # atomic_path removes the temporary file on failure and renames it on success
            with atomic_path(target) as tmp:
                _fetch_once(source, tmp, spec, cfg)
        except FetchError as failure:
            if not failure.transient:
                log.warning("%s: %s", source, failure.reason)
                return failure.reason
            if attempt == cfg.retries:
                log.warning("%s: %s (attempt %d/%d)", source, failure.reason, attempt, attempt)
                return f"{failure.reason} (after {cfg.retries} attempts)"
            delay = backoff_delay(cfg.backoff, attempt)
            log.warning(
                "%s: %s (attempt %d/%d), retrying in %.1fs",
                source,
                failure.reason,
                attempt,
                cfg.retries,
                delay,
            )
            time.sleep(delay)
        else:
            return None
    raise AssertionError("unreachable: retries >= 1 is validated in params")


def _remove_stale_temporaries(raw_dir: Path, name: str) -> None:
    """Delete temporary files an interrupted earlier run may have left for ``name``."""
    for stale in raw_dir.glob(f".{name}.*.tmp"):
        log.info("removing leftover temporary file %s", stale)
        stale.unlink(missing_ok=True)


def fetch_file(spec: FileSpec, raw_dir: Path, mirrors: list[str], cfg: DownloadConfig) -> Path:
    """Make ``raw_dir/spec.name`` a verified copy of the file, fetching it if needed.

    An existing file with the right decompressed hash is kept (no network); an invalid
    one is deleted first. Mirrors are tried in order, each with ``cfg.retries`` attempts
    on transient errors.

    Args:
        spec: the file's name and decompressed SHA-256.
        raw_dir: the destination folder.
        mirrors: mirrors in the order to try.
        cfg: timeouts, retries, backoff.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: no mirror produced a valid file; lists each mirror and why.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(raw_dir, spec.name)
    target = raw_dir / spec.name
    if target.exists():
        try:
            verify_file(target, spec)
        except FetchError as failure:
            log.warning("%s: existing file is invalid (%s); removing it", target, failure.reason)
            target.unlink()
        else:
            log.info("%s: already present and verified", target)
            return target

    failures: list[tuple[Source, str]] = []
    for mirror in mirrors:
        try:
            source = source_for(mirror, spec.name)
        except ValueError as exc:
            failures.append((Source(mirror, None, None), str(exc)))
            continue
        reason = _try_source(source, target, spec, cfg)
        if reason is None:
            log.info("%s: downloaded from %s and verified", spec.name, source)
            return target
        failures.append((source, reason))
    raise DownloadError(failure_message(spec.name, failures))


def download_dataset(
    spec: DatasetSpec,
    raw_dir: Path,
    cfg: DownloadConfig,
    env_mirror: str | None,
    root: Path | None = None,
) -> list[Path]:
    """Fetch and verify every file of a dataset into ``raw_dir``.

    Args:
        spec: the dataset's mirrors and files (params ``datasets.<name>``).
        raw_dir: destination folder (params ``paths.raw_dir``).
        cfg: params ``download``.
        env_mirror: the ``MNIST_MIRROR`` environment value, tried first when set.
        root: folder that relative local mirrors are relative to (default: working dir).

    Returns:
        The verified files, in role order.

    Raises:
        DownloadError: a file could not be fetched from any mirror.
    """
    mirrors = mirror_order(env_mirror, cfg.mirror, spec.mirrors, root)
    log.info("mirrors, in order: %s", ", ".join(mirrors) or "(none)")
    return [fetch_file(file_spec, raw_dir, mirrors, cfg) for _, file_spec in spec.files.items()]
