"""A real headless Chromium calls the real server over loopback and sees a talking avatar.

The server runs in this process (uvicorn on 127.0.0.1, a free port); Chromium runs with ARCHITECTURE.md's
networking flags and a speech WAV (espeak-ng, with pauses) as its looping fake microphone. Through the web
client's own buttons the test calls with the microphone, checks that the video plays at 512x512 and that
the mouth region moves more than it does in silence, hangs up; then calls text-only, makes the avatar speak
typed text and checks that the mouth moves and that the avatar's audio track carries sound. After each call
the server is back to zero sessions. A second test shows the errors a person can meet, in words: the
microphone refused, a photo without a face, and the server gone.

Screenshots go to the test's tmp folder and, when ``EMOTE_SCREENSHOT_DIR`` is set, there as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.browser import Chromium, Page, require_chromium

pytestmark = pytest.mark.browser

SENTENCES = (
    "Hello there! I am your talking portrait.",
    "Can you see my lips move when I speak?",
)
SAY_TEXT = "Good morning. It is a lovely day to talk about pictures that speak."
#: Mean absolute grey-level change per frame in the mouth box, speech against silence.
MOTION_RATIO = 2.0

# Samples the video into a canvas for `seconds` and measures how much the grey levels inside `box`
# (x0, y0, x1, y1 in video pixels) change from one decoded frame to the next.
SAMPLE_MOUTH_JS = """
(async (seconds, box) => {
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const [x0, y0, x1, y1] = box;
  const n = (x1 - x0) * (y1 - y0);
  const steps = [];
  let previous = null;
  let samples = 0;
  const startTime = video.currentTime;
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 100);
      video.requestVideoFrameCallback(() => { clearTimeout(timer); resolve(); });
    });
    ctx.drawImage(video, 0, 0);
    const rgba = ctx.getImageData(x0, y0, x1 - x0, y1 - y0).data;
    const grey = new Float32Array(n);
    for (let i = 0; i < n; i++) grey[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
    if (previous) {
      let sum = 0;
      for (let i = 0; i < n; i++) sum += Math.abs(grey[i] - previous[i]);
      steps.push(sum / n);
    }
    previous = grey;
    samples += 1;
  }
  return { samples, steps, played_s: video.currentTime - startTime };
})
"""


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Runs ``app`` with uvicorn on 127.0.0.1 (a free port) in this event loop; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def speech_wav(path: Path) -> Path:
    """Two espeak-ng sentences, each followed by a pause, as a 16-bit WAV (Chromium loops it as the mic)."""
    from emote.model.media.audio_io import write_wav
    from emote.server import tts

    if not tts.espeak_available():
        pytest.skip("espeak-ng (the tts extra) is not installed: no speech for the fake microphone")
    parts = []
    rate = 0
    for sentence in SENTENCES:
        samples, rate = tts.synthesize(sentence)
        parts += [samples, np.zeros(int(0.9 * rate), np.float32)]
    write_wav(path, np.concatenate(parts), rate)
    return path


def mouth_box(size: int = 512) -> list[int]:
    """The default portrait's mouth and jaw in video pixels, from its face landmarks as the server frames it."""
    from emote.model.assets import default_portrait_path
    from emote.model.render.registry import prepare_portrait

    framed = prepare_portrait(default_portrait_path(), size=size, face_index=0).framed
    lips = framed.landmarks[[61, 291, 0, 17, 13, 14], :2]  # corners, outer top and bottom, inner top and bottom
    width = float(lips[:, 0].max() - lips[:, 0].min())
    x0, x1 = lips[:, 0].min() - 0.2 * width, lips[:, 0].max() + 0.2 * width
    y0, y1 = lips[:, 1].min() - 0.25 * width, lips[:, 1].max() + 0.6 * width  # the jaw drops when it opens
    return [int(np.clip(v, 0, size)) for v in (x0, y0, x1, y1)]


async def mouth_motion(page: Page, seconds: float, box: list[int]) -> dict[str, Any]:
    """Mean grey-level change per frame in ``box`` over ``seconds`` of playing video."""
    result = await page.evaluate(f"{SAMPLE_MOUTH_JS}({seconds}, {json.dumps(box)})", timeout_s=seconds + 10)
    steps = np.asarray(result["steps"], np.float64)
    result["motion"] = float(steps.mean()) if steps.size else 0.0
    result["changed_frames"] = int((steps > 0.25).sum())
    return result


async def click(page: Page, element_id: str) -> None:
    await page.evaluate(f"document.getElementById({json.dumps(element_id)}).click()")


async def wait_playing(page: Page) -> None:
    """Connected, and the video is decoding 512-pixel frames and its time advances."""
    # the first call of a process also loads and warms the models: allow for a slow machine
    await page.wait_for("window.emote.state === 'connected'", timeout_s=30)
    await page.wait_for("(v => v.readyState >= 2 && v.videoWidth === 512 && v.videoHeight === 512)"
                        "(document.getElementById('video'))", timeout_s=10)
    before = await page.evaluate("document.getElementById('video').currentTime")
    await page.wait_for(f"document.getElementById('video').currentTime > {before} + 0.2", timeout_s=5)


async def hang_up(page: Page, client: httpx.AsyncClient) -> None:
    await click(page, "hangup")
    await page.wait_for("window.emote.state === 'ended'", timeout_s=5)
    status = await page.evaluate("document.getElementById('status').textContent")
    assert "ended" in status.lower(), status
    for _ in range(50):  # the page's DELETE is on its way; give the server up to 5 s
        sessions = (await client.get("/health")).json()["sessions"]
        if sessions == 0:
            break
        await asyncio.sleep(0.1)
    assert sessions == 0, "the server still holds the session after hang-up"


def save_screenshot(png: bytes, name: str, tmp_path: Path) -> None:
    assert png.startswith(b"\x89PNG"), "not a PNG"
    (tmp_path / name).write_bytes(png)
    if folder := os.environ.get("EMOTE_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def make_app(tmp_path: Path) -> Any:
    from emote.server.app import create_app
    from emote.server.config import ServerConfig

    return create_app(ServerConfig(port=0, data_dir=tmp_path / "data"))


@pytest.mark.asyncio
async def test_call_with_microphone_then_text(tmp_path: Path) -> None:
    binary = require_chromium()
    wav = speech_wav(tmp_path / "speech.wav")
    box = mouth_box()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    async with (serve(make_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client,
                Chromium(fake_microphone=wav, binary=binary) as browser):
        page = await browser.new_page()
        await page.navigate(url + "/")
        await page.wait_for("document.querySelectorAll('#portraits input[type=radio]').length > 0")
        assert await page.evaluate("window.emote.state") == "idle"

        # Microphone: the fake mic loops the speech WAV; the avatar mouths it.
        t = time.perf_counter()
        await click(page, "call-mic")
        await wait_playing(page)
        timings["mic call to playing video"] = time.perf_counter() - t
        timings["of which POST /offer"] = await page.evaluate(
            "performance.getEntriesByType('resource').filter(e => e.name.endsWith('/offer'))[0].duration / 1000")
        spoken_by_mic = await mouth_motion(page, 4.0, box)
        save_screenshot(await page.screenshot(), "browser_mic_call.png", tmp_path)
        mic_stats = await page.evaluate("window.emote.stats")
        await hang_up(page, client)

        # Text only: silence first (the mouth rests), then typed text makes it talk and sound.
        t = time.perf_counter()
        await click(page, "call-text")
        await wait_playing(page)
        timings["text call to playing video"] = time.perf_counter() - t
        await page.wait_for("window.emote.stats.audioEnergy !== undefined", timeout_s=5)
        silent = await mouth_motion(page, 1.5, box)
        energy_before = await page.evaluate("window.emote.stats.audioEnergy")
        await page.evaluate(f"document.getElementById('say-text').value = {json.dumps(SAY_TEXT)}")
        t = time.perf_counter()
        await click(page, "say")

        async def audible() -> None:  # the page refreshes its stats once a second
            await page.wait_for(f"window.emote.stats.audioEnergy > {energy_before} + 1e-4", timeout_s=6)
            timings["say to audio energy in the stats"] = time.perf_counter() - t

        spoken_by_text, _ = await asyncio.gather(mouth_motion(page, 3.0, box), audible())
        save_screenshot(await page.screenshot(), "browser_text_call.png", tmp_path)
        text_stats = await page.evaluate("window.emote.stats")
        await hang_up(page, client)
        errors = [line for line in page.console if line.startswith(("error", "exception"))]
    timings["whole test"] = time.perf_counter() - started

    print(f"\ntimings (s): {json.dumps({k: round(v, 2) for k, v in timings.items()})}")
    print(f"mouth motion per frame: mic {spoken_by_mic['motion']:.2f}, silence {silent['motion']:.2f}, "
          f"text {spoken_by_text['motion']:.2f}; stats mic {mic_stats} text {text_stats}")
    assert not errors, errors
    assert spoken_by_mic["played_s"] > 3.0 and spoken_by_mic["samples"] >= 50, spoken_by_mic
    assert mic_stats["width"] == 512 and mic_stats["fps"] > 15, mic_stats
    assert spoken_by_mic["changed_frames"] >= 20, spoken_by_mic
    assert (mic_stats["audioEnergy"] or 0) < 1e-3, "the avatar echoed the caller's microphone back"
    assert text_stats["audioEnergy"] > energy_before + 1e-4, "the avatar's voice did not arrive"
    assert spoken_by_mic["motion"] > MOTION_RATIO * silent["motion"], (spoken_by_mic["motion"], silent["motion"])
    assert spoken_by_text["motion"] > MOTION_RATIO * silent["motion"], (spoken_by_text["motion"], silent["motion"])


@pytest.mark.asyncio
async def test_errors_are_told_in_words(tmp_path: Path) -> None:
    binary = require_chromium()
    wav = tmp_path / "silence.wav"
    from emote.model.media.audio_io import write_wav

    write_wav(wav, np.zeros(16000, np.float32), 16000)
    not_a_face = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (320, 320), (128, 128, 128)).save(not_a_face)
    async with Chromium(fake_microphone=wav, binary=binary) as browser:
        page = await browser.new_page()
        async with serve(make_app(tmp_path)) as url:
            await page.navigate(url + "/")
            await page.wait_for("document.querySelectorAll('#portraits input[type=radio]').length > 0")

            # The person refuses the microphone.
            await page.evaluate("navigator.mediaDevices.getUserMedia = () => "
                                "Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))")
            await click(page, "call-mic")
            await page.wait_for("window.emote.state === 'failed'")
            status = await page.evaluate("document.getElementById('status').textContent")
            assert "microphone" in status.lower() and "no camera" in status.lower(), status

            # A photo without a face.
            await page.set_files("#upload", [not_a_face])
            await page.wait_for("document.getElementById('status').textContent.includes('Portrait rejected')",
                                timeout_s=15)
            assert await page.evaluate("document.getElementById('status').getAttribute('role')") == "alert"
            save_screenshot(await page.screenshot(), "browser_error.png", tmp_path)
        # The server is gone.
        await click(page, "call-text")
        await page.wait_for("window.emote.state === 'failed'")
        status = await page.evaluate("document.getElementById('status').textContent")
        assert "can't reach" in status.lower(), status
