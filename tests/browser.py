"""A minimal Chrome DevTools Protocol driver for the real-browser end-to-end test.

It starts Debian's Chromium (the real binary, not the ``/usr/bin`` wrapper, which adds flags and API keys)
headless with exactly the flags of ARCHITECTURE.md's networking rules, in a new empty profile folder,
and talks CDP to it over a WebSocket (the ``websockets`` package): open a page, navigate, evaluate
JavaScript (awaiting promises), take a PNG screenshot. No Playwright and nothing downloaded.

    async with Chromium(fake_microphone=wav_path) as browser:
        page = await browser.new_page()
        await page.navigate("http://127.0.0.1:8080/")
        title = await page.evaluate("document.title")

Leaving the ``async with`` closes the browser, kills what is left of its process group and removes the
profile folder.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = Path("/usr/lib/chromium/chromium")


def chromium_flags(fake_microphone: Path) -> list[str]:
    """The flags ARCHITECTURE.md requires, with ``fake_microphone`` as the looped fake audio capture."""
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


def require_chromium(binary: Path = CHROMIUM) -> Path:
    """``binary`` if it exists; otherwise skip the test, or fail it under CI (``CI=true``)."""
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    reason = f"Debian's Chromium is not installed at {binary} (apt-get install chromium; `make test` does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class CdpError(RuntimeError):
    """A CDP command failed, or the page threw while evaluating."""


class _Connection:
    """One WebSocket to the browser; commands carry ids, page sessions are multiplexed (``flatten``)."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lost: CdpError | None = None  # set when the socket died: later commands fail at once
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None,
                   timeout_s: float = 30.0) -> dict[str, Any]:
        if self._lost is not None:
            raise self._lost
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._socket.send(json.dumps(message))
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip())
        return reply.get("result", {})

    def listen(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``fn`` with every event message; returns a function that stops it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    async def _read(self) -> None:
        error = CdpError("the browser closed the DevTools connection")
        try:
            async for raw in self._socket:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.get(message["id"])
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    for fn in list(self._listeners):
                        fn(message)
        except Exception as exc:  # the socket died: every waiting command learns why
            error = CdpError(f"DevTools connection lost: {exc!r}")
        self._lost = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        await self._socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """One tab, attached through a flattened CDP session."""

    def __init__(self, connection: _Connection, session_id: str, target_id: str) -> None:
        self._connection = connection
        self.session_id = session_id
        self.target_id = target_id
        self.console: list[str] = []
        connection.listen(self._on_event)

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        return await self._connection.send(method, params, session_id=self.session_id, timeout_s=timeout_s)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("sessionId") != self.session_id:
            return
        if message.get("method") == "Runtime.consoleAPICalled":
            args = message["params"].get("args", [])
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
            self.console.append(f"{message['params'].get('type')}: {text}")
        elif message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.console.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")

    async def navigate(self, url: str, timeout_s: float = 15.0) -> None:
        """Load ``url`` and wait for its ``load`` event."""
        loaded = asyncio.get_running_loop().create_future()

        def on_event(message: dict[str, Any]) -> None:
            if (message.get("sessionId") == self.session_id and message.get("method") == "Page.loadEventFired"
                    and not loaded.done()):
                loaded.set_result(None)

        stop = self._connection.listen(on_event)
        try:
            result = await self.send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise CdpError(f"navigating to {url}: {result['errorText']}")
            await asyncio.wait_for(loaded, timeout_s)
        finally:
            stop()

    async def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The value of a JavaScript expression (promises awaited, the result passed back as JSON)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"page threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout_s: float = 10.0) -> Any:
        """Wait, inside the page, until the JavaScript expression ``condition`` is truthy; returns its value.

        The page checks it every 50 ms; on timeout the error shows the page's ``window.emote`` for context.
        """
        script = f"""new Promise((resolve, reject) => {{
            const deadline = performance.now() + {timeout_s * 1000:.0f};
            const check = () => {{
                let value;
                try {{ value = ({condition}); }} catch (e) {{ value = undefined; }}
                if (value) return resolve(value);
                if (performance.now() > deadline) {{
                    return reject(new Error('timed out waiting for: ' + {json.dumps(condition)} +
                        ' | window.emote = ' + JSON.stringify(window.emote ?? null)));
                }}
                setTimeout(check, 50);
            }};
            check();
        }})"""
        return await self.evaluate(script, timeout_s=timeout_s + 5)

    async def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose ``paths`` in the file input matching ``selector`` (fires its ``change`` event)."""
        document = await self.send("DOM.getDocument", {"depth": 0})
        found = await self.send("DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": selector})
        if not found.get("nodeId"):
            raise CdpError(f"no element matches {selector!r}")
        await self.send("DOM.setFileInputFiles", {"files": [str(p) for p in paths], "nodeId": found["nodeId"]})

    async def screenshot(self) -> bytes:
        """The visible page as PNG bytes."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(result["data"])


class Chromium:
    """Headless Chromium in a throwaway profile, as an async context manager."""

    def __init__(self, *, fake_microphone: Path, binary: Path = CHROMIUM, width: int = 1280, height: int = 900,
                 start_timeout_s: float = 15.0) -> None:
        self.fake_microphone = Path(fake_microphone)
        self.binary = binary
        self.width, self.height = width, height
        self.start_timeout_s = start_timeout_s
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: _Connection | None = None
        self.start_s: float | None = None

    @property
    def log_path(self) -> Path:
        assert self._folder is not None
        return self._folder / "chromium.log"

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of Chromium's stderr (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except (OSError, AssertionError):
            return ""

    async def __aenter__(self) -> Chromium:
        self._folder = Path(tempfile.mkdtemp(prefix="emote-chromium-"))
        profile = self._folder / "profile"
        profile.mkdir()
        command = [
            str(self.binary),
            *chromium_flags(self.fake_microphone),
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        started = time.perf_counter()
        self._process = await asyncio.to_thread(self._launch, command)
        try:
            url = await self._devtools_url(profile / "DevToolsActivePort")
            socket = await connect(url, max_size=None, open_timeout=self.start_timeout_s)
            self._connection = _Connection(socket)
        except BaseException:
            await self._stop()
            raise
        self.start_s = time.perf_counter() - started
        return self

    def _launch(self, command: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "wb") as log:
            # A session of its own, so closing can also end the renderer and helper processes it forked.
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    @staticmethod
    def _read_port_file(port_file: Path) -> str | None:
        """``ws://`` URL of the browser endpoint once Chromium has written the whole file, else None."""
        try:
            lines = port_file.read_text().split("\n")
        except OSError:
            return None
        if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].startswith("/devtools/"):
            return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        return None

    async def _devtools_url(self, port_file: Path) -> str:
        """Chromium writes its chosen port and browser endpoint path into the profile once it listens."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise CdpError(f"Chromium exited with {self._process.returncode} at start:\n{self.log_tail()}")
            if url := await asyncio.to_thread(self._read_port_file, port_file):
                return url
            await asyncio.sleep(0.05)
        raise CdpError(f"Chromium did not open DevTools within {self.start_timeout_s} s:\n{self.log_tail()}")

    async def new_page(self) -> Page:
        """A new tab at ``about:blank`` with the window size, console capture and page events on."""
        assert self._connection is not None, "use Chromium inside `async with`"
        target = await self._connection.send("Target.createTarget", {"url": "about:blank"})
        attached = await self._connection.send("Target.attachToTarget",
                                               {"targetId": target["targetId"], "flatten": True})
        page = Page(self._connection, attached["sessionId"], target["targetId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return page

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.send("Browser.close"), 2.0)
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
        process, self._process = self._process, None
        if process is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 3.0)
            except TimeoutError:
                process.terminate()
                try:
                    await asyncio.wait_for(asyncio.to_thread(process.wait), 3.0)
                except TimeoutError:
                    process.kill()
                    await asyncio.to_thread(process.wait)
            # Helpers (zygote, renderer, utility processes) share the session we started; end any left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
