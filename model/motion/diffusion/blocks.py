"""How the generator's blocks meet the world around the denoiser: what the model hears beyond the block,
how one block's head motion joins the next, and the mouth in silence.

The denoiser makes a window at a time; these rules decide what it is given and what of its output is
shown. Each was measured on the 23 validation people (free-running) and on the shipped model in silence;
the numbers are in the docstrings and in BENCHMARKS.md (2026-12-07). :class:`~.generator.DiffusionGenerator`
applies them live and :func:`~.rollout.rollout` in validation, so both make the same motion.
"""

from __future__ import annotations

import numpy as np

from emote.model.motion.diffusion.features import silent_frames
from emote.model.motion.interface import N_POSE

#: Share of its articulation a frame keeps per frame of silence up to it (:func:`articulation_gate`),
#: and from how many such frames on it keeps none (the mouth is the portrait's).
RELAX_PER_FRAME = 0.5
RELAX_FRAMES = 4


def articulation_gate(raw: np.ndarray, heard: np.ndarray, feature_set: str, first: int, n: int) -> np.ndarray:
    """(n,) how much of the generated articulation frames ``first .. first + n`` of a window keep.

    In silence (:func:`~.features.silent_frames`: a TTS pause, a gated or muted microphone, a quiet room) the
    mouth relaxes to the portrait's: a frame keeps :data:`RELAX_PER_FRAME` to the power of the number of
    silent frames up to and including it (0.5 at the first, 0.125 at the third), none from the
    :data:`RELAX_FRAMES`-th on (shut within 160 ms, as a real mouth closes), all of it where it hears
    sound. The model alone, with 3-frame blocks, let the upper lip rise to 0.11 in four seconds of
    digital silence on one seed (2-frame blocks: 0.056). Only what is shown is gated: the model goes on
    from its own frames (carrying a mouth held exactly at rest threw it out of its element: no blinks
    in a minute of silence on one seed, 61-75 per minute on another, the head at 21 °/s; its own frames
    give 32-35 blinks per minute and 13.5 °/s). Louder room noise is not silence: there the model decides.
    Positions whose audio is not heard count as sound.

    Args:
        raw: (S, A) raw (unnormalised) audio features of the window's positions.
        heard: (S,) bool, which positions hold real audio features.
        feature_set: the model's feature set.
        first, n: the positions to gate (the emitted block).
    """
    silent = silent_frames(raw[: first + n], feature_set) & heard[: first + n].astype(bool)
    run = np.zeros(first + n, np.int64)
    for p in range(first + n):
        run[p] = run[p - 1] + 1 if silent[p] and p else int(silent[p])
    return np.where(run[first:] >= RELAX_FRAMES, 0.0, RELAX_PER_FRAME ** run[first:]).astype(np.float32)


def crossfade_pose(block: np.ndarray, ahead: np.ndarray) -> np.ndarray:
    """(n, D) a block whose head pose starts from what the window before foresaw for it.

    Each window makes frames beyond its block, thrown away; the next block's first frames take the head
    pose from those by weight ``1 - (j + 1) / n`` (2/3, 1/3, 0 for 3-frame blocks), so the head's velocity
    does not jump where blocks meet. Free-running on the validation people (3-frame blocks) the head's mean
    |second difference| fell from 0.97 to 0.68 °/frame², the one at block boundaries from 1.16 (inside:
    0.87) to 0.67 (0.69), with lip sync (the mouth is not touched), head spread and blinks unchanged.

    Args:
        block: (n, D) normalised frames just made.
        ahead: (m, D) the previous window's provisional frames for them (m <= n used).
    """
    n, m = len(block), min(len(block), len(ahead))
    weight = (1.0 - (np.arange(m) + 1.0) / n)[:, None].astype(np.float32)
    out = block.copy()
    out[:m, :N_POSE] = weight * ahead[:m, :N_POSE] + (1.0 - weight) * block[:m, :N_POSE]
    return out


def relax_articulation(block: np.ndarray, gate: np.ndarray, mouth: list[int], mean: np.ndarray, std: np.ndarray
                       ) -> np.ndarray:
    """(n, D) normalised frames with the articulation (motion dims ``mouth``, deltas from the portrait)
    scaled by ``gate`` (n,) toward the portrait's (1: as made)."""
    if np.all(gate == 1.0):
        return block
    out = block.copy()
    raw = block[:, mouth] * std[mouth] + mean[mouth]
    out[:, mouth] = (raw * gate[:, None] - mean[mouth]) / std[mouth]
    return out


#: A window whose last heard frame is quieter than this in every hop (log mean power; -40 dBFS, below
#: speech's usual -30 to -20) hears that frame sustained beyond it (:func:`sustain_audio`).
QUIET_LOG_POWER = float(np.log(1e-4))


def sustain_audio(audio: np.ndarray, heard: np.ndarray, boundary: int, where: np.ndarray | None = None) -> None:
    """Hear the frames of a window from position ``boundary`` on as the frame before it, sustained (in place).

    Beyond the lookahead the model would hear its learned null audio, "anything may come", and the last
    frame it emits then hedges toward speech starting: run 7 with 3-frame blocks and no lookahead opened
    its mouth (a coefficient above 0.1) in 2-23 % of the frames of 20 s of silence, by portrait, with
    peaks of 0.18-0.40, where the sound heard going on keeps it at 0-16 % and 0.06-0.16 (2-frame blocks
    with a frame of lookahead: 0-31 %, 0.09-0.27). In speech the null audio serves the lips better:
    free-running jawOpen r on the validation people 0.214 / 0.211 (seeds 0, 1) with it, 0.201 / 0.200
    sustaining every window, 0.215 / 0.213 sustaining only windows whose last frame is quiet
    (:func:`quiet_windows`), which the generator does. Measured 2026-12-07, BENCHMARKS.md.

    Args:
        audio: (..., S, A) normalised audio features of a window (or a batch of windows).
        heard: (..., S) 1 where the model hears the audio, 0 where it hears the null audio.
        boundary: the first position beyond the lookahead.
        where: (...,) bool, which windows to sustain (None: all).
    """
    if not 0 < boundary < audio.shape[-2]:
        return
    held, held_heard = audio[..., boundary - 1 : boundary, :], heard[..., boundary - 1 : boundary]
    if where is None:
        audio[..., boundary:, :] = held
        heard[..., boundary:] = held_heard
        return
    mask = np.asarray(where, bool)
    audio[..., boundary:, :] = np.where(mask[..., None, None], held, audio[..., boundary:, :])
    heard[..., boundary:] = np.where(mask[..., None], held_heard, heard[..., boundary:])


def quiet_windows(audio: np.ndarray, boundary: int, mean: np.ndarray, std: np.ndarray, feature_set: str
                  ) -> np.ndarray:
    """(...,) bool: windows (normalised features (..., S, A)) whose frame before ``boundary`` is quiet."""
    return silent_frames(audio[..., boundary - 1, :] * std + mean, feature_set, QUIET_LOG_POWER)


def sustain_quiet(audio: np.ndarray, heard: np.ndarray, boundary: int, mean: np.ndarray, std: np.ndarray,
                  feature_set: str) -> None:
    """:func:`sustain_audio` on the windows whose last heard frame is quiet (:func:`quiet_windows`), in place."""
    sustain_audio(audio, heard, boundary, quiet_windows(audio, boundary, mean, std, feature_set))
