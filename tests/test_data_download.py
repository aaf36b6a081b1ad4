"""`netdissect data broden`: resumable download from a local HTTP server that misbehaves
(cuts connections mid-file, ignores Range, changes the file), kills, checksums, hostile zips."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
from broden_fixtures import build_broden

from netdissect.cli.commands import main
from netdissect.data.broden import BrodenDataset
from netdissect.data.download import BRODEN_VERSIONS, RetryPolicy, broden_url, download, fetch_broden
from netdissect.errors import DatasetError, DownloadError, NetDissectError

TESTS = Path(__file__).parent
FAST = RetryPolicy(retries=3, backoff=0.001, timeout=10)


def broden_zip(tmp_path: Path, top: str = "broden1_224", padding: int = 0) -> Path:
    """The fixture dataset zipped as the official archives are (one top folder); ``padding``
    bytes of incompressible filler make the download long enough to interrupt."""
    src = tmp_path / "fixture"
    build_broden(src)
    if padding:
        (src / "README.txt").write_bytes(np.random.default_rng(0).bytes(padding))
    path = tmp_path / "source.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in sorted(src.rglob("*")):
            if item.is_file():
                zf.write(item, f"{top}/{item.relative_to(src).as_posix()}")
    return path


class Server:
    """A local HTTP server of one file with Range support and scripted misbehaviour:
    ``cuts``: for the next responses, how many body bytes to send before dropping the
    connection; ``ranges``: False to ignore Range (always 200); ``pause_at``: stall mid-file."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.etag = '"v1"'
        self.cuts: List[int] = []
        self.ranges = True
        self.status: Optional[int] = None
        self.chunk = 65536
        self.pause_at: Optional[int] = None       # stop sending after this many bytes ...
        self.release = threading.Event()          # ... until this is set
        self.requests: List[Optional[str]] = []   # the Range header of each request
        self.sent = 0                             # body bytes sent, all requests
        self.served: List[tuple] = []             # (Range header, body bytes sent) per 200/206
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append(self.headers.get("Range"))
                if owner.status is not None:
                    self.send_error(owner.status)
                    return
                data, start = owner.payload, 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if_range = self.headers.get("If-Range")
                if match and owner.ranges and if_range in (None, owner.etag):
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", owner.etag)
                self.end_headers()
                body = data[start:]
                limit = owner.cuts.pop(0) if owner.cuts else len(body)
                number = len(owner.served)
                owner.served.append((self.headers.get("Range"), 0))
                for i in range(0, min(limit, len(body)), owner.chunk):
                    piece = body[i:min(i + owner.chunk, limit)]
                    owner.sent += len(piece)      # counted before the client can see it
                    owner.served[number] = (owner.served[number][0],
                                            owner.served[number][1] + len(piece))
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except OSError:
                        return
                    if owner.pause_at is not None and i + len(piece) >= owner.pause_at:
                        owner.pause_at = None
                        owner.release.wait(30)    # hold the connection open, mid-file
                if limit < len(body):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/broden1_224.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive(tmp_path):
    return broden_zip(tmp_path)


@pytest.fixture
def server(archive):
    s = Server(archive.read_bytes())
    yield s
    s.close()


def leftovers(out: Path) -> List[str]:
    """Everything our commands may leave beside ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")))


def test_official_urls():
    assert BRODEN_VERSIONS == ("broden1_224", "broden1_227", "broden1_384")
    assert broden_url("broden1_227") == "http://netdissect.csail.mit.edu/data/broden1_227.zip"


def test_cut_connections_resume_with_range_and_complete(server, archive, tmp_path):
    size = len(server.payload)
    server.cuts = [1000, 1500, 700]               # three responses dropped mid-file
    out = tmp_path / "broden"
    result = fetch_broden(out, url=server.url, policy=FAST)
    assert result.report.ok, result.report.summary_text()
    # Each retry asked only for the rest, and no byte was sent twice.
    assert server.requests == [None, "bytes=1000-", "bytes=2500-", "bytes=3200-"]
    assert server.sent == size
    # The top folder of the archive (broden1_224/) is stripped: out holds the dataset.
    ds = BrodenDataset(out)
    assert len(ds) == 3 and ds.records[0].image == "a/img0.jpg"
    assert (out / "images" / "a" / "img0_part_2.png").read_bytes() == \
        (tmp_path / "fixture" / "images" / "a" / "img0_part_2.png").read_bytes()
    assert leftovers(out) == ["broden"]          # .part and its state are gone


def test_gives_up_after_retries_in_a_row_without_progress(server, tmp_path):
    server.cuts = [500, 0, 0, 0]                  # progress once, then nothing
    out = tmp_path / "broden"
    with pytest.raises(DownloadError, match=r"4 attempts in a row.*--zip FILE.*500 bytes"):
        fetch_broden(out, url=server.url, policy=FAST)
    assert not out.exists()
    assert (tmp_path / "broden.zip.part").stat().st_size == 500
    assert len(server.requests) == 4              # the cut one, then its 3 retries
    fetch_broden(out, url=server.url, policy=FAST)  # the next run resumes and completes
    assert server.requests[-1] == "bytes=500-"
    assert leftovers(out) == ["broden"]


def test_server_without_range_or_changed_file_restarts(server, tmp_path):
    out = tmp_path / "broden"
    part = tmp_path / "broden.zip.part"
    server.cuts = [2000]
    server.ranges = False                         # a server that always sends the whole file
    with pytest.raises(DownloadError):
        download(server.url, part, RetryPolicy(retries=0, backoff=0.001))
    assert part.stat().st_size == 2000
    server.cuts = []
    download(server.url, part, FAST)
    assert part.read_bytes() == server.payload

    # The file changes on the server between runs: If-Range makes the server send it whole.
    part.write_bytes(server.payload[:1234])
    server.ranges, server.etag = True, '"v2"'
    server.requests.clear()
    download(server.url, part, FAST)
    assert server.requests == ["bytes=1234-"] and part.read_bytes() == server.payload
    fetch_broden(out, url=server.url, policy=FAST)


def test_http_error_is_not_retried(server, tmp_path):
    server.status = 404
    out = tmp_path / "broden"
    with pytest.raises(DownloadError) as info:
        fetch_broden(out, url=server.url, policy=FAST)
    message = str(info.value)
    assert "HTTP 404" in message and server.url in message and "--zip" in message
    assert len(server.requests) == 1
    assert not out.exists()


def test_sha256(server, archive, tmp_path):
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "broden"
    with pytest.raises(DownloadError, match=f"sha256 is {good}, expected {'0' * 64}"):
        fetch_broden(out, url=server.url, sha256="0" * 64, policy=FAST)
    assert leftovers(out) == []                   # nothing broken is kept, nothing extracted
    with pytest.raises(DownloadError, match="sha256 is"):
        fetch_broden(out, zip_path=archive, sha256="f" * 64)
    assert archive.exists() and leftovers(out) == []   # the user's zip is never deleted
    with pytest.raises(Exception, match="64 hex digits"):
        fetch_broden(out, url=server.url, sha256="abc")
    result = fetch_broden(out, url=server.url, sha256=good.upper(), policy=FAST, keep_zip=True)
    assert result.report.ok
    assert (tmp_path / "broden.zip").read_bytes() == archive.read_bytes()


def test_zip_option_and_refusal_of_a_non_empty_out(archive, tmp_path):
    out = tmp_path / "data" / "broden"
    result = fetch_broden(out, zip_path=archive)
    assert result.report.ok and result.source == str(archive)
    assert archive.exists()
    with pytest.raises(Exception, match="already holds a dataset"):
        fetch_broden(out, zip_path=archive)


def hostile_zip(path: Path, name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("broden1_224/index.csv", "image,split,ih,iw,sh,sw\n")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(info, "pwned")
    return path


@pytest.mark.parametrize("name, symlink, why", [
    ("../evil.txt", False, r"outside the output directory \('..'\)"),
    ("broden1_224/images/../../../evil.txt", False, r"outside the output directory"),
    ("/tmp/evil.txt", False, "absolute path"),
    ("C:/evil.txt", False, "absolute path"),
    ("broden1_224\\..\\..\\evil.txt", False, "outside the output directory"),
    ("broden1_224/images/link", True, "symbolic link"),
])
def test_members_escaping_out_are_refused(tmp_path, name, symlink, why):
    archive = hostile_zip(tmp_path / "evil.zip", name, symlink)
    out = tmp_path / "x" / "broden"
    with pytest.raises(DatasetError, match=why):
        fetch_broden(out, zip_path=archive)
    assert not out.exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "x").exists() or leftovers(out) == []


def test_corrupt_download_is_deleted(server, tmp_path):
    data = bytearray(server.payload)
    data[200:260] = bytes(60)                     # inside the first member's compressed data
    server.payload = bytes(data)
    out = tmp_path / "broden"
    with pytest.raises(DatasetError, match="corrupt.*download was deleted"):
        fetch_broden(out, url=server.url, policy=FAST)
    assert leftovers(out) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "netdissect", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_offline_gives_one_line_naming_the_url_and_zip(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/broden1_224.zip"   # nothing listens there
    out = tmp_path / "broden"
    proc = run_cli("data", "broden", "--url", url, "--out", out, "--retries", 2,
                   "--backoff", 0.01, "--quiet")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("netdissect: error: cannot download " + url)
    assert "connection refused" in last and "--zip FILE" in last and "--url" in last
    assert "Traceback" not in proc.stderr
    assert leftovers(out) == []


def test_kill_mid_download_resumes_from_the_part_file(tmp_path):
    archive = broden_zip(tmp_path, padding=64 * 1024)
    server = Server(archive.read_bytes())
    server.chunk, server.pause_at = 1024, 16384   # the server stalls mid-file: kill it there
    out = tmp_path / "broden"
    part = tmp_path / "broden.zip.part"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "netdissect", "data", "broden",
                                 "--url", server.url, "--out", str(out), "--quiet"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not part.exists() or part.stat().st_size < 16384) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        server.release.set()
        assert part.exists(), f"the download wrote no .part file; it printed: {proc.stderr.read()!r}"
        kept = part.stat().st_size
        assert kept == 16384 < len(server.payload)
        assert not out.exists()

        server.requests.clear()
        cli = run_cli("data", "broden", "--url", server.url, "--out", out, "--quiet")
        assert cli.returncode == 0, cli.stderr
        assert server.requests == [f"bytes={kept}-"]
        assert server.served[-1] == (f"bytes={kept}-", len(server.payload) - kept)
        assert "OK: no problems found" in cli.stdout
        assert re.search(r"object\s+2\s+4\s+3", cli.stdout)       # images / labels per category
        assert (out / "README.txt").read_bytes() == (tmp_path / "fixture" / "README.txt").read_bytes()
        assert leftovers(out) == ["broden"]
    finally:
        server.release.set()
        server.close()


def test_cli_zip_and_usage_errors(archive, tmp_path, capsys):
    out = tmp_path / "broden"
    assert main(["data", "broden", "--zip", str(tmp_path / "nope.zip"), "--out", str(out)]) == 1
    assert "the zip file does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):             # a mirror or a file, not both
        main(["data", "broden", "--zip", str(archive), "--url", "http://x/y.zip", "--out",
              str(out)])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["data", "broden", "--zip", str(archive), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "3 images (train: 2, val: 1)" in printed and f"is in {out}" in printed


def test_complete_part_killed_before_it_was_marked(server, tmp_path):
    """Killed after the last byte but before the state said 'complete': the server answers 416
    to the range past the end, and the file is taken as complete without a byte more."""
    part = tmp_path / "broden.zip.part"
    part.write_bytes(server.payload)
    (tmp_path / "broden.zip.part.json").write_text(json.dumps(
        {"url": server.url, "total": len(server.payload), "complete": False, "etag": server.etag}))
    download(server.url, part, FAST)
    assert server.requests == [f"bytes={len(server.payload)}-"] and server.sent == 0
    assert part.read_bytes() == server.payload


def test_one_download_at_a_time_and_stale_extraction_is_replaced(server, archive, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    part = tmp_path / "broden.zip.part"
    with open(part, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another netdissect is downloading"):
            download(server.url, part, FAST)
    assert server.requests == [] and part.exists()
    part.unlink()
    # A run killed while extracting leaves .broden.extracting (with our mark): replaced.
    stale = tmp_path / ".broden.extracting"
    (stale / "images").mkdir(parents=True)
    (stale / ".netdissect-extracting").touch()
    (stale / "images" / "junk.png").write_bytes(b"half")
    out = tmp_path / "broden"
    assert fetch_broden(out, zip_path=archive).report.ok
    assert not stale.exists() and not (out / "images" / "junk.png").exists()
    # One without the mark is not ours: left alone, with a clear error.
    (tmp_path / ".other.extracting").mkdir()
    with pytest.raises(NetDissectError, match="was not made by netdissect"):
        fetch_broden(tmp_path / "other", zip_path=archive)
    assert (tmp_path / ".other.extracting").is_dir()
