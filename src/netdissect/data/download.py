"""Getting Broden: a resumable, verified HTTP download and a safe, atomic extraction.

The Broden server has been unreliable for years, and the archives are large (about 1 GB for
broden1_224), so a download must survive cut connections and killed processes: bytes are
appended to ``DIR.zip.part`` and every retry asks only for the rest (an HTTP Range request,
guarded by ``If-Range`` so a file changed on the server restarts instead of being spliced).
The size announced by the server (Content-Length / Content-Range) and an optional sha256 are
checked before anything is extracted.  A zip is foreign input: every member is checked before
the first byte is written (no absolute path, no ``..``, no symlink or device), and the dataset
is extracted into a temporary directory beside DIR that is renamed into place only when
complete, so DIR is either absent or whole.  Only the standard library speaks HTTP here.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional, Tuple, Union

from netdissect.atomic import atomic_path
from netdissect.errors import DatasetError, DownloadError, NetDissectError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one download at a time is on the user
    fcntl = None

__all__ = ["BRODEN_VERSIONS", "broden_url", "RetryPolicy", "download", "safe_members",
           "extract_dataset_zip", "fetch_broden", "FetchResult"]

#: The released Broden sizes (images size x size, masks size // 2), as served by the authors.
BRODEN_VERSIONS = ("broden1_224", "broden1_227", "broden1_384")
BRODEN_BASE_URL = "http://netdissect.csail.mit.edu/data/"
_CHUNK = 1 << 20
_EXTRACT_MARK = ".netdissect-extracting"


def broden_url(version: str) -> str:
    """The official URL of a Broden release (CSAILVision/NetDissect script/dlbroden.sh)."""
    if version not in BRODEN_VERSIONS:
        raise NetDissectError(f"unknown Broden version {version!r}; choose one of "
                              f"{', '.join(BRODEN_VERSIONS)}")
    return f"{BRODEN_BASE_URL}{version}.zip"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try.  ``retries`` counts consecutive failed attempts: an attempt that
    received bytes resets the count, so a slow, flaky server still finishes the download, while
    a dead one fails after ``backoff * (2 ** retries - 1)`` seconds of waiting."""
    retries: int = 5
    backoff: float = 1.0       # seconds before the first retry; doubles after each failure
    max_delay: float = 60.0    # cap on one wait
    timeout: float = 30.0      # socket timeout of a connect or a read


class _Transient(Exception):
    """A failure worth retrying (connection refused or cut, timeout, HTTP 5xx)."""


class _Restart(Exception):
    """The partial file cannot be continued (changed on the server, bad range): start over."""


def _log(message: str) -> None:
    print(f"netdissect: {message}", file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    import http.client
    import urllib.error
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.URLError) and reason is not None:
        exc = reason if isinstance(reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host name not resolved ({exc.strerror or exc})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-transfer"
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 200 else text[:200] + "..."


# ---------------------------------------------------------------------------------------------
# The resumable download


def _state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_state(part: Path) -> Dict:
    try:
        state = json.loads(_state_path(part).read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(part: Path, state: Dict) -> None:
    path = _state_path(part)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


def _attempt(url: str, part: Path, state: Dict, policy: RetryPolicy,
             on_bytes: Callable[[int, Optional[int], int], None]) -> None:
    """One request: continue (or start) the file; returns when the body ended as announced.
    ``on_bytes(done, total, new)`` reports progress."""
    import http.client  # here, not at the top: they cost the CLI's start-up 40 ms
    import urllib.error
    import urllib.request
    have = _size(part)
    headers = {"User-Agent": "netdissect (resumable Broden download)",
               "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = state.get("etag") or state.get("last_modified")
        if validator and state.get("url") == url:
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=policy.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            if state.get("total") == have:          # already complete (killed before marked)
                state.update(complete=True)
                _write_state(part, state)
                return
            _truncate(part)
            raise _Restart(f"the server cannot continue from byte {have}")
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}")
        raise DownloadError(f"HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):     # no DNS: offline, not worth retrying
            raise DownloadError(_describe(exc))
        raise _Transient(_describe(exc))

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                _truncate(part)
                raise _Restart("the server answered another byte range than asked")
            total = None if match.group(3) == "*" else int(match.group(3))
            if state.get("total") not in (None, total) or (total is not None and total < have):
                _truncate(part)
                raise _Restart(f"the file on the server changed size ({state.get('total')} -> "
                               f"{total} bytes)")
            mode = "ab"
        elif status == 200:
            if have:
                _log("the server sent the whole file instead of the rest (no resume support, or "
                     "the file changed); starting over")
            have, total, mode = 0, length, "wb"
        else:
            raise _Transient(f"unexpected HTTP status {status}")
        state.update(url=url, total=total, complete=False,
                     etag=response.headers.get("ETag"),
                     last_modified=response.headers.get("Last-Modified"))
        _write_state(part, state)
        got = 0
        on_bytes(have, total, 0)
        with open(part, mode, buffering=0) as f:  # unbuffered: what arrived is on disk
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # what has arrived: a kill loses little
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    raise _Transient(f"{_describe(exc)} after {have + got} bytes")
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:  # a raw write may take part of the chunk
                    view = view[f.write(view):]
                got += len(chunk)
                on_bytes(have + got, total, len(chunk))
    done = have + got
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes")
    if total is not None and done > total:
        _truncate(part)
        raise _Restart(f"the server sent {done} bytes but announced {total}")
    state.update(total=done, complete=True)
    _write_state(part, state)


def _truncate(part: Path) -> None:
    with open(part, "wb"):
        pass


def _progress_bar(enabled: bool, desc: str, unit: str = "B"):
    from netdissect.progress import progress_bar
    return progress_bar(enabled, None, desc, unit) if enabled else None


def download(url: str, part: Union[str, Path], policy: RetryPolicy = RetryPolicy(),
             progress: bool = False, manual: str = "",
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` into ``part`` (resuming whatever is already there) and return it.

    The file is complete when the server's announced size has arrived; progress is recorded in
    ``part + '.json'`` (URL, size, validators), so a later call, even after a kill, continues
    where this one stopped.  ``manual`` ends the error message that gives up (what to do
    instead).  Raises DownloadError naming the URL.
    """
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    state = _read_state(part)
    if state.get("url") not in (None, url) and _size(part):
        _log(f"continuing {part.name} (begun from {state['url']}) from {url}")
    bar = None                 # made at the first response: an error alone shows no bar
    received = [0]

    def on_bytes(done: int, total: Optional[int], new: int) -> None:
        nonlocal bar
        received[0] += new
        if bar is None:
            bar = _progress_bar(progress, part.name.replace(".part", ""))
            if bar is None:
                return
        if bar.total != total or new == 0:
            bar.reset(total=total)
            bar.update(done)
        else:
            bar.update(new)

    failures = restarts = 0
    lock = open(part, "ab")   # the .part itself is locked: two downloads must not interleave
    locked = False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DownloadError(f"another netdissect is downloading into {part}; wait for "
                                    "it to finish (or stop it) and run again") from None
        locked = True
        while not (state.get("complete") and state.get("total") == _size(part)):
            before = received[0]
            try:
                _attempt(url, part, state, policy, on_bytes)
            except _Restart as exc:
                restarts += 1
                if restarts > 3:
                    raise DownloadError(f"cannot download {url}: {exc} (3 restarts); {manual}")
                _log(f"{exc}; starting over")
                state = {}
            except _Transient as exc:
                failures = 0 if received[0] > before else failures  # progress: a new streak
                failures += 1
                if failures > policy.retries:
                    kept = (f"; the {_size(part)} bytes received are kept in {part} and the next "
                            "run resumes from there") if _size(part) else ""
                    raise DownloadError(f"cannot download {url}: {exc} ({failures} attempts in a "
                                        f"row); the server is down or this machine is offline"
                                        f"{'; ' + manual if manual else ''}{kept}")
                delay = min(policy.backoff * 2 ** (failures - 1), policy.max_delay)
                _log(f"{url}: {exc}; retry {failures} of {policy.retries} in {delay:.3g} s")
                sleep(delay)
            except DownloadError as exc:
                raise DownloadError(f"cannot download {url}: {exc}"
                                    f"{'; ' + manual if manual else ''}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the {_size(part)} bytes received are kept in "
                                f"{part} and the next run resumes from there") from None
    finally:
        if locked and not _size(part) and not state.get("complete"):
            part.unlink(missing_ok=True)            # nothing received: leave nothing behind
            _state_path(part).unlink(missing_ok=True)
        lock.close()
        if bar is not None:
            bar.close()
    return part


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalize_sha256(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise NetDissectError(f"--sha256 {text!r} is not a sha256 digest (64 hex digits)")
    return value


# ---------------------------------------------------------------------------------------------
# Safe extraction


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """The member's path relative to the extraction root, or DatasetError when it could land
    anywhere else (absolute, drive letter, '..') or is not a plain file or directory."""
    name = info.filename

    def refuse(why: str) -> DatasetError:
        return DatasetError(f"member {name!r} {why}; refusing to extract this archive (a genuine "
                            "Broden zip has none): get the file again from a trusted source",
                            archive)

    if "\x00" in name:
        raise refuse("has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise refuse("has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("would be written outside the output directory ('..')")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise refuse("is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise refuse("is not a regular file or directory")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def safe_members(zf: zipfile.ZipFile, archive: Path
                 ) -> Tuple[PurePosixPath, List[Tuple[zipfile.ZipInfo, PurePosixPath]], int]:
    """Check every member, find the dataset root (the folder of the shallowest index.csv: the
    official zips hold ``broden1_224/...``) -> (root, [(member, path under root)], number of
    files outside the root, which are left out)."""
    files: List[Tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen = set()
    for info in zf.infolist():
        path = _member_path(info, archive)
        if info.is_dir() or stat.S_IFMT(info.external_attr >> 16) == stat.S_IFDIR:
            continue
        if path == PurePosixPath(".") or path in seen:
            raise DatasetError(f"member {info.filename!r} has an empty or repeated name; refusing "
                               "to extract this archive: get the file again", archive)
        seen.add(path)
        files.append((info, path))
    indexes = [p for _, p in files if p.name == "index.csv"]
    if not indexes:
        raise DatasetError("the archive has no index.csv: it is not a Broden-format dataset; "
                           "check the --url / --zip you gave", archive)
    root = min(indexes, key=lambda p: (len(p.parts), str(p))).parent
    under = [(info, p.relative_to(root)) for info, p in files
             if root == PurePosixPath(".") or root in p.parents]
    return root, under, len(files) - len(under)


def _damaged(message: str, archive: Path) -> DatasetError:
    err = DatasetError(message, archive)
    err.damaged = True  # type: ignore[attr-defined]  # a download in this state is useless
    return err


def _remove_ours(path: Path) -> None:
    """Remove an extraction directory left by a killed run; only one that carries our mark."""
    if not path.exists():
        return
    if not (path / _EXTRACT_MARK).exists():
        raise NetDissectError(f"{path} exists and was not made by netdissect; remove or rename "
                              "it, then run again")
    shutil.rmtree(path)


def extract_dataset_zip(archive: Union[str, Path], out: Union[str, Path],
                        progress: bool = False) -> Tuple[Path, int]:
    """Extract the Broden dataset in ``archive`` so that ``out/index.csv`` exists -> (out,
    members left out).  Everything is checked before anything is written; the files go to a
    temporary directory beside ``out`` that replaces it (absent or empty) when complete."""
    archive, out = Path(archive), Path(os.path.abspath(out))
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise DatasetError("the zip file does not exist", archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _damaged(f"not a readable zip archive ({exc}); the file is truncated or not a "
                       "zip: get it again", archive)
    with zf:
        _, members, left_out = safe_members(zf, archive)
        work = out.parent / f".{out.name}.extracting"
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_ours(work)
        need = sum(info.file_size for info, _ in members)
        free = shutil.disk_usage(out.parent).free
        if need > free:
            raise DatasetError(f"extracting needs {need / 2**30:.2f} GiB but {out.parent} has "
                               f"{free / 2**30:.2f} GiB free; free some space or choose another "
                               "--out", archive)
        work.mkdir()
        (work / _EXTRACT_MARK).touch()
        real_work = os.path.realpath(work)
        bar = _progress_bar(progress, "extracting", unit="file")
        if bar is not None:
            bar.reset(total=len(members))
        try:
            for info, rel in members:
                target = work.joinpath(*rel.parts)
                if not os.path.realpath(target).startswith(real_work + os.sep):
                    raise DatasetError(f"member {info.filename!r} would be written outside "
                                       "the output directory; refusing to extract", archive)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise _damaged(f"member {info.filename!r} is corrupt ({exc}); the archive "
                                   "is damaged: get it again", archive)
                if bar is not None:
                    bar.update(1)
            (work / _EXTRACT_MARK).unlink()
            if out.exists():
                out.rmdir()  # empty (checked by the caller); a non-empty one raises, untouched
            os.replace(work, out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # ours: nothing half-extracted stays
            raise
        finally:
            if bar is not None:
                bar.close()
    return out, left_out


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class FetchResult:
    """What `fetch_broden` did: the dataset directory, its validation report (the same as
    `netdissect check`), where the bytes came from, and zip members left out (outside the
    dataset's root folder)."""
    path: Path
    report: object
    source: str
    left_out: int = 0
    notes: List[str] = field(default_factory=list)


def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise NetDissectError(f"{out} exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            what = (f"already holds a dataset (validate it with `netdissect check {out}`)"
                    if (out / "index.csv").exists() else "exists and is not empty")
            raise NetDissectError(f"{out} {what}; choose another --out, or remove it to "
                                  "download again")


def fetch_broden(out: Union[str, Path], version: str = "broden1_224", url: Optional[str] = None,
                 zip_path: Union[None, str, Path] = None, sha256: Optional[str] = None,
                 keep_zip: bool = False, policy: RetryPolicy = RetryPolicy(),
                 progress: bool = False, workers: int = 8,
                 sleep: Callable[[float], None] = time.sleep) -> FetchResult:
    """Download (or take ``zip_path``), verify, extract and validate a Broden release into
    ``out``.

    The download goes to ``out + '.zip.part'`` and resumes across runs; it is deleted once the
    dataset is extracted, unless ``keep_zip`` (then it is renamed ``out + '.zip'``).  A zip the
    user gave is never modified.  Returns a FetchResult whose ``report`` is `check_dataset`'s.
    """
    from netdissect.data.broden import check_dataset

    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    expected = _normalize_sha256(sha256)
    _check_out(out)
    part: Optional[Path] = None
    if zip_path is not None:
        archive = Path(os.path.expanduser(os.fspath(zip_path)))
        if not archive.is_file():
            raise DatasetError("the zip file does not exist; give the path of the downloaded "
                               "Broden zip", archive)
        source = str(archive)
    else:
        url = url or broden_url(version)
        part = out.with_name(out.name + ".zip.part")
        manual = (f"get {url} another way (a browser, another machine, a mirror) and run "
                  f"`netdissect data broden --zip FILE --out {out}`, or give a mirror with --url")
        archive = download(url, part, policy=policy, progress=progress, manual=manual,
                           sleep=sleep)
        source = url
    if expected is not None:
        actual = sha256_of(archive)
        if actual != expected:
            if part is not None:
                part.unlink()
                _state_path(part).unlink(missing_ok=True)
                what = "the download was deleted; run again to download it afresh, or use --url"
            else:
                what = "the file is damaged or another version: get it again"
            raise DownloadError(f"{source}: sha256 is {actual}, expected {expected}; {what}")
    try:
        _, left_out = extract_dataset_zip(archive, out, progress=progress)
    except DatasetError as exc:
        if part is None or not getattr(exc, "damaged", False):
            raise
        part.unlink(missing_ok=True)
        _state_path(part).unlink(missing_ok=True)
        raise DatasetError(f"{exc} (the download was deleted: run again to download it "
                           "afresh)") from None
    notes = []
    if part is not None:
        kept = out.with_name(out.name + ".zip")
        if keep_zip and not kept.exists():
            os.replace(part, kept)
            notes.append(f"the zip is kept as {kept}")
        else:
            if keep_zip:
                notes.append(f"the zip is not kept: {kept} already exists")
            part.unlink(missing_ok=True)
        _state_path(part).unlink(missing_ok=True)
    if left_out:
        notes.append(f"{left_out} archive member(s) outside the dataset's folder were not "
                     "extracted")
    report = check_dataset(out, workers=workers, progress=progress)
    return FetchResult(out, report, source, left_out, notes)
