"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (stdlib only).

Chromium reads NUL-terminated JSON commands on file descriptor 3 and writes responses and
events on descriptor 4; this drives a real headless browser (keyboard, mouse, reload,
downloads, screenshots) without a websocket library or a test framework.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Chromium flags of every browser test: headless, offline, no first-run or update work."""

KEYS = {
    **{str(d): (f"Digit{d}", 48 + d) for d in range(10)},
    **{c: (f"Key{c.upper()}", ord(c.upper())) for c in "abcdefghijklmnopqrstuvwxyz"},
}


class Browser:
    """A headless Chromium with one page, driven over the DevTools pipe.

    Args:
        executable: The Chromium binary.
        profile: Its user-data folder (``localStorage`` lives there).
        downloads: Where downloads go.
        size: Window size (width, height).
    """

    def __init__(
        self, executable: str, profile: Path, downloads: Path, size: tuple[int, int] = (1300, 1500)
    ) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)  # not clobbered
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        flags = [
            *HEADLESS_FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ]
        self.process = subprocess.Popen(  # noqa: S603 - a fixed binary and flags
            [executable, *flags],
            pass_fds=(3, 4),  # kept open when the child closes the rest after ``wire``
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
            browser=True,
        )
        self.send("Page.enable")
        self.send("Runtime.enable")

    # ------------------------------------------------------------------------- protocol
    def _read_message(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no message from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict | None = None, *, browser: bool = False, timeout: float = 60
    ) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile are kept)."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for an event (one already received counts) and remove it from the queue."""
        deadline = time.monotonic() + timeout
        while True:
            for k, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(k)
            self.events.append(self._read_message(max(0.01, deadline - time.monotonic())))

    # --------------------------------------------------------------------------- actions
    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def reload(self) -> None:
        """Reload the page and wait for the load event."""
        self.events.clear()
        self.send("Page.reload", {"ignoreCache": True})
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its value."""
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def press(self, key: str) -> None:
        """Press and release one key as a user would (keydown with its text, keyup)."""
        code, vk = KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": key, **common})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **common})

    def click(self, selector: str) -> None:
        """Click the centre of the first element matching ``selector`` with the mouse."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
            )

    def wait_download(self, timeout: float = 60) -> None:
        """Wait until a download has completed."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.wait_event("Browser.downloadProgress", deadline - time.monotonic())
            if event["params"].get("state") == "completed":
                return

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """Save a PNG of the window (or of the whole page)."""
        data = self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page}
        )
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        """End the browser."""
        try:
            self.send("Browser.close", browser=True, timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
