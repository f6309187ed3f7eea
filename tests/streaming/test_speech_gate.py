"""streaming.speech_gate: silero-vad opens the gate for speech, keeps it shut for silence and noise, with hangover.

Two kinds of tests. With the real silero-vad model and espeak-ng speech (1 s of silence either side, low-level
white noise throughout), the gate passes most of the speech and leaves exact zeros elsewhere. With a scripted
model that returns chosen probabilities, the thresholds, the hangover count and the chunk-to-sample alignment are
checked exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from emote.streaming.resample import StreamResampler
from emote.streaming.speech_gate import CHUNK, SAMPLE_RATE, GateConfig, SpeechGate, load_vad_model

SR = SAMPLE_RATE
NOISE_RMS = 0.003  # a quiet room: about -50 dBFS


@pytest.fixture(scope="module")
def vad_model() -> Any:
    pytest.importorskip("silero_vad")
    return load_vad_model()


def real_gate(model: Any, **config: float) -> SpeechGate:
    gate = SpeechGate(GateConfig(**config), model=model)
    gate.reset()  # the module's model is shared: start every gate from a clean model state
    return gate


@functools.lru_cache(maxsize=4)
def spoken(text: str) -> np.ndarray:
    """``text`` from espeak-ng at 16 kHz, trimmed to where the voice starts and ends."""
    from emote.server import tts

    if not tts.espeak_available():
        pytest.skip("espeak-ng (the tts extra) is not installed")
    samples, rate = tts.synthesize(text)
    resampler = StreamResampler(rate, SR)
    out = np.concatenate([resampler.process(samples), resampler.flush()])
    loud = np.flatnonzero(np.abs(out) > 0.02)
    out = out[loud[0] : loud[-1] + 1]
    out.setflags(write=False)
    return out


def with_noise(parts: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The parts one after another plus white noise; returns the signal and each part's start index (and end)."""
    signal = np.concatenate(parts)
    signal = signal + np.random.default_rng(seed).normal(0.0, NOISE_RMS, len(signal)).astype(np.float32)
    return signal.astype(np.float32), np.cumsum([0] + [len(p) for p in parts])


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), np.float32)


def run(gate: SpeechGate, signal: np.ndarray, block: int) -> np.ndarray:
    out = [gate.process(signal[i : i + block]) for i in range(0, len(signal), block)]
    return np.concatenate(out)


SENTENCE = "Good morning. My name is Emote, and I can talk about anything you like."
OTHER = "Open wide, say aah, and then close your mouth again."


@pytest.mark.parametrize("block", [320, 777])
def test_speech_opens_the_gate_and_silence_stays_exact_zeros(vad_model: Any, block: int) -> None:
    signal, edges = with_noise([gap(1.0), spoken(SENTENCE), gap(1.0)])
    out = run(real_gate(vad_model), signal, block)
    assert out.shape == signal.shape and out.dtype == np.float32

    lead, speech, trail = out[: edges[1]], out[edges[1] : edges[2]], out[edges[2] :]
    assert not lead.any(), "the noisy silence before the speech must be gated to exact zeros"
    assert np.mean(speech != 0) > 0.85, "most of the speech passes"
    # Where it is open the gate passes the samples untouched, noise included: no scaling, no fades.
    opened = out != 0
    np.testing.assert_array_equal(out[opened], signal[opened])
    # After the speech it closes again within hangover plus silero's own lag, and stays closed.
    settle = edges[2] + int(0.6 * SR)
    assert not out[settle:].any()
    assert trail[: int(0.1 * SR)].any()  # the hangover: the first 100 ms after the last word still pass


@pytest.mark.parametrize("rms", [NOISE_RMS, 0.05, 0.2])
def test_white_noise_alone_keeps_the_gate_closed(vad_model: Any, rms: float) -> None:
    noise = np.random.default_rng(7).normal(0.0, rms, 3 * SR).astype(np.float32)
    gate = real_gate(vad_model)
    assert not run(gate, noise, 512).any()
    assert not gate.is_open and 0.0 <= gate.probability < GateConfig().open_threshold


def test_a_hum_keeps_the_gate_closed(vad_model: Any) -> None:
    t = np.arange(3 * SR) / SR
    hum = (0.3 * np.sin(2 * np.pi * 100 * t) + 0.1 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    assert not run(real_gate(vad_model), hum, 960).any()


def test_a_pause_shorter_than_the_hangover_stays_open(vad_model: Any) -> None:
    signal, edges = with_noise([gap(1.0), spoken(OTHER), gap(0.15), spoken(SENTENCE), gap(1.0)])
    out = run(real_gate(vad_model, hangover_ms=300.0), signal, 320)
    pause = out[edges[2] : edges[3]]
    assert np.all(pause != 0), "a 150 ms pause inside speech must not close a gate with 300 ms hangover"


def test_a_pause_longer_than_the_hangover_closes_and_speech_reopens(vad_model: Any) -> None:
    signal, edges = with_noise([gap(1.0), spoken(OTHER), gap(1.0), spoken(SENTENCE), gap(1.0)])
    out = run(real_gate(vad_model, hangover_ms=300.0), signal, 320)
    pause = out[edges[2] : edges[3]]
    assert np.all(pause[: int(0.25 * SR)] != 0), "it must not close before the hangover has run"
    assert not pause[int(0.5 * SR) :].any(), "it must have closed half a second into a one-second pause"
    assert np.mean(out[edges[3] : edges[4]] != 0) > 0.85, "the next sentence opens it again"


@pytest.mark.parametrize("block", [1_000, 100, 320, 512, 777, 16_000])
def test_output_length_equals_input_length_for_any_block_size(vad_model: Any, block: int) -> None:
    signal, edges = with_noise([gap(0.5), spoken(SENTENCE)[: 2 * SR], gap(0.5)], seed=block)
    gate = real_gate(vad_model)
    opened = 0
    for start in range(0, len(signal), block):
        piece = signal[start : start + block]
        out = gate.process(piece)
        assert out.shape == piece.shape and out.dtype == np.float32
        assert np.all((out == 0) | (out == piece))
        opened += int(np.count_nonzero(out))
    assert opened > 0.8 * (edges[2] - edges[1])  # whatever the blocking, the speech got through
    assert gate.process(np.zeros(0, np.float32)).shape == (0,)


def test_reset_forgets_the_stream(vad_model: Any) -> None:
    speech = spoken(SENTENCE)
    # Stop in the middle of a word and of a 512-sample chunk: the gate is open and holds a partial chunk.
    head, _ = with_noise([speech[: int(1.4 * SR) + 300]], seed=1)  # 1.4 s: inside "My name"
    tail, _ = with_noise([gap(1.0), speech], seed=2)

    gate = real_gate(vad_model)
    run(gate, head, 333)
    assert gate.is_open and gate.probability > 0.9
    carried = run(gate, tail, 333)
    assert carried[:CHUNK].any(), "without reset, the open gate carries over into the next stream"

    run(gate, head, 333)
    gate.reset()
    assert not gate.is_open and gate.probability == 0.0
    after_reset = run(gate, tail, 333)
    assert not after_reset[:SR].any()
    fresh = run(real_gate(vad_model), tail, 333)
    np.testing.assert_array_equal(after_reset, fresh)  # exactly as if the gate were new


def test_default_gate_loads_its_own_model() -> None:
    pytest.importorskip("silero_vad")
    gate = SpeechGate()
    assert gate.config == GateConfig() and not gate.is_open
    assert not gate.process(np.zeros(2 * CHUNK, np.float32)).any()


# --- exact behaviour with a scripted model ----------------------------------------------------------------


class ScriptedModel:
    """Stands in for silero-vad: returns the given probabilities, one per 512-sample chunk, and records the chunks."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = list(probabilities)
        self.chunks: list[np.ndarray] = []
        self.resets = 0

    def __call__(self, chunk: Any, sample_rate: int) -> float:
        assert sample_rate == SR and tuple(chunk.shape) == (CHUNK,)
        self.chunks.append(chunk.numpy().copy())
        return self.probabilities[len(self.chunks) - 1]

    def reset_states(self) -> None:
        self.resets += 1


def chunk_states(probabilities: list[float], config: GateConfig) -> list[bool]:
    """Open or closed after each chunk, run through the gate one whole chunk at a time."""
    gate = SpeechGate(config, model=ScriptedModel(probabilities))
    states = []
    for _ in probabilities:
        out = gate.process(np.ones(CHUNK, np.float32))
        assert out.all() == gate.is_open and (out.any() == gate.is_open)
        states.append(gate.is_open)
    return states


LO, HI, MID = 0.1, 0.9, 0.4  # below close (0.35), above open (0.5), between the two


@pytest.mark.parametrize(("hangover_ms", "lows_to_close"), [(0.0, 1), (32.0, 1), (33.0, 2), (200.0, 7), (320.0, 10)])
def test_hangover_counts_whole_chunks_of_low_probability(hangover_ms: float, lows_to_close: int) -> None:
    config = GateConfig(hangover_ms=hangover_ms)
    stays_open = chunk_states([HI] + [LO] * (lows_to_close - 1) + [HI], config)
    assert all(stays_open), "fewer low chunks than the hangover must not close the gate"
    closes = chunk_states([HI] + [LO] * lows_to_close + [LO], config)
    assert closes == [True] * lows_to_close + [False, False]


def test_a_speech_chunk_restarts_the_hangover() -> None:
    config = GateConfig(hangover_ms=200.0)  # 7 low chunks close it
    states = chunk_states([HI] + [LO] * 6 + [HI] + [LO] * 6 + [HI] + [LO] * 7, config)
    assert states == [True] * 21 + [False]


def test_hysteresis_between_the_thresholds() -> None:
    config = GateConfig(hangover_ms=200.0)
    # Closed: a probability between close and open does not open it.
    assert chunk_states([MID] * 5, config) == [False] * 5
    # Open: it does not count towards closing, and it restarts the count of low chunks.
    assert all(chunk_states([HI] + [MID] * 20, config))
    assert all(chunk_states([HI] + [LO] * 6 + [MID] + [LO] * 6, config))
    # The thresholds themselves: open at exactly open_threshold; close_threshold itself is not "below".
    assert chunk_states([0.5], config) == [True]
    assert all(chunk_states([HI] + [0.35] * 10, config))
    assert chunk_states([0.4999], config) == [False]


@pytest.mark.parametrize("block", [1, 100, 320, 511, 512, 513, 777, 5000])
def test_decisions_apply_from_the_chunk_that_completes_them(block: int) -> None:
    # 16 chunks: closed, opens at chunk 3, closes after chunk 10 (hangover 0: one low chunk closes it).
    probabilities = [LO, LO, LO, HI, HI, HI, HI, HI, HI, HI, LO, LO, HI, LO, LO, LO]
    n = len(probabilities) * CHUNK
    signal = np.arange(1, n + 1, dtype=np.float32)  # never zero: output zero means "gated"
    model = ScriptedModel(probabilities)
    gate = SpeechGate(GateConfig(hangover_ms=0.0), model=model)
    out = run(gate, signal, block)

    # The chunks the model saw are consecutive 512-sample slices of the stream, in order.
    assert len(model.chunks) == len(probabilities)
    for k, chunk in enumerate(model.chunks):
        np.testing.assert_array_equal(chunk, signal[k * CHUNK : (k + 1) * CHUNK])

    # Reference: open after each chunk; a sample takes the decision made when its chunk completes if its block
    # reaches that far, otherwise the decision in force when its block was processed.
    after = []
    is_open = False
    for p in probabilities:
        is_open = p >= 0.5 if not is_open else p >= 0.35
        after.append(is_open)
    expected = np.zeros(n, bool)
    for start in range(0, n, block):
        end = min(start + block, n)
        for i in range(start, end):
            k = i // CHUNK
            if (k + 1) * CHUNK <= end:
                expected[i] = after[k]
            else:
                expected[i] = after[k - 1] if k > 0 else False
    np.testing.assert_array_equal(out != 0, expected)
    np.testing.assert_array_equal(out[expected], signal[expected])


def test_reset_resets_the_model_and_drops_a_partial_chunk() -> None:
    model = ScriptedModel([HI, LO, LO])
    gate = SpeechGate(GateConfig(hangover_ms=1000.0), model=model)
    gate.process(np.ones(CHUNK + 200, np.float32))  # opens, and holds 200 samples of the next chunk
    assert gate.is_open and gate.probability == HI
    gate.reset()
    assert model.resets == 1 and not gate.is_open and gate.probability == 0.0
    out = gate.process(np.full(CHUNK, 2.0, np.float32))
    np.testing.assert_array_equal(model.chunks[-1], np.full(CHUNK, 2.0))  # a whole new chunk, no stale samples
    assert not out.any()  # LO after reset: closed, where the old hangover of 1 s would have kept it open


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"open_threshold": 0.3, "close_threshold": 0.4}, r"close_threshold \(0.4\) <= open_threshold \(0.3\)"),
    ({"open_threshold": 1.0}, r"open_threshold \(1.0\) < 1"),
    ({"close_threshold": 0.0}, r"0 < close_threshold \(0.0\)"),
    ({"close_threshold": -0.1}, r"0 < close_threshold \(-0.1\)"),
    ({"hangover_ms": -1.0}, r"hangover_ms=-1.0: must be >= 0"),
])  # fmt: skip
def test_config_validation_names_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=rf"GateConfig.*{message}"):
        GateConfig(**kwargs)


def test_config_accepts_the_edges() -> None:
    GateConfig(open_threshold=0.5, close_threshold=0.5, hangover_ms=0.0)  # no hysteresis, no hangover: allowed
    GateConfig(open_threshold=0.999, close_threshold=0.001)


def test_near_silent_chunks_skip_the_model() -> None:
    class CountingModel:
        calls = 0

        def __call__(self, chunk: object, rate: int) -> float:
            CountingModel.calls += 1
            return 0.9

        def reset_states(self) -> None:
            pass

    gate = SpeechGate(model=CountingModel())
    quiet = np.full(512 * 10, 10 ** (-70 / 20), np.float32)  # -70 dBFS
    assert not gate.process(quiet).any() and CountingModel.calls == 0
    loud = np.full(512 * 2, 0.1, np.float32)
    assert gate.process(loud).any() and CountingModel.calls == 2
    with pytest.raises(ValueError, match="silence_dbfs"):
        GateConfig(silence_dbfs=0.0)


def test_warm_up_calls_the_model_until_warm_and_leaves_a_fresh_state() -> None:
    class CountingModel:
        def __init__(self) -> None:
            self.calls = self.resets = 0

        def __call__(self, chunk: object, rate: int) -> float:
            self.calls += 1
            return 0.9

        def reset_states(self) -> None:
            self.resets += 1

    model = CountingModel()
    gate = SpeechGate(model=model)
    gate.warm_up()
    assert model.calls >= 40 and not gate.is_open and model.resets == 1
    calls = model.calls
    gate.warm_up()  # already warm: no more calls
    assert model.calls == calls and model.resets == 2
