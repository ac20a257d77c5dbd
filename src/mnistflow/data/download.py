"""Fetch a dataset's files from an ordered list of mirrors, verified by decompressed SHA-256.

A mirror is an http(s) URL (the file URL is the mirror plus the file name), a local folder,
or a ``file://`` URL. The first half of this module is pure helpers (mirror order, URL
building, content hashing, error text); the second half does the I/O (HTTP through urllib3
with connect/read timeouts, retries, local copies) and owns the rule that nothing unverified
is left in ``raw_dir``.

Hung mirrors cost little: a timeout (connect, read, or the per-file deadline
``download.file_deadline`` that also stops a server trickling bytes) moves to the next mirror
at once, without retrying the same mirror, and the mirror is skipped for the rest of the run's
files. A mirror that timed out is come back to, with its remaining attempts, only when no other
mirror produced the file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import urllib3
from tqdm import tqdm

from mnistflow.config import DatasetSpec, DownloadConfig, FileSpec
from mnistflow.util.errors import UserError
from mnistflow.util.fileio import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
# The environment variable naming a mirror tried first; the second name is the older alias.
MIRROR_ENV = "MNISTFLOW_MIRROR"
MIRROR_ENV_ALIAS = "MNIST_MIRROR"
LOCAL_MIRROR_HINT = (
    "To use a local copy, put the dataset's .gz files in a folder and point at it with "
    f"{MIRROR_ENV}=/path/to/folder (environment; {MIRROR_ENV_ALIAS} also works) or "
    "download.mirror: /path/to/folder (params.yaml); either is tried before the public mirrors."
)


class DownloadError(UserError):
    """A file could not be fetched and verified from any mirror."""

    exit_code = 3


class FetchError(Exception):
    """One attempt at one mirror failed.

    Attributes:
        reason: short human-readable cause ("HTTP 404 Not Found", "read timeout ...").
        transient: whether retrying the same mirror may help (timeouts, 5xx, resets).
        timeout: the mirror did not answer in time (connect, read or the file deadline);
            it is then skipped for the remaining files.
        resume_at: the attempt to make when the mirror is come back to after the others
            (set when a timeout cut its attempts short); None: nothing left to try.
    """

    def __init__(
        self, reason: str, transient: bool, timeout: bool = False, resume_at: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.timeout = timeout
        self.resume_at = resume_at


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


def env_mirror(environ: Mapping[str, str] | None = None) -> str | None:
    """The mirror named in the environment: ``MNISTFLOW_MIRROR``, else ``MNIST_MIRROR``.

    Logs which variable was used; None when neither is set (or both are empty).
    """
    environ = os.environ if environ is None else environ
    for var in (MIRROR_ENV, MIRROR_ENV_ALIAS):
        value = environ.get(var, "").strip()
        if value:
            log.info("mirror from environment variable %s: %s", var, value)
            return value
    return None


def mirror_order(
    env_mirror: str | None,
    param_mirror: str,
    dataset_mirrors: Iterable[str],
    root: Path | None = None,
) -> list[str]:
    """The mirrors to try, in order: env (:func:`env_mirror`), ``download.mirror``, the dataset's.

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

# No retries inside urllib3 (``_try_source`` is the one retry loop: it also covers failures
# in the middle of a body, which urllib3's Retry cannot), but redirects are followed.
_NO_RETRIES = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)


def _pool(url: str) -> urllib3.PoolManager:
    """A connection pool for ``url``, through the proxy of ``http(s)_proxy`` if one applies.

    urllib3's default TLS context trusts the system store (and ``SSL_CERT_FILE``).
    """
    parsed = urllib.parse.urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        return urllib3.ProxyManager(proxy)
    return urllib3.PoolManager()


def _network_failure(exc: BaseException, cfg: DownloadConfig) -> FetchError:
    """A urllib3 error as a FetchError: short reason, transient or not, a timeout or not."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        cause = exc.__cause__
        # an unknown host name stays unknown; "temporary failure in name resolution" may pass
        unknown = isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME
        detail = cause.strerror if isinstance(cause, socket.gaierror) else exc
        return FetchError(f"host name lookup failed ({detail})", transient=not unknown)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        if isinstance(exc.__cause__, ConnectionRefusedError):
            return FetchError("connection refused", transient=True)
        return FetchError(f"connection error ({exc})", transient=True)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        reason = f"connect timeout after {cfg.connect_timeout:g}s"
        return FetchError(reason, transient=True, timeout=True)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        reason = f"read timeout (no data for {cfg.read_timeout:g}s)"
        return FetchError(reason, transient=True, timeout=True)
    return FetchError(f"connection error ({type(exc).__name__}: {exc})", transient=True)


def _http_fetch(url: str, dest: Path, cfg: DownloadConfig, name: str, deadline: float) -> None:
    """Stream ``url`` into ``dest`` with a progress bar, giving up at ``deadline`` (monotonic).

    Raises:
        FetchError: HTTP error status, timeout, connection error, a short transfer or the
            deadline passed.
    """
    try:
        response = _pool(url).request(
            "GET",
            url,
            headers={"User-Agent": "mnistflow"},
            timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            retries=_NO_RETRIES,
            preload_content=False,
            decode_content=False,  # the .gz bytes as served, whatever Content-Encoding says
        )
    except urllib3.exceptions.HTTPError as exc:
        raise _network_failure(exc, cfg) from exc
    try:
        if response.status >= 400:
            transient = response.status >= 500 or response.status in (408, 429)
            raise FetchError(f"HTTP {response.status} {response.reason}", transient)
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with dest.open("wb") as fh, _progress(name, expected) as bar:
            # read1: whatever has arrived, so a server trickling bytes meets the deadline
            while chunk := _read_chunk(response, received, expected, cfg, deadline):
                fh.write(chunk)  # a local write error (disk full) is not the mirror's fault
                received += len(chunk)
                bar.update(len(chunk))
    finally:
        response.release_conn()
    if expected is not None and received < expected:
        raise FetchError(
            f"truncated transfer (received {received} of {expected} bytes)", transient=True
        )


def _read_chunk(
    response: urllib3.BaseHTTPResponse,
    received: int,
    expected: int | None,
    cfg: DownloadConfig,
    deadline: float,
) -> bytes:
    """The bytes that arrived next (b"" at the end), failures and the deadline as FetchError."""
    if time.monotonic() > deadline:
        raise FetchError(
            f"deadline of {cfg.file_deadline:g}s per file passed "
            f"({received} bytes received; download.file_deadline)",
            transient=False,
            timeout=True,
        )
    try:
        return response.read1(CHUNK, decode_content=False)
    except (urllib3.exceptions.IncompleteRead, urllib3.exceptions.ProtocolError) as exc:
        if expected is not None:
            reason = f"truncated transfer (received {received} of {expected} bytes)"
            raise FetchError(reason, transient=True) from exc
        raise _network_failure(exc, cfg) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _network_failure(exc, cfg) from exc


def _progress(name: str, total: int | None) -> tqdm:
    """A byte progress bar for one file (none when stderr is not a terminal: a log file)."""
    return tqdm(
        total=total,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=None,
    )


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


def _fetch_once(
    source: Source, dest: Path, spec: FileSpec, cfg: DownloadConfig, deadline: float
) -> None:
    """One attempt: fetch into ``dest`` and verify it; raise FetchError otherwise."""
    if source.url is not None:
        _http_fetch(source.url, dest, cfg, spec.name, deadline)
    else:
        assert source.path is not None
        _local_fetch(source.path, dest, spec.name)
    verify_file(dest, spec)


def _try_source(
    source: Source,
    target: Path,
    spec: FileSpec,
    cfg: DownloadConfig,
    attempts: range,
    stop_on_timeout: bool,
) -> FetchError | None:
    """Fetch one file from one source with retries; rename it to ``target`` only if valid.

    All attempts of this call together get ``cfg.file_deadline`` seconds.

    Args:
        attempts: the attempt numbers to make (1-based, out of ``cfg.retries``).
        stop_on_timeout: return after a timeout instead of retrying (other mirrors remain).

    Returns:
        None on success, else why the source failed (the reason names the attempts).
    """
    deadline = time.monotonic() + cfg.file_deadline
    for attempt in attempts:
        try:
            # atomic_path removes the temporary file on failure and renames it on success
            with atomic_path(target) as tmp:
                _fetch_once(source, tmp, spec, cfg, deadline)
        except FetchError as failure:
            if not failure.transient:
                log.warning("%s: %s", source, failure.reason)
                return failure
            if failure.timeout and stop_on_timeout and attempt < cfg.retries:
                log.warning(
                    "%s: %s (attempt %d/%d), trying the next mirror first",
                    source,
                    failure.reason,
                    attempt,
                    cfg.retries,
                )
                reason = f"{failure.reason} (attempt {attempt} of {cfg.retries})"
                return FetchError(reason, transient=True, timeout=True, resume_at=attempt + 1)
            if attempt == cfg.retries:
                log.warning("%s: %s (attempt %d/%d)", source, failure.reason, attempt, attempt)
                reason = f"{failure.reason} (after {cfg.retries} attempts)"
                return FetchError(reason, transient=True, timeout=failure.timeout)
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
    raise AssertionError("unreachable: the last attempt returns")


def _remove_stale_temporaries(raw_dir: Path, name: str) -> None:
    """Delete temporary files an interrupted earlier run may have left for ``name``."""
    for stale in raw_dir.glob(f".{name}.*.tmp"):
        log.info("removing leftover temporary file %s", stale)
        stale.unlink(missing_ok=True)


def fetch_file(
    spec: FileSpec,
    raw_dir: Path,
    mirrors: list[str],
    cfg: DownloadConfig,
    timed_out: set[str] | None = None,
) -> Path:
    """Make ``raw_dir/spec.name`` a verified copy of the file, fetching it if needed.

    An existing file with the right decompressed hash is kept (no network); an invalid
    one is deleted first. Mirrors are tried in order, each with ``cfg.retries`` attempts
    on transient errors, all within ``cfg.file_deadline`` seconds. A timeout moves on to
    the next mirror at once; the mirrors that timed out (now or on an earlier file) are
    come back to, in order, only when no other mirror produced the file.

    Args:
        spec: the file's name and decompressed SHA-256.
        raw_dir: the destination folder.
        mirrors: mirrors in the order to try.
        cfg: timeouts, retries, backoff, deadline.
        timed_out: mirrors that timed out earlier in this run: left for last, and a mirror
            that times out now is added (shared between the files of one download).

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

    timed_out = set() if timed_out is None else timed_out
    failures: dict[str, tuple[Source, str]] = {}
    # mirror -> the attempts still left to it when it comes back last (after a timeout)
    deferred: dict[str, range] = {}
    for mirror in mirrors:
        try:
            source = source_for(mirror, spec.name)
        except ValueError as exc:
            failures[mirror] = (Source(mirror, None, None), str(exc))
            continue
        if mirror in timed_out:
            log.info("%s: left for last (it timed out on an earlier file)", source)
            deferred[mirror] = range(1, cfg.retries + 1)
            continue
        failure = _try_source(source, target, spec, cfg, range(1, cfg.retries + 1), True)
        if failure is None:
            log.info("%s: downloaded from %s and verified", spec.name, source)
            return target
        failures[mirror] = (source, failure.reason)
        if failure.timeout:
            log.warning("mirror %s timed out: trying it last from now on", mirror)
            timed_out.add(mirror)
            if failure.resume_at is not None:
                deferred[mirror] = range(failure.resume_at, cfg.retries + 1)
    for mirror, attempts in deferred.items():
        source = source_for(mirror, spec.name)
        log.warning("%s: no other mirror has the file; retrying this one", source)
        failure = _try_source(source, target, spec, cfg, attempts, False)
        if failure is None:
            log.info("%s: downloaded from %s and verified", spec.name, source)
            return target
        failures[mirror] = (source, failure.reason)
    raise DownloadError(failure_message(spec.name, [failures[m] for m in mirrors if m in failures]))


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
        env_mirror: the environment's mirror (:func:`env_mirror`), tried first when set.
        root: folder that relative local mirrors are relative to (default: working dir).

    Returns:
        The verified files, in role order.

    Raises:
        DownloadError: a file could not be fetched from any mirror.
    """
    mirrors = mirror_order(env_mirror, cfg.mirror, spec.mirrors, root)
    log.info("mirrors, in order: %s", ", ".join(mirrors) or "(none)")
    timed_out: set[str] = set()
    return [fetch_file(f, raw_dir, mirrors, cfg, timed_out) for _, f in spec.files.items()]
