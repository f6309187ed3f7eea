"""A tiny, randomly initialised motion model saved as the generator loads one (fast tests, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emote.model.motion.diffusion.denoiser import DenoiserConfig, MotionDenoiser
from emote.model.motion.diffusion.features import FRAME_DIM, mel_matrix

TINY = DenoiserConfig(motion_dim=6 + 10, audio_dim=FRAME_DIM, carried=4, generated=4, width=32, layers=1, heads=2,
                      ff=64, conv_frames=3, dropout=0.0)


def tiny_model(seed: int = 0) -> MotionDenoiser:
    torch.manual_seed(seed)
    model = MotionDenoiser(TINY)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised layers would hide the conditioning
            p.add_(0.05 * torch.randn_like(p))
        model.mel.copy_(torch.from_numpy(mel_matrix()))
        model.active.copy_(torch.tensor([24, 8, 9, 43, 44, 2, 0, 1, 31, 37]))  # jaw, blinks, smiles, brows, ...
        model.motion_std.fill_(0.1)
        model.audio_mean.fill_(-5.0)
        model.audio_std.fill_(5.0)
    return model.eval()


def save_tiny(folder: Path, seed: int = 0, generator: dict[str, object] | None = None) -> Path:
    tiny_model(seed).save(folder, {"generator": generator or {"emit_frames": 2, "lookahead_frames": 1}})
    return folder


__all__ = ["TINY", "np", "save_tiny", "tiny_model"]
