"""Tests for model.media.audio_io: every supported container decodes right, every bad file fails clearly."""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emote.model.errors import AudioError, CorruptAudioError, EmptyAudioError
from emote.model.media.audio_io import TARGET_RATE, AudioSource, _Converter, load_audio_16k, open_audio, write_wav

DURATION = 2.0
TONE_HZ = 440.0
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def tone(rate: int, seconds: float, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """(channels, N) float32 sine at TONE_HZ; every channel the same wave."""
    t = np.arange(int(round(rate * seconds))) / rate
    wave = (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def _audio_frame(block: np.ndarray, fmt: str, layout: str, rate: int, pts: int) -> av.AudioFrame:
    """An AudioFrame in any of the formats encoders ask for, from (C, n) float samples."""
    planar = fmt.endswith("p")
    base = fmt.rstrip("p")
    if base == "flt":
        data = block.astype(np.float32)
    else:
        dtype, scale = {"s16": (np.int16, 32767), "s32": (np.int32, 2**31 - 1)}[base]
        data = np.round(block.astype(np.float64) * scale).astype(dtype)
    if not planar:
        data = data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


def encode(
    path: Path,
    codec: str | None,
    rate: int = 44100,
    channels: int = 1,
    *,
    video: str | None = None,
    fmt: str | None = None,
    seconds: float = DURATION,
    samples: np.ndarray | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a test file with PyAV: a tone (or ``samples``) plus optionally a tiny video."""
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = None
        if codec:
            astream = out.add_stream(codec, rate=rate)
            astream.layout = LAYOUTS[channels]
            if codec == "vorbis":  # FFmpeg's native Vorbis encoder is marked experimental
                astream.codec_context.options = {"strict": "experimental"}
            data = tone(rate, seconds, channels) if samples is None else samples
            sample_fmt = astream.codec_context.format.name
            for start in range(0, data.shape[1], 4096):
                block = data[:, start : start + 4096]
                frame = _audio_frame(block, sample_fmt, astream.layout.name, rate, start)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
        if vstream is not None:
            for i in range(int(seconds * 25)):
                image = np.full((48, 64, 3), (i * 7) % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
    return path


# name: (codec, rate, channels, video codec, container format)
FORMATS = {
    "tone.wav": ("pcm_s16le", 44100, 2, None, None),
    "tone.mp3": ("libmp3lame", 44100, 2, None, None),
    "tone.ogg": ("vorbis", 44100, 2, None, None),
    "tone.opus": ("libopus", 48000, 1, None, None),
    "opus_in.ogg": ("libopus", 48000, 2, None, "ogg"),
    "tone.flac": ("flac", 22050, 1, None, None),
    "tone.m4a": ("aac", 44100, 2, None, None),
    "odd_rate.wav": ("pcm_s16le", 37800, 1, None, None),
    "surround.m4a": ("aac", 48000, 6, None, None),
    "clip.mp4": ("aac", 48000, 2, "libx264", None),
    "clip.mov": ("aac", 44100, 1, "libx264", None),
    "clip.mkv": ("libopus", 48000, 2, "libx264", None),
    "clip.webm": ("libopus", 48000, 2, "libvpx", None),
    "clip.mpg": ("mp2", 44100, 2, "mpeg1video", None),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name, (codec, rate, channels, video, fmt) in FORMATS.items():
        encode(folder / name, codec, rate, channels, video=video, fmt=fmt)
    return folder


def true_duration(path: Path) -> float:
    """Seconds of audio that PyAV decodes from the file, independently of audio_io."""
    with av.open(str(path)) as container:
        return sum(f.samples / f.sample_rate for f in container.decode(audio=0))


def drain(path: Path, chunk_s: float = 0.25) -> list:
    return list(open_audio(path).chunks(chunk_s=chunk_s))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_decodes_every_format(media: Path, name: str) -> None:
    codec, rate, channels, _, _ = FORMATS[name]
    source = open_audio(media / name)
    assert source.sample_rate == rate and source.channels == channels
    assert source.duration_s is not None and abs(source.duration_s - DURATION) < 0.1
    pieces = list(source.chunks(chunk_s=0.5))
    mono = np.concatenate([p.mono16k for p in pieces])
    assert mono.dtype == np.float32 and mono.ndim == 1
    # Resamplers flushed: no sample lost against what the decoder itself delivers.
    assert abs(mono.size - round(true_duration(media / name) * TARGET_RATE)) <= 3
    assert abs(mono.size / TARGET_RATE - DURATION) < 0.06  # codec padding only
    assert [p.start_sample for p in pieces] == list(np.cumsum([0] + [p.mono16k.size for p in pieces[:-1]]))
    middle = mono[TARGET_RATE // 4 : -TARGET_RATE // 4]
    peak = np.abs(middle).max()
    assert 0.4 < peak < 0.6, peak  # all channels carry the same 0.5 tone; averaging keeps it
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * TARGET_RATE / middle.size - TONE_HZ) < 5
    mux = [f for p in pieces for f in p.for_mux]
    assert {(f.format.name, f.sample_rate, f.layout.name) for f in mux} == {
        ("fltp", source.mux_rate, source.mux_layout)
    }
    assert abs(sum(f.samples for f in mux) / source.mux_rate - mono.size / TARGET_RATE) < 0.002


def test_mux_format_follows_aac_limits(media: Path) -> None:
    assert (open_audio(media / "tone.flac").mux_rate, open_audio(media / "tone.flac").mux_layout) == (22050, "mono")
    assert open_audio(media / "odd_rate.wav").mux_rate == 48000  # 37800 Hz is not an AAC rate
    surround = open_audio(media / "surround.m4a")
    assert (surround.channels, surround.mux_layout) == (6, "stereo")


def test_chunking_does_not_change_samples(media: Path) -> None:
    whole = load_audio_16k(media / "tone.mp3")
    pieces = drain(media / "tone.mp3", chunk_s=0.1)
    np.testing.assert_array_equal(np.concatenate([p.mono16k for p in pieces]), whole)
    # Streaming: a piece is about chunk_s long, never the whole file.
    assert len(pieces) > 15 and max(p.mono16k.size for p in pieces) < 0.1 * TARGET_RATE + 1200


def test_channels_are_averaged(tmp_path: Path) -> None:
    left, right = tone(16000, 1.0, amplitude=0.6)[0], tone(16000, 1.0, amplitude=0.2)[0]
    path = encode(tmp_path / "lr.wav", "pcm_s16le", 16000, 2, samples=np.stack([left, right]))
    mono = load_audio_16k(path)
    assert abs(np.abs(mono).max() - 0.4) < 0.01


def test_silent_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(24000, np.float32), 24000)
    mono = load_audio_16k(path)
    assert mono.size == 16000 and not mono.any()


def test_write_wav_round_trip(tmp_path: Path) -> None:
    samples = tone(16000, 0.5)[0]
    write_wav(tmp_path / "a.wav", samples, 16000)
    source = open_audio(tmp_path / "a.wav")
    assert (source.sample_rate, source.channels) == (16000, 1)
    np.testing.assert_allclose(load_audio_16k(tmp_path / "a.wav"), samples, atol=1 / 32000)
    with pytest.raises(ValueError):
        write_wav(tmp_path / "b.wav", np.zeros((2, 10)), 16000)


def test_format_change_mid_stream_keeps_every_sample() -> None:
    converter = _Converter(48000, "mono")
    first = _audio_frame(tone(44100, 0.5)[:, :22050], "fltp", "mono", 44100, 0)
    second = _audio_frame(tone(22050, 0.5, 2), "s16", "stereo", 22050, 0)
    parts = [converter.push(first), converter.push(second), converter.flush()]
    assert abs(sum(m.size for m, _ in parts) - TARGET_RATE) <= 2
    assert abs(sum(f.samples for _, mux in parts for f in mux) - 48000) <= 2


def expect(error: type[AudioError], path: Path, *words: str) -> str:
    """Assert that opening and decoding ``path`` raises exactly ``error`` naming the file."""
    with pytest.raises(AudioError) as info:
        drain(path)
    assert type(info.value) is error, repr(info.value)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    expect(AudioError, tmp_path / "nope.wav", "not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.wav").mkdir()
    expect(AudioError, tmp_path / "folder.wav", "directory")


def test_zero_length_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp3").write_bytes(b"")
    expect(EmptyAudioError, tmp_path / "empty.mp3", "empty")


def test_header_without_samples(tmp_path: Path) -> None:
    write_wav(tmp_path / "no_samples.wav", np.zeros(0, np.float32), 16000)
    expect(EmptyAudioError, tmp_path / "no_samples.wav", "no audio samples")


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("this is not a recording\njust words\n")
    expect(CorruptAudioError, tmp_path / "notes.txt")


def test_image_file(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "face.png"), np.zeros((16, 16, 3), np.uint8))
    expect(CorruptAudioError, tmp_path / "face.png", "image")


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "noise.m4a").write_bytes(np.random.default_rng(0).bytes(4000))
    expect(CorruptAudioError, tmp_path / "noise.m4a")


def test_video_without_audio(tmp_path: Path) -> None:
    path = encode(tmp_path / "silent.mp4", None, video="libx264", seconds=0.4)
    message = expect(AudioError, path, "has no audio track")
    assert "give a file with speech" in message


def damaged(src: Path, dst: Path, *, keep: float = 1.0, smash_at: float | None = None) -> Path:
    data = bytearray(src.read_bytes())
    if smash_at is not None:
        start = int(len(data) * smash_at)
        data[start : start + 1500] = b"\xff" * 1500
    dst.write_bytes(bytes(data[: int(len(data) * keep)]))
    return dst


def test_truncated_and_overwritten_mp3(media: Path, tmp_path: Path) -> None:
    path = damaged(media / "tone.mp3", tmp_path / "broken.mp3", keep=0.5, smash_at=0.3)
    expect(CorruptAudioError, path)


def test_mp3_cut_in_half_is_truncated(media: Path, tmp_path: Path) -> None:
    path = damaged(media / "tone.mp3", tmp_path / "half.mp3", keep=0.5)
    expect(CorruptAudioError, path, "truncated")


def test_m4a_cut_in_half(media: Path, tmp_path: Path) -> None:
    expect(CorruptAudioError, damaged(media / "tone.m4a", tmp_path / "half.m4a", keep=0.5))


def test_ogg_with_lost_pages(media: Path, tmp_path: Path) -> None:
    expect(CorruptAudioError, damaged(media / "tone.ogg", tmp_path / "holes.ogg", smash_at=0.5))


def test_mkv_cut_in_half(media: Path, tmp_path: Path) -> None:
    expect(CorruptAudioError, damaged(media / "clip.mkv", tmp_path / "half.mkv", keep=0.5), "truncated")


def test_live_webm_without_length_is_fine(tmp_path: Path) -> None:
    # Browsers' MediaRecorder writes WebM as a stream: no duration, no index.
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b: bytes) -> int:
            self.data += bytes(b)
            return len(b)

    pipe = Pipe()
    with av.open(pipe, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        samples = tone(48000, 1.0)
        for start in range(0, samples.shape[1], 960):
            out.mux(stream.encode(_audio_frame(samples[:, start : start + 960], "flt", "mono", 48000, start)))
        out.mux(stream.encode(None))
    (tmp_path / "live.webm").write_bytes(bytes(pipe.data))
    source = open_audio(tmp_path / "live.webm")
    assert source.duration_s is None
    assert abs(sum(p.mono16k.size for p in source.chunks()) - TARGET_RATE) <= 2


def test_error_in_the_middle_of_decoding(media: Path, tmp_path: Path) -> None:
    path = damaged(media / "clip.mp4", tmp_path / "bad_middle.mp4", smash_at=0.5)
    source = open_audio(path)  # the start is intact, so probing succeeds
    got = []
    with pytest.raises(CorruptAudioError) as info:
        for piece in source.chunks(chunk_s=0.25):
            got.append(piece)
    assert got, "pieces before the damage should come through"
    assert "bad_middle.mp4" in str(info.value) and "decoding failed" in str(info.value)


def test_vbr_mp3_without_length_header_is_not_called_truncated(tmp_path: Path) -> None:
    # Without a Xing header FFmpeg estimates the length from the first frame's bit
    # rate; silence at the start makes that estimate far too long.
    rate = 44100
    loud = np.random.default_rng(1).uniform(-0.5, 0.5, (1, rate * 2)).astype(np.float32)
    samples = np.concatenate([np.zeros((1, rate * 2), np.float32), loud], axis=1)
    path = tmp_path / "vbr.mp3"
    with av.open(str(path), "w", options={"write_xing": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        stream.codec_context.qscale = 4
        stream.codec_context.flags |= av.codec.context.Flags.qscale  # VBR
        fmt = stream.codec_context.format.name
        for start in range(0, samples.shape[1], 4096):
            out.mux(stream.encode(_audio_frame(samples[:, start : start + 4096], fmt, "mono", rate, start)))
        out.mux(stream.encode(None))
    source = open_audio(path)
    assert not source.duration_exact
    assert abs(sum(p.mono16k.size for p in source.chunks()) / TARGET_RATE - 4.0) < 0.1


def test_source_is_reusable(media: Path) -> None:
    source = open_audio(media / "tone.flac")
    assert isinstance(source, AudioSource)
    first = np.concatenate([p.mono16k for p in source.chunks()])
    second = np.concatenate([p.mono16k for p in source.chunks()])
    np.testing.assert_array_equal(first, second)
    assert os.fspath(source.path).endswith("tone.flac")


def test_pcm16_scales_rounds_and_clips() -> None:
    from emote.model.media.audio_io import pcm16

    x = np.array([-2.0, -1.0, -0.5, 0.0, 1e-6, 0.5, 1.0, 3.0], np.float32)
    out = pcm16(x)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [-32767, -32767, -16384, 0, 0, 16384, 32767, 32767])
    assert pcm16(np.array([0.99999], np.float32))[0] == 32767  # rounds: truncation would give 32766
    ints = np.array([5, -7], np.int16)
    assert pcm16(ints) is ints  # already PCM
    # Round trip keeps a tone to within half a quantisation step.
    t = np.sin(2 * np.pi * 440 * np.arange(960) / 48000).astype(np.float32) * 0.9
    np.testing.assert_allclose(pcm16(t) / 32767.0, t, atol=0.51 / 32767)
