"""The denoiser: a small transformer over a window of motion frames, conditioned on audio and the portrait.

One window is ``carried + generated`` frames (the last frames of the previous window, EMO's "motion
frames", then the frames to make). Every frame is one token, built from

- the noisy motion of a generated frame, or the clean motion of a carried one, and which it is;
- the frame's audio features (:mod:`~emote.model.motion.diffusion.features`), or what the fixed
  articulation prior (:mod:`~emote.model.motion.diffusion.prior`) predicts from them beside the voice's
  prosody, through a small causal convolution over frames, or a learned *null audio* embedding where
  there is no audio yet (beyond the lookahead) or where classifier-free guidance asks for none;
- a learned position.

The diffusion time and the portrait's rest expression (its 52 coefficients) modulate every block
(adaLN-zero, as in DiT). The network predicts the clean motion of every frame (``x0``; the loss
looks at the generated ones). Motion is normalised (:class:`MotionNorm`): each dimension is the
change from the portrait's own frame, scaled by statistics of the training data that travel with
the weights. Config and weights round-trip as ``config.json`` + ``model.safetensors``
(:meth:`MotionDenoiser.save` / :meth:`MotionDenoiser.load`); running a model needs torch and
safetensors only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass(frozen=True)
class DenoiserConfig:
    """Shape of the network and of its windows (the reason beside each default).

    Attributes:
        motion_dim: dimensions of a motion frame as the model sees it (6 pose + the active coefficients).
        audio_dim: audio features per frame (:data:`~emote.model.motion.diffusion.features.FRAME_DIM`).
        rest_dim: the portrait's coefficients (52).
        carried: frames of the previous window the model continues from (8 = 320 ms: a syllable and a
            half of context, enough for the velocity of the head and the phase of a blink).
        generated: frames per window (8): only the first few are used, the rest is a provisional future
            that keeps them consistent with what comes next.
        width: token width (128: per-op overhead, not FLOPs, sets the CPU cost at this size).
        layers: transformer blocks (3).
        heads: attention heads (4).
        ff: feed-forward width (256).
        conv_frames: frames the audio convolution looks back over (5 = 200 ms, causal).
        dropout: against overfitting ~16 minutes of data.
        prior_frames: frames the articulation prior (:mod:`~.prior`) reads; 0: the denoiser hears the
            raw features instead (the models before it).
        prior_dim: numbers the prior predicts per frame.
        prosody_dim: raw feature columns heard beside the prior (energy, voicing, pitch).
    """

    motion_dim: int = 51
    audio_dim: int = 172
    rest_dim: int = 52
    carried: int = 8
    generated: int = 8
    width: int = 128
    layers: int = 3
    heads: int = 4
    ff: int = 256
    conv_frames: int = 5
    dropout: float = 0.1
    prior_frames: int = 0
    prior_dim: int = 0
    prosody_dim: int = 0

    @property
    def frames(self) -> int:
        return self.carried + self.generated


def mouth_dims(active: np.ndarray | list[int]) -> list[int]:
    """Motion dimensions (6 pose values first, then the active coefficients) that articulate: jaw, mouth.

    A sample's random variation of these only adds lip-sync error, so they are taken from the teacher's
    expected value given the audio, where the rest (head, eyes, brows) is sampled.
    """
    from emote.model.motion.interface import ARKIT_NAMES

    articulating = ("jaw", "mouth", "tongue", "cheekPuff")
    return [6 + i for i, c in enumerate(active) if ARKIT_NAMES[int(c)].startswith(articulating)]


def blink_dims(active: np.ndarray | list[int]) -> list[int]:
    """Motion dimensions of the two eyeBlink coefficients (sampled at their own temperature: see
    ``TrainConfig.blink_noise``)."""
    from emote.model.motion.interface import ARKIT_NAMES

    return [6 + i for i, c in enumerate(active) if ARKIT_NAMES[int(c)].startswith("eyeBlink")]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) diffusion steps -> (B, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each modulated and gated by the condition (adaLN-zero)."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(cfg.width, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False)
        self.ff = nn.Sequential(nn.Linear(cfg.width, cfg.ff), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ff, cfg.width))
        self.modulation = nn.Linear(cfg.width, 6 * cfg.width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, S, W); cond: (B, W)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None, :].chunk(6, dim=2)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ff(h)


class MotionDenoiser(nn.Module):
    """Predicts the clean motion of a window (see the module docstring).

    Buffers ``motion_mean``/``motion_std`` (motion_dim,), ``audio_mean``/``audio_std`` (audio_dim,),
    ``mel`` (257, 40) and ``active`` (motion_dim - 6,) (which ARKit coefficients the model moves) are
    part of the weights.
    """

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.motion_in = nn.Linear(2 * cfg.motion_dim + 1, w)
        heard = cfg.prior_dim + cfg.prosody_dim if cfg.prior_frames else cfg.audio_dim
        self.audio_in = nn.Linear(heard, w)
        self.audio_conv = nn.Conv1d(w, w, cfg.conv_frames)
        self.null_audio = nn.Parameter(torch.zeros(w))
        self.position = nn.Parameter(torch.zeros(cfg.frames, w))
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.rest_in = nn.Linear(cfg.rest_dim, w)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out = nn.Linear(w, cfg.motion_dim)
        nn.init.normal_(self.position, std=0.02)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        for name, size in (("motion_mean", cfg.motion_dim), ("audio_mean", cfg.audio_dim)):
            self.register_buffer(name, torch.zeros(size))
        for name, size in (("motion_std", cfg.motion_dim), ("audio_std", cfg.audio_dim)):
            self.register_buffer(name, torch.ones(size))
        self.register_buffer("mel", torch.zeros(257, 40))
        self.register_buffer("active", torch.arange(cfg.motion_dim - 6))
        if cfg.prior_frames:  # fitted in closed form before training, then fixed (see the prior module)
            self.register_buffer("prior_weight", torch.zeros(cfg.prior_dim, cfg.audio_dim, cfg.prior_frames))
            self.register_buffer("prior_bias", torch.zeros(cfg.prior_dim))
            self.register_buffer("prosody", torch.zeros(cfg.prosody_dim, dtype=torch.long))

    def forward(
        self, noisy: torch.Tensor, t: torch.Tensor, carried: torch.Tensor, known: torch.Tensor,
        audio: torch.Tensor, has_audio: torch.Tensor, rest: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Clean motion of every frame of the window.

        Args:
            noisy: (B, S, D) noisy normalised motion (read where ``known`` is 0).
            t: (B,) diffusion steps (0..999).
            carried: (B, S, D) clean normalised motion (read where ``known`` is 1).
            known: (B, S) 1 for carried frames, 0 for generated ones.
            audio: (B, S, A) normalised audio features.
            has_audio: (B, S) 1 where the frame has audio, 0 for the null audio.
            rest: (B, 52) the portrait's coefficients.

        Returns:
            (B, S, D) predicted clean normalised motion.
        """
        k = known[..., None]
        x = self.motion_in(torch.cat([noisy * (1 - k), carried * k, k], dim=2))  # (B, S, W)
        a = self.audio_in(self.heard(audio)).transpose(1, 2)  # (B, W, S)
        a = self.audio_conv(nn.functional.pad(a, (self.cfg.conv_frames - 1, 0))).transpose(1, 2)  # causal
        h = has_audio[..., None]
        x = x + nn.functional.gelu(a) * h + self.null_audio * (1 - h) + self.position
        cond = nn.functional.silu(self.time_mlp(timestep_embedding(t, self.cfg.width)) + self.rest_in(rest))
        for block in self.blocks:
            x = block(x, cond)
        return self.out(self.out_norm(x))

    def heard(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S, A) normalised features -> what the network hears of them: the features themselves, or the
        articulation prior's predictions (causal over ``prior_frames``) beside the prosody columns."""
        if not self.cfg.prior_frames:
            return audio
        padded = nn.functional.pad(audio.transpose(1, 2), (self.cfg.prior_frames - 1, 0))
        weight, bias = self.get_buffer("prior_weight"), self.get_buffer("prior_bias")
        prior = nn.functional.conv1d(padded, weight, bias).transpose(1, 2)
        return torch.cat([prior, audio[..., self.get_buffer("prosody")]], dim=2)

    def array(self, name: str) -> Any:
        """A buffer (statistics, filterbank, active coefficients) as a numpy array."""
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor)
        return value.detach().numpy()

    # -- files -----------------------------------------------------------------------------------
    def save(self, folder: str | Path, extra: dict[str, object] | None = None) -> None:
        """Write ``config.json`` (the config and ``extra``) and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps({"denoiser": asdict(self.cfg), **(extra or {})}, indent=1))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE))

    @classmethod
    def load(cls, folder: str | Path) -> tuple[MotionDenoiser, dict[str, Any]]:
        """A model and the rest of its ``config.json`` from a folder :meth:`save` wrote."""
        from safetensors.torch import load_file

        path = Path(folder)
        config = json.loads((path / CONFIG_FILE).read_text())
        model = cls(DenoiserConfig(**config.pop("denoiser")))
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        model.eval()
        return model, config
