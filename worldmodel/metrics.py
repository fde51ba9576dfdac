"""Metrics for judging a world model as a policy evaluator, and for the frames it draws.

Ranking (policies' imagined success vs their real success):
    pearson, spearman          scipy's correlation coefficients
    mmrv                       SIMPLER's mean maximum rank violation (lower is better)
    auroc                      how well a score separates two classes (eval.ppi's trust signals)
    bootstrap_ranking_metrics  all three with percentile intervals, resampling episodes per policy

Frames (imagined vs real, same initial state and actions): psnr, ssim (per image, any leading dims),
open_loop_fidelity (per view and horizon), revisit_frames (where the arm comes back to a place it left).

MMRV (Li et al., "Evaluating Real-World Robot Manipulation Policies in Simulation", 2024):
    RankViolation(i, j) = |R_i - R_j| * 1[(S_i > S_j) != (R_i > R_j)]   (strict >, as SIMPLER)
    MMRV = mean_i max_j RankViolation(i, j)
with R the *real* and S the simulated (here: imagined) success rates. The weight is the real gap: a
swap of two policies that are really far apart is a bad ranking error, a swap of two really similar
policies is not. Passing the arguments the other way round (weights from the imagined rates) is the
classic mistake; `mmrv(real=..., imagined=...)` takes keywords to make it hard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats


@dataclass
class SuccessRule:
    """When an episode counts as a success, from its per-frame success flags (one flag per world-model frame: the
    simulator's `is_success` at that step for a real episode, the judge's verdict on that frame for an imagined
    one). The same rule is applied to real and imagined episodes, so both answer the same question."""

    # Success if any of the episode's last `last_frames` frames succeeded (1: the final frame); None: any frame.
    last_frames: int | None = 1

    def __post_init__(self):
        if self.last_frames is not None and self.last_frames < 1:
            raise ValueError(f"success.last_frames: expected a positive number of frames or None, got {self.last_frames}")

    def __call__(self, flags) -> np.ndarray:
        """flags (..., frames) bool -> (...) bool."""
        flags = np.asarray(flags, dtype=bool)
        window = flags if self.last_frames is None else flags[..., -self.last_frames:]
        return window.any(axis=-1)

    def describe(self) -> str:
        if self.last_frames is None:
            return "an episode succeeds if any of its frames succeeded"
        if self.last_frames == 1:
            return "an episode succeeds if its final frame succeeded"
        return f"an episode succeeds if any of its last {self.last_frames} frames succeeded"


def pearson(real, imagined) -> float:
    real, imagined = np.asarray(real, float), np.asarray(imagined, float)
    if real.std() == 0 or imagined.std() == 0:
        return float("nan")  # undefined for a constant input
    return float(stats.pearsonr(real, imagined).statistic)


def spearman(real, imagined) -> float:
    real, imagined = np.asarray(real, float), np.asarray(imagined, float)
    if np.ptp(real) == 0 or np.ptp(imagined) == 0:
        return float("nan")
    return float(stats.spearmanr(real, imagined).statistic)


def mmrv(*, real, imagined) -> float:
    """Mean maximum rank violation (SIMPLER, Li et al. 2024); weights are gaps in the *real* success rates.
    Row i compares with a strict `>`, as SIMPLER does: with ties (common, rates are multiples of 1/episodes)
    the direction of the comparison decides in whose row a violation counts, and so the mean."""
    real, imagined = np.asarray(real, float), np.asarray(imagined, float)
    if real.shape != imagined.shape or real.ndim != 1:
        raise ValueError(f"real/imagined: expected two equal-length vectors, got {real.shape} and {imagined.shape}")
    disagree = (imagined[:, None] > imagined[None, :]) != (real[:, None] > real[None, :])
    violation = np.abs(real[:, None] - real[None, :]) * disagree
    return float(violation.max(axis=1).mean())


def ranking_metrics(real, imagined) -> dict:
    return {"pearson": pearson(real, imagined), "spearman": spearman(real, imagined),
            "mmrv": mmrv(real=real, imagined=imagined)}


def auroc(labels, scores) -> float:
    """Area under the ROC curve of `scores` (higher: more likely positive) for 0/1 `labels`: the probability that a
    positive scores above a negative, ties counted half (the Mann-Whitney U statistic). NaN without both classes."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    positive, negative = scores[labels], scores[~labels]
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)


def bootstrap_ranking_metrics(real_outcomes: list, imagined_outcomes: list, n_boot: int = 1000,
                              confidence: float = 0.95, seed: int = 0) -> dict:
    """real_outcomes[i], imagined_outcomes[i]: 0/1 successes of policy i's episodes. Episodes are
    resampled with replacement within each policy (real and imagined independently) and the metrics
    recomputed; returns the point values and [low, high] percentile intervals."""
    rng = np.random.default_rng(seed)
    real = [np.asarray(r, float) for r in real_outcomes]
    imagined = [np.asarray(s, float) for s in imagined_outcomes]
    point = ranking_metrics([r.mean() for r in real], [s.mean() for s in imagined])
    samples = {k: [] for k in point}
    for _ in range(n_boot):
        r = [x[rng.integers(len(x), size=len(x))].mean() for x in real]
        s = [x[rng.integers(len(x), size=len(x))].mean() for x in imagined]
        for k, v in ranking_metrics(r, s).items():
            samples[k].append(v)
    alpha = (1 - confidence) / 2
    out = {}
    for k, v in point.items():
        values = np.asarray(samples[k])
        values = values[np.isfinite(values)]
        interval = [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))] if len(values) else None
        out[k] = {"value": v, "interval": interval}
    return out


# -- frames ------------------------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB per image; images (..., C, H, W) in [-1, 1] (data_range 2) or [0, 1] (data_range 1)."""
    mse = (pred.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian 11x11 window, sigma 1.5) per image; (..., C, H, W)."""
    lead, (C, H, W) = pred.shape[:-3], pred.shape[-3:]
    x = pred.float().reshape(-1, C, H, W)
    y = target.float().reshape(-1, C, H, W)
    size = min(window, H, W)
    kernel = _gaussian_window(size, sigma, C, x.device)

    def blur(t):
        return F.conv2d(t, kernel, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead)


def recorded_frames(cache, starts, steps, view: int) -> torch.Tensor:
    """Real frames of one view from a `ClipDataset` cache: env steps `steps` (n,) after each episode start
    in `starts` (B,) -> (B, n, 3, H, W) float in [-1, 1]."""
    frames = torch.from_numpy(np.stack([cache.images[s + np.asarray(steps), view] for s in starts]))
    return frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1


@torch.no_grad()
def open_loop_fidelity(world, clips, episode_positions: list[int], horizon: int, keep_pictures: bool = False) -> dict:
    """Replay recorded actions open loop from each episode's first frame and compare every imagined frame
    with the real one: per view and per horizon (in world-model frames), mean PSNR and SSIM over episodes
    (`psnr`, `ssim`), and the same per episode (`psnr_per_episode`, `ssim_per_episode`: (B, horizon)).
    `imagined_state` (B, horizon, S) is the state the model predicted for every frame; with keep_pictures,
    `pictures` (B, horizon, V, H, W, 3) uint8 are the frames it drew.

    world: a `WorldModel` with batch_size == len(episode_positions); clips: a `ClipDataset` at the model's
    views, size and frame_stride (its cache holds the real frames and actions)."""
    cache, stride = clips.cache, world.cfg.frame_stride
    lengths = cache.episode_length[episode_positions]
    if (lengths <= horizon * stride).any():
        raise ValueError(f"horizon: {horizon} frames x stride {stride} is longer than episode(s) of {lengths.min()} steps")
    starts = cache.episode_start[episode_positions]
    keys = world.camera_keys
    world.reset(clips.first_observations(episode_positions))
    actions = np.stack([cache.actions[s:s + horizon * stride] for s in starts])  # (B, horizon * stride, A)
    imagined = world.step(actions, return_all=True)
    steps = stride * np.arange(1, horizon + 1)
    out = {"horizon_frames": list(range(1, horizon + 1)),
           "horizon_seconds": (steps / world.cfg.fps).tolist(), "psnr": {}, "ssim": {},
           "psnr_per_episode": {}, "ssim_per_episode": {},
           "imagined_state": imagined["observation.state"].cpu().numpy()}
    for v, key in enumerate(keys):
        real = recorded_frames(cache, starts, steps, v)
        fake = imagined[key].cpu().permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        per_episode_psnr, per_episode_ssim = psnr(fake, real), ssim(fake, real)  # (B, horizon)
        out["psnr"][key] = per_episode_psnr.mean(0).tolist()
        out["ssim"][key] = per_episode_ssim.mean(0).tolist()
        out["psnr_per_episode"][key] = per_episode_psnr.numpy()
        out["ssim_per_episode"][key] = per_episode_ssim.numpy()
    if keep_pictures:
        out["pictures"] = np.stack([imagined[key].cpu().numpy() for key in keys], axis=2)
    return out


def revisit_frames(positions: np.ndarray, near: float = 0.03, away: float = 0.10, min_gap: int = 12) -> np.ndarray:
    """Frames at which the arm is back at a place it left: frame t is a revisit when, for some earlier
    frame s <= t - min_gap, the position at t is within `near` of the position at s and somewhere
    between them the arm was farther than `away` from it. positions (T, P) (e.g. hand xyz per frame);
    returns the sorted revisit frame indices. With min_gap larger than the sampler's recent frames, the
    earlier view of that place is no longer in the recent context: only memory can bring it back."""
    positions = np.asarray(positions, dtype=np.float64)
    T = len(positions)
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)  # (T, T)
    revisits = []
    min_gap = max(min_gap, 2)  # leaving needs a frame between the two
    for t in range(min_gap, T):
        for s in range(t - min_gap + 1):
            if distance[t, s] < near and distance[s + 1:t, s].max() > away:
                revisits.append(t)
                break
    return np.asarray(revisits, dtype=np.int64)
