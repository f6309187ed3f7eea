"""The articulation prior: a heavily regularised linear map from the last few frames of audio to the mouth.

Ten minutes of ~40 speakers are far too few for a network to learn, from 188 spectral numbers per
frame, which sounds open a jaw without also learning who said them: the first denoisers, fed the
features directly, followed the jaws of held-out people at r 0.20 free-running while following the
training people's at 0.39. A linear map over the same features, shrunk hard (ridge regression with a
penalty the size of the data), generalises better: over frames -6..+4 it follows the validation
people's jawOpen at r 0.33 (pooled; 0.35 on the training people: it does not overfit), where a
penalty 100x weaker reaches 0.49 on the training people and only 0.26 on the validation ones. As
fitted here (frames -8..0, causal) its current-frame output reaches r 0.27 on the validation people
(``emote train`` prints it; measured with the 2026-12 dataset).

The prior is fitted once, in closed form, before the teacher trains, and travels with the weights as
fixed buffers of the denoiser (:class:`~.denoiser.MotionDenoiser`): a causal convolution over
:data:`PRIOR_FRAMES` frames of normalised audio that predicts the normalised mouth coefficients of the
current frame and of the frame before it (the latter hears one frame of lookahead). The denoiser then
hears the prior's predictions and the voice's prosody (energy, voicing, pitch: what head motion and
brows follow) instead of the raw spectrum.

It is an option (``TrainConfig.prior_frames``), off by default: the model trained with it (run 8) did
better free-running but worse in rendered videos than the shipped one (BENCHMARKS.md, "Two more
training runs").
"""

from __future__ import annotations

import numpy as np

from emote.model.motion.diffusion.features import FEATURE_SETS, HOPS_PER_FRAME, N_MELS, spectral_set
from emote.model.motion.diffusion.windows import Copy, rest_deltas

#: Frames of audio (this one and the ones before) the prior reads: the carried frames plus one, so a
#: window's first generated frame has all of its context inside the window.
PRIOR_FRAMES = 9
#: Ridge penalty per training frame (on standardised features), chosen on the validation people's jawOpen
#: (pooled r): over frames -6..+4, 0.30 / 0.33 at 0.7 / 7; over frames -8..+1 of features less their
#: running mean, 0.35 / 0.34 / 0.30 at 7 / 20 / 70.
PRIOR_L2 = 7.0
#: Frames the prior's targets reach back: the mouth of the current frame and of the one before.
TARGET_LAGS = (0, 1)


def prosody_columns(feature_set: str) -> np.ndarray:
    """Indices of each hop's log energy, voicing and log pitch within a frame's features."""
    per_hop = FEATURE_SETS[spectral_set(feature_set)]
    return np.array([h * per_hop + N_MELS + j for h in range(HOPS_PER_FRAME) for j in range(3)], np.int64)


def _context(features: np.ndarray, silence: np.ndarray, frames: int) -> np.ndarray:
    """(T, frames * A): each frame's features and those of the ``frames - 1`` frames before it (oldest
    first), silence before the clip starts."""
    padded = np.concatenate([np.repeat(silence[None], frames - 1, axis=0), features])
    n = len(features)
    return np.concatenate([padded[j : j + n] for j in range(frames)], axis=1)


def fit_prior(copies: list[list[Copy]], mouth: np.ndarray, active: np.ndarray,
              norm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], silence: np.ndarray, *,
              frames: int = PRIOR_FRAMES, l2: float = PRIOR_L2) -> tuple[np.ndarray, np.ndarray]:
    """Fit the prior on every copy of the training clips.

    Args:
        copies: per clip, its audio copies (:func:`~.windows.prepare_all`).
        mouth: motion dimensions (pose first) that articulate (:func:`~.denoiser.mouth_dims`).
        active: coefficients the model moves.
        norm: ``(motion_mean, motion_std, audio_mean, audio_std)``.
        silence: (A,) raw features of digital silence.

    Returns:
        ``weight`` (len(TARGET_LAGS) * len(mouth), A, frames), a ``torch.nn.functional.conv1d`` kernel
        over normalised audio (the last tap is the current frame), and ``bias`` (its length).
    """
    m_mean, m_std, a_mean, a_std = norm
    quiet = (silence - a_mean) / a_std
    a_dim, lag_max = len(a_mean), max(TARGET_LAGS)
    xtx = np.zeros((frames * a_dim, frames * a_dim))
    xty = np.zeros((frames * a_dim, len(TARGET_LAGS) * len(mouth)))
    x_sum, y_sum, n = np.zeros(frames * a_dim), np.zeros(xty.shape[1]), 0
    for clip in copies:
        for c in clip:
            target = ((rest_deltas(c, active) - m_mean) / m_std)[:, mouth]
            x = _context(((c.features - a_mean) / a_std).astype(np.float64), quiet, frames)[lag_max:]
            y = np.concatenate([target[lag_max - lag : len(target) - lag] for lag in TARGET_LAGS], axis=1)
            xtx += x.T @ x
            xty += x.T @ y
            x_sum += x.sum(axis=0)
            y_sum += y.sum(axis=0)
            n += len(x)
    if n == 0:
        raise ValueError("no training frames to fit the articulation prior on")
    x_mean, y_mean = x_sum / n, y_sum / n
    centred = xtx - n * np.outer(x_mean, x_mean)
    w = np.linalg.solve(centred + l2 * n * np.eye(len(centred)), xty - n * np.outer(x_mean, y_mean))
    bias = y_mean - x_mean @ w
    # (frames * A, out) with the oldest frame first -> conv1d's (out, A, frames)
    kernel = w.reshape(frames, a_dim, -1).transpose(2, 1, 0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def prior_r(weight: np.ndarray, copies: list[Copy], mouth: np.ndarray, dim: int,
            active: np.ndarray, norm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
            silence: np.ndarray) -> float:
    """Pooled correlation over ``copies`` of the prior's current-frame prediction of motion dimension ``dim``
    (one of ``mouth``) with the real one: how well it follows people it was not fitted on."""
    m_mean, m_std, a_mean, a_std = norm
    frames, out = weight.shape[2], list(mouth).index(dim)
    flat = weight[out].transpose(1, 0).reshape(-1)  # oldest frame first, as _context stacks them
    predicted, real = [], []
    for c in copies:
        x = _context((c.features - a_mean) / a_std, (silence - a_mean) / a_std, frames)
        truth = (rest_deltas(c, active)[:, dim] - m_mean[dim]) / m_std[dim]
        guess = x @ flat
        predicted.append(guess - guess.mean())
        real.append(truth - truth.mean())
    return float(np.corrcoef(np.concatenate(predicted), np.concatenate(real))[0, 1])
