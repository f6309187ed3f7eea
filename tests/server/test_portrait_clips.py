"""A portrait uploaded as a short clip of the person talking: the portrait is one of its frames, and sessions
on it draw the clip's real open mouths. The clip is made here by rendering the astronaut (no shared data)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from emote.model.media.audio_io import write_wav
from emote.model.media.video_out import Mp4Writer
from emote.server.app import create_app
from emote.server.config import ServerConfig
from emote.server.portrait_clips import MOUTHS_SUFFIX, is_video
from emote.server.portraits import PortraitStore, PreparedPortraits
from emote.streaming.offline import render_file
from tests._fixtures import speech_16k

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A talking clip (the astronaut saying a sentence) and a clip of an empty room."""
    import cv2

    d = tmp_path_factory.mktemp("clips")
    portrait = d / "astronaut.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    speech = d / "speech.wav"
    write_wav(speech, speech_16k("Open wide and say aah, then close your mouth again."), 16000)
    talking = d / "talking.mp4"
    render_file(portrait, speech, talking, size=256, seed=1)
    room = d / "room.mp4"
    with Mp4Writer(room, 128, 128, 25.0) as writer:
        for _ in range(30):
            writer.write_video(np.full((128, 128, 3), 90, np.uint8))
    return talking, room


def test_videos_are_told_from_images(clips: tuple[Path, Path]) -> None:
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(png, format="PNG")
    assert is_video(clips[0].read_bytes()) and is_video(clips[1].read_bytes())
    assert not is_video(png.getvalue()) and not is_video(b"just some text, not a video")


@pytest.mark.asyncio
async def test_a_clip_upload_becomes_a_portrait_with_its_own_mouths(clips: tuple[Path, Path], tmp_path: Path) -> None:
    talking, room = clips
    config = ServerConfig(data_dir=tmp_path / "data")
    app = create_app(config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        upload = {"image": ("me talking.mp4", talking.read_bytes(), "video/mp4")}
        accepted = await client.post("/portraits", files=upload)
        assert accepted.status_code == 201, accepted.text
        body = accepted.json()
        image = await client.get(body["image_url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        refused = await client.post("/portraits", files={"image": ("room.mp4", room.read_bytes(), "video/mp4")})
        assert refused.status_code == 422
        message = refused.json()["error"]
        assert message.startswith("room.mp4: no face in any of its 30 frames") and str(tmp_path) not in message
        listed = (await client.get("/portraits")).json()["portraits"]
        assert [p["id"] for p in listed] == ["default", body["portrait_id"]] and listed[1]["name"] == "me talking.mp4"
    await app.state.emote.aclose()
    folder = config.upload_dir
    pid = body["portrait_id"]
    # The portrait, its name and its mouths; nothing half-written, and the clip itself is not kept.
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{pid}.png", f"{pid}.json", f"{pid}{MOUTHS_SUFFIX}"])
    store = PortraitStore(tmp_path / "unused.png", folder)  # found again after a restart
    info = store.get(pid)
    assert info.reference == folder / f"{pid}{MOUTHS_SUFFIX}"
    prepared, session = PreparedPortraits().renderer(info, 256)
    bank = prepared.mouth.bank  # type: ignore[attr-defined]
    assert bank is not None and len(bank.loops) >= 3
    assert session.render(np.zeros(6, np.float32) + [0, 0, 0, 0, 0, 1], prepared.framed.rest).shape == (256, 256, 3)
    PortraitStore(tmp_path / "unused.png", folder, max_uploads=0)  # evicted: its mouths go with it
    assert not any(p.name.startswith(pid) for p in folder.iterdir())
