"""``emote train``: a teacher diffusion model, then a one-step student distilled from it, on this CPU.

1. **Teacher**: the denoiser (:mod:`~.denoiser`) learns to predict clean motion windows from noisy
   ones (``diffusers``' ``DDPMScheduler``: 1000 steps, cosine schedule, sample prediction) with
   audio dropped 15 % of the time for classifier-free guidance. Loss: mean squared error of the
   generated frames (the ones a live call emits count double) plus the same on frame-to-frame
   velocity (from the last carried frame on, so windows join without a jump). An exponential moving
   average of the weights is validated every few hundred steps on people the model never saw
   (denoising, and generating their whole clips free-running from the audio) and kept at the end.
2. **Pairs**: the teacher samples windows of the training clips with ``DDIMScheduler`` (25 steps,
   trailing spacing, guidance folded in) from seeded noise.
3. **Student**: the teacher's copy learns to map the same noise straight to the teacher's motion in one step
   (noise-to-sample "ODE pair" distillation: it keeps the teacher's variety; a direct one-step regression
   collapses to the average).

Everything is seeded; the run's configuration, loss curves (``curves.png``) and validation metrics
(``metrics.json``) are written beside the weights (``teacher/`` and ``student/``, each a ``config.json`` +
``model.safetensors`` that :class:`~.generator.DiffusionGenerator` loads).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emote.model.errors import InputError
from emote.model.motion.diffusion.dataset import dataset_clips
from emote.model.motion.diffusion.denoiser import DenoiserConfig, MotionDenoiser, mouth_dims
from emote.model.motion.diffusion.features import clip_features, frame_dim, mel_matrix
from emote.model.motion.diffusion.prior import PRIOR_L2, TARGET_LAGS, fit_prior, prior_r, prosody_columns
from emote.model.motion.diffusion.rollout import rollout, rollout_metrics
from emote.model.motion.diffusion.windows import WindowSampler, prepare_all, statistics
from emote.model.motion.interface import COEFF_INDEX, N_POSE

ProgressFn = Callable[[str], None]
T_MAX = 999
_JAW_NAME = "jawOpen"


@dataclass(frozen=True)
class TrainConfig:
    """One training run (the reason beside each default).

    Attributes:
        seed: everything random is drawn from it.
        batch: windows per step (128: ~0.2 s per teacher step on 2 cores).
        teacher_steps: optimiser steps of the teacher.
        student_steps: steps of the one-step student.
        pairs: teacher samples the student learns from.
        lr: AdamW learning rate (warm-up, then cosine to 1 %).
        weight_decay: AdamW weight decay.
        ema: decay of the weight average that is validated and kept.
        guidance: classifier-free guidance scale of the teacher (folded into the student).
        sample_steps: DDIM steps of the teacher's samples.
        emit_frames: frames a live call emits per window (the generator's window).
        lookahead_frames: frames of audio beyond them each window hears (validation and config only).
        sustain_audio, crossfade_pose: the generator's rules of :mod:`~.blocks` (written into its config).
        audio_copies: audio copies per clip (copy 0 unaugmented).
        validate_every: steps between validations.
        rollout_every: steps between free-running validations (:mod:`~.rollout`: held-out clips, as live).
        rollout_steps: DDIM steps of the teacher in those (the student always takes one).
        features: the audio feature set (:data:`~.features.FEATURE_SETS`; ``+speech``: :mod:`~.speech`, run 10).
        mouth_unknown: share of training windows whose carried mouth is replaced by noise.
        prior_frames: frames of audio the articulation prior reads (:mod:`~.prior`, e.g. 9; 0: none; run 8 lost).
        prior_l2: the prior's ridge penalty per training frame.
        pose_smooth: sigma (frames) of a Gaussian smoothing of the measured head pose (runs 8 and 9: 1.5).
        acceleration: weight of a second-difference loss term. Off: run 9 (1.0) jittered more, jawOpen r 0.105.
        motion_noise: scale of the sampling noise of everything but the articulation (head, eyes, brows),
            written into the models' configs: 1.25, chosen on the training people's free-running rollouts
            (blinks 18.1/min against their real 20.0, 9.2 at 1.0; yaw spread x1.12 of theirs, 0.90 at 1.0).
        blink_noise: the same for the two eyeBlink coefficients, also chosen on the training people's rollouts
            (BENCHMARKS.md, run 10): at 1.25 the blinks are too shallow to render shut.
        lips_shut_rest, long_silence: the portrait's lip openers count as 0 (the generator's too), and silence
            fills whole windows (:mod:`~.windows`; both from run 13, shipped: BENCHMARKS.md).

    The articulation (jaw and mouth coefficients) is sampled from the centre of the noise (its noise is
    0, the rest of the motion's is random): a sample's own random variation of the mouth only adds
    lip-sync error (the first teacher's free-running jawOpen followed held-out people at r 0.13 from
    random noise, 0.17 from the centre), while head motion and blinks need their randomness. The
    student is distilled on exactly that noise, and the generator samples so.
    """

    seed: int = 0
    batch: int = 128
    teacher_steps: int = 6000
    student_steps: int = 4000
    pairs: int = 20000
    lr: float = 1e-3
    weight_decay: float = 0.01
    ema: float = 0.999
    guidance: float = 3.0
    sample_steps: int = 25
    emit_frames: int = 3
    lookahead_frames: int = 0
    sustain_audio: bool = True
    crossfade_pose: bool = True
    audio_copies: int = 6
    validate_every: int = 500
    rollout_every: int = 2000
    rollout_steps: int = 4
    features: str = "mel+formants+speech"
    mouth_unknown: float = 0.5
    motion_noise: float = 1.25
    blink_noise: float = 1.6
    lips_shut_rest: bool = True
    long_silence: bool = True
    prior_frames: int = 0
    prior_l2: float = PRIOR_L2
    pose_smooth: float = 0.0
    acceleration: float = 0.0


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def _forward(model: MotionDenoiser, noisy: torch.Tensor, t: torch.Tensor, b: dict[str, torch.Tensor],
             has_audio: torch.Tensor | None = None) -> torch.Tensor:
    return model(noisy, t, b["carried"], b["known"], b["audio"], b["has_audio"] if has_audio is None else has_audio,
                 b["rest"])


def window_loss(pred: torch.Tensor, b: dict[str, torch.Tensor], carried: int, acceleration: float = 0.0
                ) -> torch.Tensor:
    """Weighted MSE of the generated frames plus MSE of their velocity (from the last carried frame) plus,
    weighted by ``acceleration``, MSE of their second differences (from the last two carried frames)."""
    w = b["weight"][..., None]
    mse = ((pred - b["target"]) ** 2 * w).sum() / (w.sum() * pred.shape[2]).clamp(min=1.0)
    seq_pred = torch.cat([b["carried"][:, carried - 1 : carried], pred[:, carried:]], dim=1)
    seq_true = b["target"][:, carried - 1 :]
    wv = (b["weight"][:, carried:] > 0).float()[..., None]
    vel = (((seq_pred.diff(dim=1) - seq_true.diff(dim=1)) ** 2) * wv).sum() / (wv.sum() * pred.shape[2]).clamp(min=1.0)
    if not acceleration:
        return mse + vel
    seq_pred = torch.cat([b["carried"][:, carried - 2 : carried], pred[:, carried:]], dim=1)
    seq_true = b["target"][:, carried - 2 :]
    acc = (((seq_pred.diff(n=2, dim=1) - seq_true.diff(n=2, dim=1)) ** 2) * wv).sum() / (
        wv.sum() * pred.shape[2]).clamp(min=1.0)
    return mse + vel + acceleration * acc


def _schedulers() -> tuple[Any, Any]:
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": T_MAX + 1, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample",
              "clip_sample": False}
    return DDPMScheduler(**common), DDIMScheduler(**common, timestep_spacing="trailing")


@torch.no_grad()
def sample(model: MotionDenoiser, b: dict[str, torch.Tensor], noise: torch.Tensor, *, steps: int,
           guidance: float) -> torch.Tensor:
    """The teacher's motion for a batch of windows: DDIM from ``noise`` with classifier-free guidance."""
    _, ddim = _schedulers()
    ddim.set_timesteps(steps)
    x, x0 = noise, noise
    silent = torch.zeros_like(b["has_audio"])
    for t in ddim.timesteps:
        tt = torch.full((len(x),), int(t), dtype=torch.long)
        x0 = _forward(model, x, tt, b)
        if guidance != 1.0:
            unconditional = _forward(model, x, tt, b, silent)
            x0 = unconditional + guidance * (x0 - unconditional)
        x = ddim.step(x0, t, x).prev_sample
    return x0


@torch.no_grad()
def validate(model: MotionDenoiser, windows: dict[str, torch.Tensor], cfg: DenoiserConfig, *,
             one_step: bool, guidance: float, sample_steps: int) -> dict[str, float]:
    """Validation on held-out people: loss of denoising at fixed noise, the audio-dependence gap, and the
    lip sync of the first emitted frame (jawOpen of the sampled window against the real one)."""
    model.eval()
    ddpm, _ = _schedulers()
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(windows["target"].shape, generator=gen)
    out: dict[str, float] = {}
    losses = []
    for t in (100, 400, 700, T_MAX):
        tt = torch.full((len(noise),), t, dtype=torch.long)
        noisy = ddpm.add_noise(windows["target"], noise, tt)
        losses.append(float(window_loss(_forward(model, noisy, tt, windows), windows, cfg.carried)))
        if t == T_MAX:
            silent = _forward(model, noisy, tt, windows, torch.zeros_like(windows["has_audio"]))
            out["audio_gap"] = float(window_loss(silent, windows, cfg.carried)) - losses[-1]
    out["loss"] = float(np.mean(losses))
    tt = torch.full((len(noise),), T_MAX, dtype=torch.long)
    x0 = (_forward(model, noise, tt, windows) if one_step
          else sample(model, windows, noise, steps=sample_steps, guidance=guidance))
    out["sample_loss"] = float(window_loss(x0, windows, cfg.carried))
    jaw = _jaw_dim(model.array("active"))
    k = cfg.carried
    out["jaw_r"] = float(np.corrcoef(x0[:, k, jaw].numpy(), windows["target"][:, k, jaw].numpy())[0, 1])
    model.train()
    return out


def _jaw_dim(active: np.ndarray) -> int:
    return N_POSE + [int(a) for a in active].index(COEFF_INDEX[_JAW_NAME])


def _lr(step: int, total: int, base: float, warmup: int = 300) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


def _fit(model: MotionDenoiser, steps: int, cfg: TrainConfig, next_batch: Callable[[int], tuple[torch.Tensor, ...]],
         check: Callable[[MotionDenoiser, bool], dict[str, float]], say: ProgressFn, name: str, rollout_every: int
         ) -> tuple[MotionDenoiser, list[dict[str, float]]]:
    """The optimisation loop shared by teacher and student; returns the final EMA weights and the curve.

    The validation people only watch: the free-running lip sync they give moved by less than its noise
    between checkpoints (0.181, 0.179, 0.176 at 2000, 4000, 6000 teacher steps) while the held-out
    denoising loss, head motion and blinks kept improving, so choosing by it would pick noise."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(model)
    curve, window = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, cfg.lr)
        loss = next_batch(step)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - cfg.ema)
        window.append(float(loss.detach()))
        if (step + 1) % cfg.validate_every == 0 or step + 1 == steps:
            metrics = check(ema, (step + 1) % rollout_every == 0 or step + 1 == steps)
            row = {"step": step + 1, "train_loss": float(np.mean(window)), **metrics,
                   "seconds": time.perf_counter() - t0}
            curve.append(row)
            window = []
            free = (f", free-running jaw r {metrics['rollout_jaw_r']:.3f}, yaw spread x"
                    f"{metrics['rollout_yaw_spread_ratio']:.2f}, {metrics['rollout_blinks_per_min']:.1f} blinks/min "
                    f"(real {metrics['real_blinks_per_min']:.1f})"
                    if "rollout_jaw_r" in metrics else "")
            say(f"{name} step {step + 1}/{steps}: train {row['train_loss']:.4f}, validation loss "
                f"{metrics['loss']:.4f} (sampled {metrics['sample_loss']:.4f}), next-frame jaw r "
                f"{metrics['jaw_r']:.3f}, audio gap {metrics['audio_gap']:.4f}{free} ({row['seconds']:.0f} s)")
    return ema, curve


def train(dataset_dir: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None,
          net: DenoiserConfig | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train the teacher and the student on a dataset built by ``emote dataset``; returns the metrics.

    Raises:
        InputError: the dataset has no training or no validation people.
    """
    cfg = cfg or TrainConfig()
    say = progress or (lambda _msg: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(out_dir)
    train_clips = [clip for _, clip in dataset_clips(dataset_dir, "train")]
    val_clips = [clip for _, clip in dataset_clips(dataset_dir, "validation")]
    if not train_clips or not val_clips:
        raise InputError(f"{dataset_dir}: the dataset needs people on both sides of its split "
                         f"({len(train_clips)} training clips, {len(val_clips)} validation clips); add videos")
    say(f"{len(train_clips)} training clips ({sum(map(len, train_clips)) / 25 / 60:.1f} min), "
        f"{len(val_clips)} validation clips ({sum(map(len, val_clips)) / 25 / 60:.1f} min)")
    mel = mel_matrix()
    silence = clip_features(np.zeros(640, np.float32), 1, mel, cfg.features, block=cfg.emit_frames)[0]
    train_copies = prepare_all(train_clips, mel, cfg.seed, cfg.audio_copies, say, cfg.features, cfg.pose_smooth,
                               cfg.emit_frames)
    val_copies = prepare_all(val_clips, mel, cfg.seed + 1, 1, None, cfg.features, cfg.pose_smooth, cfg.emit_frames)
    active, m_mean, m_std, a_mean, a_std = statistics(train_copies, silence, cfg.lips_shut_rest)
    norm = (m_mean, m_std, a_mean, a_std)
    mouth = mouth_dims(active)
    prosody = prosody_columns(cfg.features)
    net = replace(net or DenoiserConfig(), motion_dim=N_POSE + len(active), audio_dim=frame_dim(cfg.features),
                  prior_frames=cfg.prior_frames, prior_dim=len(TARGET_LAGS) * len(mouth) if cfg.prior_frames else 0,
                  prosody_dim=len(prosody) if cfg.prior_frames else 0)
    sampler = WindowSampler(train_copies, net, active, norm, silence, mouth_unknown=cfg.mouth_unknown,
                            lips_shut=cfg.lips_shut_rest, long_silence=cfg.long_silence)
    val_sampler = WindowSampler(val_copies, net, active, norm, silence, lips_shut=cfg.lips_shut_rest)
    val_clips_copies = [c[0] for c in val_copies]
    boundary = cfg.emit_frames + cfg.lookahead_frames
    val_list = val_sampler.fixed_windows(stride=3, boundary=boundary)
    val = _tensors({k: np.stack([w[k] for w in val_list]) for k in val_list[0]})
    model = MotionDenoiser(net)
    for name, value in (("motion_mean", m_mean), ("motion_std", m_std), ("audio_mean", a_mean), ("audio_std", a_std),
                        ("mel", mel), ("active", active)):
        getattr(model, name).copy_(torch.as_tensor(value))
    if cfg.prior_frames:
        weight, bias = fit_prior(train_copies, np.asarray(mouth), active, norm, silence, frames=cfg.prior_frames,
                                 l2=cfg.prior_l2)
        model.get_buffer("prior_weight").copy_(torch.from_numpy(weight))
        model.get_buffer("prior_bias").copy_(torch.from_numpy(bias))
        model.get_buffer("prosody").copy_(torch.from_numpy(prosody))
        r = prior_r(weight, val_clips_copies, np.asarray(mouth), _jaw_dim(active), active, norm, silence)
        say(f"articulation prior: {weight.shape[0]} outputs over {cfg.prior_frames} frames of audio, "
            f"jawOpen r {r:.3f} on the validation people (its current-frame output)")
    say(f"denoiser: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {net.motion_dim} motion "
        f"dims ({len(active)} active coefficients), {len(val_list)} validation windows")
    ddpm, _ = _schedulers()

    def teacher_batch(step: int) -> tuple[torch.Tensor, ...]:
        b = _tensors(sampler.batch(rng, cfg.batch))
        noise = torch.randn(b["target"].shape)
        t = torch.randint(0, T_MAX + 1, (cfg.batch,))
        pred = _forward(model, ddpm.add_noise(b["target"], noise, t), t, b)
        return (window_loss(pred, b, net.carried, cfg.acceleration),)

    def check(m: MotionDenoiser, free: bool, one_step: bool = False) -> dict[str, float]:
        metrics = validate(m, val, net, one_step=one_step, guidance=cfg.guidance, sample_steps=10)
        if free:
            generated = rollout(m, val_sampler, val_clips_copies, emit=cfg.emit_frames, lookahead=cfg.lookahead_frames,
                                steps=1 if one_step else cfg.rollout_steps, guidance=1.0 if one_step else cfg.guidance,
                                seed=cfg.seed, temperature=cfg.motion_noise, sustain=cfg.sustain_audio,
                                feature_set=cfg.features, crossfade=cfg.crossfade_pose,
                                blink_temperature=cfg.blink_noise)
            metrics |= rollout_metrics(val_sampler, val_clips_copies, generated)
        return metrics

    teacher, teacher_curve = _fit(model, cfg.teacher_steps, cfg, teacher_batch, check, say, "teacher",
                                  cfg.rollout_every)
    extra = {"train": asdict(cfg), "features": cfg.features,
             "generator": {"emit_frames": cfg.emit_frames, "lookahead_frames": cfg.lookahead_frames,
                           "sustain_audio": cfg.sustain_audio, "crossfade_pose": cfg.crossfade_pose,
                           "lips_shut_rest": cfg.lips_shut_rest}}
    temps = {"mouth_noise": 0.0, "motion_noise": cfg.motion_noise, "blink_noise": cfg.blink_noise}
    teacher.save(out / "teacher", {**extra, "sampling": {"steps": cfg.sample_steps, "guidance": cfg.guidance, **temps}})
    say(f"teacher samples for distillation: {cfg.pairs} windows x {cfg.sample_steps} steps")
    t0 = time.perf_counter()
    pairs = []
    for start in range(0, cfg.pairs, 256):
        b = _tensors(sampler.batch(rng, min(256, cfg.pairs - start)))
        noise = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(cfg.seed * 100003 + start))
        noise[..., mouth] = 0.0  # the articulation's path starts at the centre (see TrainConfig.mouth_noise)
        b["target"] = sample(teacher, b, noise, steps=cfg.sample_steps, guidance=cfg.guidance)
        b["noise"] = noise
        pairs.append(b)
    say(f"teacher samples: {time.perf_counter() - t0:.0f} s")
    pool = {k: torch.cat([p[k] for p in pairs]) for k in pairs[0]}
    model = student = copy.deepcopy(teacher).train()

    def student_batch(step: int) -> tuple[torch.Tensor, ...]:
        pick = torch.from_numpy(rng.integers(0, len(pool["noise"]), cfg.batch))
        b = {k: v[pick] for k, v in pool.items()}
        t = torch.full((cfg.batch,), T_MAX, dtype=torch.long)
        return (window_loss(_forward(student, b["noise"], t, b), b, net.carried, cfg.acceleration),)

    student, student_curve = _fit(student, cfg.student_steps, replace(cfg, lr=cfg.lr * 0.3), student_batch,
                                  lambda m, free: check(m, free, one_step=True), say, "student", cfg.validate_every)
    student.save(out / "student", {**extra, "sampling": {"steps": 1, "guidance": 1.0, **temps,
                                                         "distilled_guidance": cfg.guidance}})
    metrics = {"config": asdict(cfg), "denoiser": asdict(net), "teacher": teacher_curve, "student": student_curve,
               "train_minutes": sum(map(len, train_clips)) / 25 / 60,
               "validation_minutes": sum(map(len, val_clips)) / 25 / 60}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_curves(metrics, out / "curves.png")
    return metrics


def plot_curves(metrics: dict[str, Any], path: Path) -> None:
    """Loss curves, validation lip sync and the free-running rollouts of teacher and student, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for name in ("teacher", "student"):
        rows = metrics[name]
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["train_loss"] for r in rows], label=f"{name} train")
        axes[0].plot(steps, [r["loss"] for r in rows], "--", label=f"{name} validation")
        axes[1].plot(steps, [r["jaw_r"] for r in rows], label=name)
        axes[2].plot(steps, [r["audio_gap"] for r in rows], label=name)
        free = [r for r in rows if "rollout_jaw_r" in r]
        if free:
            at = [r["step"] for r in free]
            axes[3].plot(at, [r["rollout_jaw_r"] for r in free], "o-", label=f"{name} jawOpen r")
            axes[3].plot(at, [r["rollout_yaw_spread_ratio"] for r in free], "s--", label=f"{name} yaw spread / real")
    titles = ("loss", "validation jawOpen r (first emitted frame)", "audio-dependence gap",
              "free-running on held-out people (as live)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
