"""A real headless Chromium driven over the DevTools protocol (Debian's `chromium`), for UI checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from conftest import free_port
from processes import descendants, kill_all

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Seconds to wait for Chromium's DevTools port on an idle machine (times the load per core).
START_WAIT_S = 90.0


class Browser:
    """One headless Chromium on 127.0.0.1; ended by its pid when the block ends."""

    def __enter__(self) -> Browser:
        import websocket

        self.profile = tempfile.TemporaryDirectory(prefix="dcn-chromium-")
        self.log = open(os.path.join(self.profile.name, "chromium.log"), "wb")  # noqa: SIM115 (closed in __exit__)
        port = free_port()
        # The flags of the machine's own probe: without the background-networking ones Chromium keeps
        # dialling Google's hosts through a closed network at start-up. A first start on a fresh machine
        # also builds the font cache, so the wait is generous and scales with the load.
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--disable-breakpad", "--window-size=2000,1200",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        wait = START_WAIT_S * load_factor()
        deadline = time.monotonic() + wait
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as answer:
                    pages = [p for p in json.load(answer) if p["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                state = f"exited with {code}" if code is not None else f"did not open its DevTools port in {wait:.0f} s"
                said = self.stderr_tail()
                self.__exit__()
                raise RuntimeError(f"chromium {state}; its last words: {said}")
            time.sleep(0.2)
        # no Origin header: Chromium refuses DevTools connections from an origin it was not told to allow
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.calls = 0
        self.call("Page.enable")
        return self

    def __exit__(self, *_: object) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        helpers = descendants(self.process.pid)  # renderer, zygote, network and storage services
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        kill_all(helpers)  # a helper outliving the browser still writes into the profile folder
        self.log.close()
        for attempt in range(10):
            try:
                self.profile.cleanup()
                break
            except OSError:  # a file written between the listing and the removal: list again
                if attempt == 9:
                    raise
                time.sleep(0.5)

    def stderr_tail(self) -> str:
        """The last lines Chromium wrote to its stderr (for a failure message)."""
        self.log.flush()
        with open(self.log.name, "rb") as handle:
            lines = handle.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "(nothing)"

    def call(self, method: str, **params: Any) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll ``expression`` in the page until it is truthy; return its value."""
        deadline = time.monotonic() + timeout * load_factor()
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"the page never satisfied: {expression}")

    def click(self, text: str) -> None:
        """Click, with the mouse as a user does, the button or link whose text is ``text`` (waiting for it)."""
        x, y = self.wait_for(
            "(() => { const e = [...document.querySelectorAll('[role=button], button, a')]"
            f".find(e => e.innerText.trim() === {json.dumps(text)}); if (!e) return null;"
            " const r = e.getBoundingClientRect(); return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


def load_factor() -> float:
    """How much longer to wait on a loaded machine: the load per core (at least 1, at most 6)."""
    try:
        return min(6.0, max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)))
    except OSError:
        return 1.0
