"""Audio input: the first stage of the pipeline, from a user's file to samples.

Whatever the user hands in (a WAV or MP3 recording, an OGG/Opus voice note, an
M4A, or a video whose sound track carries the speech) is probed here once and
then decoded in a single streaming pass with PyAV. Each decoded piece is
delivered twice: as 16 kHz mono float32 for the audio-to-motion generators, and
as ``av.AudioFrame`` objects already converted to what the AAC encoder of
:mod:`model.media.video_out` accepts, so the rendered MP4 carries the original sound
without a second decode. Memory stays bounded by the chunk length, never by the
file length. Every way a file can be unusable ends in one of the
:mod:`model.errors` audio errors, naming the file and saying what to do.
"""

from __future__ import annotations

import re
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from emote.model.errors import AudioError, CorruptAudioError, EmptyAudioError

TARGET_RATE = 16000
#: Sample rates the AAC encoder (and the MP4 spec) accept.
AAC_RATES = frozenset(
    {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350}
)
AAC_FALLBACK_RATE = 48000

# Demuxers whose declared duration comes from a header or an index, so that a
# decoded length far below it means lost data. Others (ADTS, raw MP3 without a
# Xing/VBRI header) only estimate it from the bit rate, often wildly for VBR.
_EXACT_DURATION_FORMATS = ("mov", "mp4", "ogg", "flac", "wav")
_MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
_IMAGE_FORMATS = ("image2", "gif", "apng", "webp")
_FIX_HINT = "re-export or re-download it (WAV, MP3 or M4A work everywhere)"


@dataclass(frozen=True)
class DecodedAudio:
    """One piece of decoded audio, in the two shapes the pipeline needs.

    Attributes:
        mono16k: (N,) float32 samples at 16 kHz, the mean of all channels.
        for_mux: frames in ``fltp`` at :attr:`AudioSource.mux_rate` with layout
            :attr:`AudioSource.mux_layout`, ready for ``Mp4Writer.write_audio``.
        start_sample: stream index (at 16 kHz) of ``mono16k[0]``.
    """

    mono16k: np.ndarray
    for_mux: list[av.AudioFrame] = field(default_factory=list)
    start_sample: int = 0


@dataclass(frozen=True)
class AudioSource:
    """A probed audio input; :meth:`chunks` decodes it.

    Attributes:
        path: the file.
        duration_s: the duration the container declares (may be None or inexact).
        sample_rate: sample rate of the original audio stream.
        channels: channel count of the original audio stream.
        stream_index: which stream of the container is decoded.
        duration_exact: whether ``duration_s`` comes from a header or index
            (then a much shorter decode means the file is truncated) rather
            than a bit-rate estimate.
    """

    path: Path
    duration_s: float | None
    sample_rate: int
    channels: int
    stream_index: int = 0
    duration_exact: bool = False

    @property
    def mux_rate(self) -> int:
        """Sample rate of the ``for_mux`` frames: the original if AAC supports it."""
        return self.sample_rate if self.sample_rate in AAC_RATES else AAC_FALLBACK_RATE

    @property
    def mux_layout(self) -> str:
        """Channel layout of the ``for_mux`` frames: ``"mono"`` or ``"stereo"``."""
        return "mono" if self.channels == 1 else "stereo"

    def chunks(self, chunk_s: float = 1.0) -> Iterator[DecodedAudio]:
        """Decode the file once, streaming, in pieces of about ``chunk_s`` seconds.

        Pieces follow the decoder's frames, so each holds at least ``chunk_s``
        seconds except the last; together they hold every sample (the
        resamplers are flushed at the end).

        Args:
            chunk_s: target length of a piece in seconds (> 0).

        Yields:
            DecodedAudio pieces in stream order.

        Raises:
            CorruptAudioError: the data cannot be decoded, or far less audio
                decodes than the file declares (truncated).
        """
        if not chunk_s > 0:
            raise ValueError(f"chunk_s must be > 0, got {chunk_s}")
        target = max(1, int(round(chunk_s * TARGET_RATE)))
        pending: list[np.ndarray] = []
        pending_mux: list[av.AudioFrame] = []
        n_pending = 0
        start = 0
        with _open_container(self.path) as container:
            stream = container.streams[self.stream_index]
            assert isinstance(stream, av.audio.stream.AudioStream)
            converter = _Converter(self.mux_rate, self.mux_layout)
            for frame in _decode(container, stream, self.path):
                mono, mux = converter.push(frame)
                pending.append(mono)
                pending_mux.extend(mux)
                n_pending += mono.size
                if n_pending >= target:
                    yield DecodedAudio(np.concatenate(pending), pending_mux, start)
                    start += n_pending
                    pending, pending_mux, n_pending = [], [], 0
            mono, mux = converter.flush()
            pending.append(mono)
            pending_mux.extend(mux)
            n_pending += mono.size
        self._check_complete((start + n_pending) / TARGET_RATE)
        if n_pending or pending_mux:
            yield DecodedAudio(np.concatenate(pending), pending_mux, start)

    def _check_complete(self, decoded_s: float) -> None:
        """Raise if the decoded length falls well short of a trustworthy declared one."""
        if not self.duration_exact or self.duration_s is None:
            return
        if self.duration_s - decoded_s > max(0.5, 0.05 * self.duration_s):
            raise CorruptAudioError(
                f"{self.path} is truncated or damaged: it declares {self.duration_s:.2f} s of audio "
                f"but only {decoded_s:.2f} s could be decoded; {_FIX_HINT}"
            )


class _Converter:
    """The two resamplers, rebuilt whenever the decoded format changes mid-stream."""

    def __init__(self, mux_rate: int, mux_layout: str) -> None:
        self.mux_rate = mux_rate
        self.mux_layout = mux_layout
        self.signature: tuple[str, str, int] | None = None
        self.to_16k: av.AudioResampler | None = None
        self.to_mux: av.AudioResampler | None = None

    def _build(self, frame: av.AudioFrame) -> None:
        self.signature = (frame.format.name, frame.layout.name, frame.sample_rate)
        # Keep every channel at 16 kHz and average in numpy: swresample's own
        # downmix weights channels by 1/sqrt(2) instead of averaging.
        self.to_16k = av.AudioResampler(format="fltp", rate=TARGET_RATE)
        # A surround downmix adds channels up; let swresample scale it so AAC does not clip.
        options = {"rematrix_maxval": "1.0"} if frame.layout.nb_channels > 2 else None
        self.to_mux = av.AudioResampler(
            format="fltp", layout=self.mux_layout, rate=self.mux_rate, options=options
        )

    def push(self, frame: av.AudioFrame) -> tuple[np.ndarray, list[av.AudioFrame]]:
        signature = (frame.format.name, frame.layout.name, frame.sample_rate)
        if signature != self.signature:
            mono, mux = self.flush()
            self._build(frame)
            mono2, mux2 = self._convert(frame)
            return np.concatenate([mono, mono2]), mux + mux2
        return self._convert(frame)

    def flush(self) -> tuple[np.ndarray, list[av.AudioFrame]]:
        if self.to_16k is None or self.to_mux is None:
            return np.zeros(0, np.float32), []
        return self._convert(None)

    def _convert(self, frame: av.AudioFrame | None) -> tuple[np.ndarray, list[av.AudioFrame]]:
        assert self.to_16k is not None and self.to_mux is not None
        parts = [f.to_ndarray() for f in self.to_16k.resample(frame)]
        if parts:
            mono = np.concatenate(parts, axis=1).mean(axis=0, dtype=np.float32)
        else:
            mono = np.zeros(0, np.float32)
        return mono, self.to_mux.resample(frame)


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="replace")
    except FileNotFoundError as exc:
        raise AudioError(f"audio file not found: {path}; check the path") from exc
    except PermissionError as exc:
        raise AudioError(f"cannot read audio file {path}: permission denied; fix its permissions") from exc
    except (av.FFmpegError, OSError) as exc:
        raise CorruptAudioError(
            f"cannot read {path} as audio or video ({_reason(exc)}): the file is corrupt, truncated "
            f"or not a media file; {_FIX_HINT}"
        ) from exc


def _decode(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, path: Path
) -> Iterator[av.AudioFrame]:
    """Decoded frames of ``stream``; any FFmpeg failure becomes CorruptAudioError."""
    decoded_s = 0.0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            frames = packet.decode()
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:
            raise CorruptAudioError(
                f"{path} is corrupt: decoding failed after {decoded_s:.2f} s ({_reason(exc)}); {_FIX_HINT}"
            ) from exc
        for frame in frames:
            if frame.samples:
                decoded_s += frame.samples / frame.sample_rate
                yield frame


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and path noise PyAV adds."""
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(text)).strip() or type(exc).__name__


def _declared_duration(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, path: Path
) -> tuple[float | None, bool]:
    """The audio length the file states, and whether that number is exact (not a bit-rate guess)."""
    names = container.format.name.split(",")
    tag = stream.metadata.get("DURATION")  # Matroska writes per-track lengths when it finalises a file
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag or "")
    if match:
        h, m, s = match.groups()
        return int(h) * 3600 + int(m) * 60 + float(s), True
    if stream.duration is not None and stream.time_base:
        exact = any(name in _EXACT_DURATION_FORMATS for name in names)
        if "mp3" in names:
            with open(path, "rb") as f:
                head = f.read(16384)
            exact = any(tag in head for tag in _MP3_LENGTH_TAGS)
        return float(stream.duration * stream.time_base), exact
    # The container's length may belong to a longer video track; trust it for audio only files.
    if container.duration is not None and not container.streams.video:
        return container.duration / 1_000_000, False
    return None, False


def open_audio(path: str | Path) -> AudioSource:
    """Probe an audio or video file and check that it holds decodable audio.

    Decodes only up to the first audio frame, so it fails fast on a bad file.

    Args:
        path: a wav, mp3, ogg/opus, flac, m4a/aac file, or a video with a sound track.

    Returns:
        The probed :class:`AudioSource`; call :meth:`AudioSource.chunks` to decode it.

    Raises:
        AudioError: the file is missing or unreadable, or a video without sound.
        EmptyAudioError: the file holds no samples.
        CorruptAudioError: the file cannot be decoded as audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}; check the path")
    if path.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file; give the path of a speech recording")
    if path.is_file() and path.stat().st_size == 0:
        raise EmptyAudioError(f"audio file {path} is empty (0 bytes); give a file with speech")
    with _open_container(path) as container:
        if not container.streams.audio:
            raise _no_audio_error(container, path)
        stream = container.streams.best("audio") or container.streams.audio[0]
        assert isinstance(stream, av.audio.stream.AudioStream)
        if stream.codec_context is None:
            raise CorruptAudioError(
                f"{path}: its audio codec {stream.codec_tag or 'unknown'} cannot be decoded; "
                f"convert it to WAV, MP3 or M4A"
            )
        first = next(_decode(container, stream, path), None)
        if first is None:
            raise EmptyAudioError(f"{path} holds no audio samples; give a file with speech")
        duration_s, exact = _declared_duration(container, stream, path)
        return AudioSource(
            path=path,
            duration_s=duration_s,
            sample_rate=first.sample_rate,
            channels=first.layout.nb_channels,
            stream_index=stream.index,
            duration_exact=exact,
        )


def _no_audio_error(container: av.container.InputContainer, path: Path) -> AudioError:
    names = container.format.name.split(",")
    if any(n in _IMAGE_FORMATS or n.endswith("_pipe") for n in names):
        return CorruptAudioError(
            f"{path} is an image ({container.format.name}), not audio; give a speech recording "
            f"or a video with sound"
        )
    if not container.streams.video:
        return CorruptAudioError(
            f"{path} holds no audio or video (format {container.format.name}); give a speech recording "
            f"or a video with sound"
        )
    return AudioError(f"{path} has no audio track; give a file with speech")


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Decode a whole file to 16 kHz mono float32 (for short clips and tests).

    Args:
        path: any file :func:`open_audio` accepts.

    Returns:
        (N,) float32 samples in [-1, 1] (more only if the source itself clips).
    """
    pieces = [piece.mono16k for piece in open_audio(path).chunks(chunk_s=10.0)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def pcm16(samples: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] as int16 PCM: clipped, then rounded to the nearest step (int16 passes through).

    The one float-to-PCM conversion of the project (files, live tracks, speech queues, benchmarks):
    rounding, not truncation, so that silence stays exactly 0 and the error is at most half a step.

    Args:
        samples: (N,) float or int16 samples.
    """
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples
    return np.round(np.clip(samples.astype(np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono samples as a 16-bit PCM WAV file.

    Args:
        path: destination; its parent directory must exist.
        samples: (N,) float samples in [-1, 1] (clipped) or int16 samples.
        sample_rate: samples per second.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"write_wav takes mono (N,) samples, got shape {samples.shape}")
    samples = pcm16(samples)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(samples.astype("<i2").tobytes())
