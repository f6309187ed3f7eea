"""Tests for server.tts: espeak-ng through ctypes gives usable speech, timings and clear errors."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from emote.model.errors import DependencyError, OptionError
from emote.model.media.audio_io import load_audio_16k, write_wav
from emote.server import tts

needs_espeak = pytest.mark.skipif(
    not tts.espeak_available(), reason="espeakng-loader (the tts extra) is not installed"
)


@needs_espeak
def test_speech_comes_out() -> None:
    samples, rate = tts.synthesize("Hello world, this is Emote speaking.")
    assert rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 1.0 < samples.size / rate < 5.0
    assert 0.1 < np.abs(samples).max() <= 1.0
    voiced = np.sqrt(np.mean(samples[: rate // 2] ** 2))
    assert voiced > 0.01


@needs_espeak
def test_rate_changes_length() -> None:
    fast, rate = tts.synthesize("one two three four five six", words_per_minute=350)
    slow, _ = tts.synthesize("one two three four five six", words_per_minute=100)
    assert slow.size > 2 * fast.size


@needs_espeak
def test_voices() -> None:
    english, _ = tts.synthesize("Good morning", voice="en-us")
    german, _ = tts.synthesize("Guten Morgen", voice="de")
    british, _ = tts.synthesize("Good morning", voice="en-gb")  # a language tag, found by properties
    assert english.size and german.size and british.size
    with pytest.raises(OptionError, match="klingon-xx"):
        tts.synthesize("Hello", voice="klingon-xx")


@pytest.mark.parametrize("text", ["", "   \n\t", "\x00"])
def test_empty_text(text: str) -> None:
    with pytest.raises(OptionError, match="empty"):
        tts.synthesize(text)


@pytest.mark.parametrize("wpm", [10, 1000])
def test_rate_out_of_range(wpm: int) -> None:
    with pytest.raises(OptionError, match="words_per_minute"):
        tts.synthesize("Hello", words_per_minute=wpm)


@needs_espeak
def test_word_and_phoneme_timings() -> None:
    text = "Talking portraits move their lips."
    speech = tts.synthesize_with_events(text)
    words = [e for e in speech.events if e.kind == "word"]
    assert [text[e.text_offset : e.text_offset + e.length] for e in words] == [
        "Talking", "portraits", "move", "their", "lips",
    ]  # fmt: skip
    times = [e.time_ms for e in speech.events]
    assert times == sorted(times)
    assert times[-1] <= 1000 * speech.samples.size / speech.sample_rate + 1
    phonemes = [e.phoneme for e in speech.events if e.kind == "phoneme"]
    assert len(phonemes) > 15 and all(phonemes)


@needs_espeak
def test_threads_get_their_own_speech() -> None:
    # espeak-ng keeps pitch-flutter state between calls, so repeated output
    # differs by a few milliseconds; texts of very different lengths still
    # show whether concurrent calls got mixed up.
    texts = ["Hi.", "Three words here.", "This sentence has quite a few more words in it.", "Ok then."]
    expected = [tts.synthesize(t)[0].size for t in texts]
    results: dict[int, list[int]] = {i: [] for i in range(len(texts))}

    def work(i: int) -> None:
        for _ in range(3):
            results[i].append(tts.synthesize(texts[i])[0].size)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, size in enumerate(expected):
        assert len(results[i]) == 3
        for got in results[i]:
            assert abs(got - size) < 0.05 * size


@needs_espeak
def test_output_feeds_the_audio_pipeline(tmp_path: Path) -> None:
    samples, rate = tts.synthesize("The avatar hears this.")
    write_wav(tmp_path / "tts.wav", samples, rate)
    mono = load_audio_16k(tmp_path / "tts.wav")
    assert abs(mono.size - samples.size * 16000 / rate) <= 2


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    monkeypatch.setattr(tts, "_ENGINE", None)
    assert not tts.espeak_available()
    with pytest.raises(DependencyError, match=r"pip install 'emote\[tts\]'"):
        tts.synthesize("Hello")
