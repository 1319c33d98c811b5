"""A real headless Chromium for the report page's tests, driven over the DevTools protocol.

`Chromium.find_or_install()` finds Debian's `chromium` (installing it with scripts/install_chromium.sh
when missing); `Chromium.page()` opens one tab that records console errors, exceptions and failed
loads, per frame, so a page shown inside another (MLflow's artifact view) is checked on its own.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from servers import stop_group

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "scripts" / "install_chromium.sh"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 600.0

# Runs inside the page: every <img> loaded with a natural size, the sections present.
PAGE_CHECK_JS = """(() => {
  const imgs = [...document.images];
  return {
    ready: document.readyState === 'complete' && imgs.every(i => i.complete)
           && document.querySelector('section[data-section]') !== null,
    title: document.title,
    runs: Number(document.body ? document.body.dataset.runs : 0),
    sections: [...document.querySelectorAll('section[data-section]')].map(s => s.id),
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40)),
    figures: document.querySelectorAll('.figure').length,
    empty_cells: [...document.querySelectorAll('figure.empty')].map(f => f.closest('.figure').dataset.figure),
    links: [...document.querySelectorAll('a[href]')].length,
    text: document.body ? document.body.innerText.length : 0,
  };
})()"""


class BrowserUnavailable(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_or_install() -> str:
    """The browser's path; installs Debian's package when missing. BrowserUnavailable says why not."""
    path = find_chromium()
    if path:
        return path
    if os.environ.get("DIFFLAB_NO_BROWSER_INSTALL"):
        raise BrowserUnavailable("chromium is not installed and DIFFLAB_NO_BROWSER_INSTALL is set; "
                                 "run `bash scripts/install_chromium.sh`")
    proc = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    path = find_chromium()
    if proc.returncode != 0 or not path:
        raise BrowserUnavailable(f"could not install chromium (scripts/install_chromium.sh exit {proc.returncode}: "
                                 f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']})")
    return path


class Page:
    """One tab: send DevTools commands, keep every event, evaluate JS in the page or in a child frame."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=START_TIMEOUT_S)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.contexts: dict[int, str] = {}
        """execution context id -> frame id"""
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        if "method" not in msg:
            return
        self.events.append(msg)
        if msg["method"] == "Runtime.executionContextCreated":
            ctx = msg["params"]["context"]
            self.contexts[ctx["id"]] = (ctx.get("auxData") or {}).get("frameId", "")

    def pump(self, seconds: float) -> None:
        """Take in events for a while (loads, console messages)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._event(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def goto(self, url: str, timeout: float = 60.0) -> None:
        """Navigate; waits for the load event unless only the #fragment changed (a single-page app's route)."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        if "loaderId" not in self.send("Page.navigate", {"url": url}):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["method"] == "Page.loadEventFired" for e in self.events):
                return
            self.pump(0.2)
        raise TimeoutError(f"{url} did not load within {timeout:.0f}s")

    def evaluate(self, expression: str, context_id: int | None = None) -> Any:
        params: dict = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context_id is not None:
            params["contextId"] = context_id
        res = self.send("Runtime.evaluate", params)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, context_id: int | None = None) -> Any:
        """Evaluate until the result is truthy (or its `ready` is); returns the last result."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                value = self.evaluate(expression, context_id)
                if value and (not isinstance(value, dict) or value.get("ready", True)):
                    return value
            self.pump(0.3)
        return value

    def frames(self) -> list[dict]:
        tree = self.send("Page.getFrameTree")["frameTree"]
        out, todo = [], [tree]
        while todo:
            node = todo.pop()
            out.append(node["frame"])
            todo += node.get("childFrames", [])
        return out

    def frame_context(self, frame_id: str) -> int:
        """An execution context inside a (possibly sandboxed, cross-origin) child frame."""
        return self.send("Page.createIsolatedWorld", {"frameId": frame_id, "worldName": "difflab-check"})[
            "executionContextId"]

    def wait_in_child_frame(self, expression: str, timeout: float = 60.0) -> tuple[str | None, Any]:
        """Evaluate in the first child frame until the result is truthy (its `ready`, for a dict); the
        frame may be replaced while the embedding app renders, so it is looked up again each time."""
        deadline = time.monotonic() + timeout
        frame, value = None, None
        while time.monotonic() < deadline:
            children = [f for f in self.frames() if f.get("parentId")]
            if children:
                frame = children[0]["id"]
                with contextlib.suppress(RuntimeError):
                    value = self.evaluate(expression, self.frame_context(frame))
                    if value and (not isinstance(value, dict) or value.get("ready", True)):
                        return frame, value
            self.pump(0.5)
        return frame, value

    def errors(self, frame_id: str | None = None) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (of one frame, if given)."""
        out = []
        for e in self.events:
            p = e["params"]
            if e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                if frame_id is None or self.contexts.get(p.get("executionContextId")) == frame_id:
                    out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                if frame_id is None or self.contexts.get(d.get("executionContextId")) == frame_id:
                    out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error" and frame_id is None:
                out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def click_at(self, x: float, y: float) -> None:
        """A real left click (press and release) at viewport coordinates: menus that open on pointer events
        (MLflow's Radix dropdowns) ignore a scripted element.click()."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def click_text(self, selector: str, text: str, timeout: float = 30.0) -> bool:
        """Scroll to the first element matching selector whose text is exactly text, and click it for real."""
        find = ("(() => { const el = [...document.querySelectorAll(%s)].find(e => (e.innerText || '').trim() === %s);"
                " if (!el) return null; el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
                " return [r.x + r.width / 2, r.y + r.height / 2]; })()") % (json.dumps(selector), json.dumps(text))
        xy = self.wait_for(find, timeout=timeout)
        if not xy:
            return False
        self.click_at(*xy)
        self.pump(1.0)
        return True

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code})

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


def screenshot_dir(default: Path) -> Path:
    """Where tests keep their screenshots: $DIFFLAB_SCREENSHOTS (for a person to look at, e.g. outputs/screenshots,
    which git ignores), else the test's own tmp folder."""
    out = Path(os.environ.get("DIFFLAB_SCREENSHOTS") or default)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def chromium(exe: str, width: int = 1280, height: int = 1000) -> Iterator[Page]:
    """Start a headless Chromium with its own profile, open one tab, and stop the browser after."""
    profile = Path(tempfile.mkdtemp(prefix="difflab-chromium-"))
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
           # one renderer for a page and its frames, so a sandboxed iframe (MLflow's artifact view) is in
           # this tab's frame tree rather than a separate target
           "--disable-site-isolation-trials", "--disable-features=IsolateOrigins,site-per-process",
           f"--window-size={width},{height}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
           f"--user-data-dir={profile}", "about:blank"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    page = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserUnavailable(f"{exe} did not start (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        page = Page(ws_url)
        yield page
    finally:
        if page is not None:
            page.close()
        stop_group(proc)
        shutil.rmtree(profile, ignore_errors=True)
