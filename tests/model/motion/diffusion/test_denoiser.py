"""The denoiser: shapes, determinism, its conditioning paths, and config + weights that round-trip."""

from __future__ import annotations

from pathlib import Path

import torch

from emote.model.motion.diffusion.denoiser import CONFIG_FILE, WEIGHTS_FILE, MotionDenoiser
from tests.model.motion.diffusion._tiny import TINY, tiny_model


def inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, d = TINY.frames, TINY.motion_dim
    known = torch.zeros(batch, s)
    known[:, : TINY.carried] = 1
    return {"noisy": torch.randn(batch, s, d, generator=g), "t": torch.randint(0, 1000, (batch,), generator=g),
            "carried": torch.randn(batch, s, d, generator=g), "known": known,
            "audio": torch.randn(batch, s, TINY.audio_dim, generator=g), "has_audio": torch.ones(batch, s),
            "rest": torch.rand(batch, 52, generator=g)}


def test_shapes_and_determinism() -> None:
    model = tiny_model()
    x = inputs()
    out = model(**x)
    assert out.shape == (3, TINY.frames, TINY.motion_dim) and torch.isfinite(out).all()
    assert torch.equal(out, model(**x))  # eval mode: the same inputs, the same output
    assert torch.equal(out, tiny_model()(**x))  # the same seed, the same model


def test_every_condition_reaches_the_output() -> None:
    model = tiny_model()
    x = inputs()
    base = model(**x)
    for name, change in (("audio", lambda v: v + 1), ("has_audio", lambda v: v * 0), ("rest", lambda v: 1 - v),
                         ("t", lambda v: (v + 500) % 1000), ("carried", lambda v: v + 1)):
        changed = model(**{**x, name: change(x[name])})
        assert (changed - base).abs().max() > 1e-4, name


def test_audio_beyond_the_window_does_not_leak_backwards() -> None:
    """The audio convolution is causal: frames only hear audio up to their own (the rest is attention,
    which the has_audio mask controls)."""
    model = tiny_model()
    x = inputs(batch=1)
    a = model.audio_in(x["audio"]).transpose(1, 2)
    conv = model.audio_conv(torch.nn.functional.pad(a, (TINY.conv_frames - 1, 0)))
    later = x["audio"].clone()
    later[:, -1] += 10
    a2 = model.audio_in(later).transpose(1, 2)
    conv2 = model.audio_conv(torch.nn.functional.pad(a2, (TINY.conv_frames - 1, 0)))
    assert torch.equal(conv[..., :-1], conv2[..., :-1]) and not torch.equal(conv[..., -1], conv2[..., -1])


def test_config_and_weights_round_trip(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    model.save(tmp_path, {"generator": {"emit_frames": 2}})
    assert (tmp_path / CONFIG_FILE).is_file() and (tmp_path / WEIGHTS_FILE).is_file()
    loaded, extra = MotionDenoiser.load(tmp_path)
    assert loaded.cfg == model.cfg and extra == {"generator": {"emit_frames": 2}}
    x = inputs(seed=5)
    assert torch.equal(loaded(**x), model(**x))
    assert torch.equal(loaded.active, model.active) and torch.equal(loaded.mel, model.mel)
