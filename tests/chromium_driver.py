"""Headless Chromium driven over the DevTools protocol (--remote-debugging-pipe): no extra
dependency. Used by the report's browser tests."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium driven by the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, exe: str, width: int = 1400, height: int = 1800):
        self.profile = tempfile.mkdtemp(prefix="nd-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends move above 9 so that bash's "3<&N 4>&M" cannot clobber them
        to_child_r, from_child_w = (_high_fd(to_child_r), _high_fd(from_child_w))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 f"--window-size={width},{height}", "about:blank"]
        script = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self.proc = subprocess.Popen(["bash", "-c", script, exe] + flags,
                                     pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.profile, "..", os.path.basename(self.profile) + ".log"), "wb"))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self._lock = threading.Condition()
        self._responses: Dict[int, Dict[str, Any]] = {}
        self.events: List[Dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.width, self.height = width, height
        self.session: Optional[str] = None

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._lock.notify_all()

    def send(self, method: str, params: Optional[dict] = None, session: Any = "default",
             timeout: float = 30.0) -> Dict[str, Any]:
        self._next += 1
        mid = self._next
        msg: Dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        sid = self.session if session == "default" else session
        if sid:
            msg["sessionId"] = sid
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._responses:
                if self._closed:
                    raise RuntimeError(f"chromium exited while waiting for {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout}s")
                self._lock.wait(left)
            resp = self._responses.pop(mid)
        if "error" in resp:
            raise RuntimeError(f"{method}: {resp['error']}")
        return resp.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=None)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def wait_event(self, method: str, since: int, timeout: float = 30.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for ev in self.events[since:]:
                    if ev.get("method") == method and ev.get("sessionId") == self.session:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"no {method} within {timeout}s")
                self._lock.wait(left)

    def navigate(self, url: str) -> None:
        since = len(self.events)
        res = self.send("Page.navigate", {"url": url})
        if "errorText" in res:
            raise RuntimeError(f"{url}: {res['errorText']}")
        if res.get("loaderId"):           # a new document (not a same-document hash change)
            self.wait_event("Page.loadEventFired", since)
        if url != "about:blank":
            self.wait_for("window.ndReport && window.ndReport.ready === true")
        self.settle(since)

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def choose(self, select_id: str, value: str) -> None:
        """Pick an option of a <select> as a user would (fires 'change')."""
        self.evaluate(f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); "
                      f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"!!({expression})"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{expression} never became true")

    def settle(self, since: int = 0, quiet: float = 0.4, timeout: float = 15.0) -> None:
        """Wait until no request started since event `since` is pending (lazy images of the
        viewport included): requests of a page navigated away from may never finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                events = self.events[since:]
                started = {e["params"]["requestId"] for e in events
                           if e.get("method") == "Network.requestWillBeSent"}
                ended = {e["params"]["requestId"] for e in events
                         if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
            n = len(self.events)
            time.sleep(quiet)
            if started <= ended and len(self.events) == n:
                return

    def problems(self, since: int = 0) -> List[str]:
        """Console errors, uncaught exceptions, failed requests, and any non-local request
        among the events from index `since` on."""
        out = []
        with self._lock:
            events = list(self.events[since:])
        for ev in events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"failed request: {p.get('errorText')} {p.get('type')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not (url.startswith("file://") or url.startswith("data:") or url == "about:blank"):
                    out.append(f"non-local request: {url}")
        return out

    def screenshot(self, path: Path, full: bool = False) -> None:
        params: Dict[str, Any] = {"format": "png"}
        if full:
            h = self.evaluate("document.documentElement.scrollHeight")
            params.update({"captureBeyondViewport": True,
                           "clip": {"x": 0, "y": 0, "width": self.width, "height": min(int(h), 12000), "scale": 1}})
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if not self._closed and self.proc.poll() is None:
                self.send("Browser.close", session=None, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
