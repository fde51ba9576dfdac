"""What pose memory does on revisits, and why: the revisit frames of eval.fidelity, with memory's content changed.

    python -m eval.memory_probe --model=pretrained/metaworld_push/tiny \
        --dataset.root=outputs/recipe_cpu/datasets/metaworld_push_long --episodes=8 --run=cpu_tiny

Held-out long tours replayed open loop as in eval.fidelity (same sampler, episodes and noise seed), scored on the
revisit frames (the real hand back within 3 cm of a place it left, more than 10 cm away, at least 12 frames
earlier, so that the earlier view is out of the recent context and only memory can bring it back):

    full            the shipped sampler: pose memory holds the frames the model drew
    no_memory       memory.k = 0
    memory_real     an oracle memory: it holds the *real* pictures of every frame in place of the drawn ones
                    (StreamingSampler.memory_filter), retrieved by the same poses: what a perfect memory would
                    give this network. In training, memory frames are real pictures too.
    memory_wrong    memory holds the real pictures of *another* held-out episode at the same frame: if the drawn
                    pictures do not change, the network does not read what memory holds
    copy_retrieved  not a model: the real frame a pose memory of the real frames retrieves for that frame (nearest in
                    the real pose, outside the recent window, same capacity), copied: how much the earlier view of
                    the place says about it now
    copy_drawn_retrieved  not a model: the picture `full` itself drew at the frame its memory retrieved, copied: how
                    much what its own memory holds says about the frame now (self-memory can add at most what this
                    holds beyond what the network draws without it)
    copy_first      not a model: the first real frame

Beside the scores: how far the nearest retrieved frame's hand (cm) and gripper were from the real ones now and how
many frames back it was (for the sampler's memory and for copy_retrieved), how far back the model's own training
clips' memory frames were, how much each memory content changes the drawn pictures against no_memory (mean absolute
difference, 0-255 levels), and each rollout's return consistency: PSNR between the picture it draws on a revisit and
the picture it drew at the earlier visit of that place (the frame copy_retrieved finds by the real pose; the real
world's own consistency is copy_retrieved's score). Writes <results_dir>/memory_probe_<run>.json and .md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.fidelity import copy_first_frame, held_out_tours, masked_mean, real_states, revisit_mask
from eval.report import write_result
from worldmodel.dataset import ClipDataset, DatasetConfig
from worldmodel.memory import MemoryConfig, PoseMemory
from worldmodel.metrics import open_loop_fidelity, psnr, recorded_frames, ssim
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel

ROLLOUTS = ("full", "no_memory", "memory_real", "memory_wrong")


@dataclass
class MemoryProbeConfig:
    model: str = "pretrained/metaworld_push/tiny"
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(root="outputs/datasets/metaworld_push_long",
                                                                         repo_id="local/metaworld_push_long"))
    episodes: int = 8  # held-out episodes (the first ones of the dataset); memory_wrong needs at least 2
    horizon_s: float = 20.0  # robot time replayed
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(  # eval.fidelity's
        steps=4, window=4, sink_frames=1, recent_frames=4, memory=MemoryConfig(k=2, capacity=64)))
    revisit_near: float = 0.03
    revisit_away: float = 0.10
    revisit_min_gap: int = 12
    # Training clips drawn from the model's own training set (its train_config.json) to measure how far back their
    # pose-retrieved memory frames were (0: not measured).
    training_clips: int = 2000
    seed: int = 0
    run: str = "cpu_tiny"
    results_dir: str = "eval/results"
    device: str | None = None


class RealMemory:
    """The sampler's memory filter: memory stores the real pictures of frame `step` of each rollout's episode, or of
    the next episode's (`shift=1`) in place of the drawn ones."""

    def __init__(self, world: WorldModel, clips, positions: list[int], shift: int):
        self.world, self.clips = world, clips
        self.starts = clips.cache.episode_start[np.roll(np.asarray(positions), -shift)]

    def __call__(self, latents: torch.Tensor, state: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        rows = self.starts + self.clips.cfg.frame_stride * step.cpu().numpy()
        return self.world.encode(self.clips.observations(rows))[:, 0].to(latents)


class RetrievalLog:
    """Wraps a PoseMemory's retrieve to keep, per frame being denoised, where the nearest retrieved frame was."""

    def __init__(self, world: WorldModel):
        self.sampler, self.retrieve = world.sampler, world.sampler.memory.retrieve
        self.pose, self.step = {}, {}  # frame index -> (B, P) pose, (B,) frame index of the nearest retrieved frame

    def __call__(self, query_pose, k, exclude_after=None):
        found = self.retrieve(query_pose, k, exclude_after)
        frame = int(self.sampler.frames_done[0])  # the first frame being denoised (every rollout is at the same one)
        usable = found["valid"][:, 0] & (found["step"][:, 0] >= self.sampler.config.sink_frames)
        self.pose[frame] = torch.where(usable[:, None], found["pose"][:, 0], float("nan")).cpu().numpy()
        self.step[frame] = torch.where(usable, found["step"][:, 0], -1).cpu().numpy()
        return found


def probe_rollouts(cfg: MemoryProbeConfig, model: VideoDiT, clips, positions: list[int], horizon: int):
    """Each rollout of ROLLOUTS -> its open_loop_fidelity output, the drawn pictures (B, horizon, V, H, W, 3) uint8
    and, for `full`, the retrieval log."""
    out, log = {}, None
    for name in tqdm(ROLLOUTS, desc="memory probe", unit="rollout"):
        sampler = cfg.sampler if name != "no_memory" else replace(cfg.sampler, memory=replace(cfg.sampler.memory, k=0))
        world = WorldModel(model, sampler, batch_size=len(positions), device=cfg.device, seed=cfg.seed)
        if name in ("memory_real", "memory_wrong"):
            world.sampler.memory_filter = RealMemory(world, clips, positions, shift=int(name == "memory_wrong"))
        if name == "full":
            log = RetrievalLog(world)  # the memory's own retrieve, its answers noted on the way
            world.sampler.memory.retrieve = log
        t0 = time.time()
        out[name] = open_loop_fidelity(world, clips, positions, horizon, keep_pictures=True)
        out[name]["seconds"] = time.time() - t0
        out[name]["device"] = str(world.device)
    return out, log


def with_reset_frame(clips, positions: list[int], pictures: np.ndarray) -> np.ndarray:
    """The real reset frame, then the drawn ones: (B, 1 + horizon, V, H, W, 3) uint8, indexed like the sampler's frames
    (0 = the reset frame, imagined frame f = f + 1)."""
    first = clips.cache.images[clips.cache.episode_start[positions]]  # (B, V, H, W, 3)
    return np.concatenate([first[:, None], pictures], axis=1)


def as_images(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1], as psnr and ssim take them."""
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).float() / 127.5 - 1


def frames_at(frames: np.ndarray, index: np.ndarray) -> np.ndarray:
    """frames (B, T, ...) and per-episode frame indices (B, n) -> (B, n, ...)."""
    return frames[np.arange(len(frames))[:, None], index]


def copy_pictures_at(clips, positions: list[int], pictures: np.ndarray, retrieved: np.ndarray) -> dict:
    """A rollout's pictures (B, horizon, V, H, W, 3), drawn or real, at the frame retrieved for each frame (retrieved
    (B, horizon), sampler frame indices; 0: the real reset frame), copied: PSNR/SSIM per view (B, horizon) against
    the real frames."""
    stride, starts = clips.cfg.frame_stride, clips.cache.episode_start[positions]
    copied = as_images(frames_at(with_reset_frame(clips, positions, pictures), retrieved))  # (B, horizon, V, 3, H, W)
    steps = stride * np.arange(1, pictures.shape[1] + 1)
    out = {"psnr_per_episode": {}, "ssim_per_episode": {}}
    for v, key in enumerate(clips.camera_keys):
        real = recorded_frames(clips.cache, starts, steps, v)
        out["psnr_per_episode"][key] = psnr(copied[:, :, v], real).numpy()
        out["ssim_per_episode"][key] = ssim(copied[:, :, v], real).numpy()
    return out


def copy_retrieved(cfg: MemoryProbeConfig, model: VideoDiT, clips, positions: list[int], horizon: int) -> dict:
    """The real frame a PoseMemory of the real frames retrieves for each frame (queried with the real pose, the recent
    window and the sinks excluded as the sampler excludes them), copied: PSNR/SSIM per view (B, horizon) and the
    retrieved frame index (B, horizon)."""
    mc, sc, cache, stride = model.cfg, cfg.sampler, clips.cache, clips.cfg.frame_stride
    starts = cache.episode_start[positions]
    pose_indices = list(mc.pose_indices)
    B = len(positions)
    memory = PoseMemory(sc.memory, B, (1,), mc.state_dim, len(pose_indices), "cpu")
    retrieved = np.zeros((B, horizon), dtype=np.int64)
    for frame in range(horizon + 1):  # frame 0 is the reset frame; imagined frame f is frame f + 1
        state = torch.from_numpy(cache.states[starts + stride * frame]).float()
        if frame > 0:
            found = memory.retrieve(state[:, pose_indices], 1, torch.full((B,), frame - sc.recent_frames - 1))
            usable = found["valid"][:, 0] & (found["step"][:, 0] >= sc.sink_frames)
            retrieved[:, frame - 1] = torch.where(usable, found["step"][:, 0], 0).numpy()  # nothing yet: the first
        memory.store(torch.zeros(B, 1), state, state[:, pose_indices], torch.full((B,), frame))
    real = np.stack([cache.images[s + stride * np.arange(1, horizon + 1)] for s in starts])  # (B, horizon, V, H, W, 3)
    return {**copy_pictures_at(clips, positions, real, retrieved), "retrieved": retrieved}


def return_consistency(clips, positions: list[int], pictures: np.ndarray, earlier: np.ndarray) -> dict:
    """PSNR per view (B, horizon) between the picture a rollout draws at each frame and the one it drew at frame
    `earlier` (B, horizon) (sampler frame indices; 0: the real reset frame)."""
    drawn = with_reset_frame(clips, positions, pictures)
    now, then = as_images(drawn[:, 1:]), as_images(frames_at(drawn, earlier))  # (B, horizon, V, 3, H, W)
    return {key: psnr(now[:, :, v], then[:, :, v]).numpy() for v, key in enumerate(clips.camera_keys)}


def retrieval_summary(retrieved_pose: np.ndarray, frames_back: np.ndarray, real_pose: np.ndarray, mask: np.ndarray) -> dict:
    """On the revisit frames (mask (B, horizon)): how far the nearest retrieved frame's pose (B, horizon, P; NaN where
    none) was from the real pose now, the hand (the first 3 components, cm) and the rest (the gripper), and how many
    frames back (B, horizon) it was."""
    on = mask & np.isfinite(retrieved_pose).all(-1)
    if not on.any():
        return {"frames": 0}
    gap = retrieved_pose[on] - real_pose[on]
    return {"frames": int(on.sum()), "hand_cm_median": float(100 * np.median(np.linalg.norm(gap[:, :3], axis=-1))),
            "gripper_median": float(np.median(np.abs(gap[:, 3:]).sum(-1))),
            "frames_back_median": float(np.median(frames_back[on]))}


def sampler_retrievals(log: RetrievalLog, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The retrieval log as (B, horizon, P) stored poses (NaN where nothing was retrieved) and (B, horizon) frames back."""
    pose, back = np.full(shape, np.nan), np.full(shape[:2], np.nan)
    for f in range(shape[1]):
        frame = f + 1  # imagined frame f is the sampler's frame f + 1 (frame 0 is the reset frame)
        if frame in log.pose:
            pose[:, f] = log.pose[frame]
            back[:, f] = np.where(log.step[frame] >= 0, frame - log.step[frame], np.nan)
    return pose, back


def training_memory_ages(model_dir: str, clips: int, seed: int) -> dict:
    """How many frames before its clip each pose-retrieved memory frame (slots 1..) of the model's training clips was:
    `clips` clips drawn from the training episodes its train_config.json names (as the trainer split them)."""
    import draccus

    from worldmodel.train import TrainConfig, split_episodes

    path = Path(model_dir) / "train_config.json"
    if clips <= 0 or not path.exists():
        return {"measured": False, "why": "training_clips is 0" if clips <= 0 else f"{path} is missing"}
    train_cfg = draccus.decode(TrainConfig, json.loads(path.read_text())["train"])
    if not (Path(train_cfg.dataset.root) / "meta" / "info.json").exists():
        return {"measured": False, "why": f"the training set {train_cfg.dataset.root} is not on this machine"}
    dataset = ClipDataset(replace(train_cfg.dataset, episodes=split_episodes(train_cfg)[0]))
    rng = np.random.default_rng(seed)
    ages = []
    for index in rng.choice(len(dataset), size=min(clips, len(dataset)), replace=False):
        item = dataset[int(index)]
        valid = item["memory_valid"][1:]
        ages += (-item["memory_offset"][1:][valid]).tolist()
    ages = np.asarray(ages)
    return {"measured": True, "dataset": train_cfg.dataset.root, "clips": int(min(clips, len(dataset))),
            "memory_min_gap_frames": train_cfg.dataset.memory_min_gap_frames, "frames": int(len(ages)),
            "frames_back_median": float(np.median(ages)), "share_at_most_2_back": float((ages <= 2).mean()),
            "share_at_most_5_back": float((ages <= 5).mean()), "share_at_least_12_back": float((ages >= 12).mean())}


def memory_probe(cfg: MemoryProbeConfig) -> dict:
    started = time.time()
    if cfg.episodes < 2:
        raise ValueError(f"episodes: memory_wrong shows each rollout another episode's pictures, so at least 2 are "
                         f"needed, got {cfg.episodes}")
    model = VideoDiT.from_pretrained(cfg.model)
    mc = model.cfg
    horizon = max(1, round(cfg.horizon_s * mc.fps / mc.frame_stride))
    clips = held_out_tours(cfg.dataset, cfg.episodes, mc, horizon)
    positions = list(range(cfg.episodes))
    real_state = real_states(clips, positions, horizon)
    mask = revisit_mask(real_state, cfg.revisit_near, cfg.revisit_away, cfg.revisit_min_gap)
    if not mask.any():
        raise ValueError(f"dataset.root={cfg.dataset.root}: no revisit frames in {cfg.episodes} episodes over "
                         f"{horizon} frames; record longer tours (--tour_after) or more episodes")
    rollouts, log = probe_rollouts(cfg, model, clips, positions, horizon)
    real_retrieved = copy_retrieved(cfg, model, clips, positions, horizon)
    real_pose = real_state[..., list(mc.pose_indices)]
    own_pose, own_back = sampler_retrievals(log, real_pose.shape)
    own_retrieved = np.nan_to_num(np.arange(1, horizon + 1) - own_back).astype(np.int64)  # nothing: the reset frame
    scores = {**rollouts, "copy_retrieved": real_retrieved,
              "copy_drawn_retrieved": copy_pictures_at(clips, positions, rollouts["full"]["pictures"], own_retrieved),
              "copy_first": copy_first_frame(clips, positions, horizon, mc.frame_stride)}
    result = {"run": cfg.run, "model": cfg.model, "dataset": cfg.dataset.root, "episodes": cfg.episodes,
              "horizon_frames": horizon, "sampler": asdict(cfg.sampler),
              "revisit": {"frames": int(mask.sum()), "near_m": cfg.revisit_near, "away_m": cfg.revisit_away,
                          "min_gap_frames": cfg.revisit_min_gap},
              "on_revisits": {}, "on_all_frames": {}, "picture_change_vs_no_memory": {}}
    for name, r in scores.items():
        result["on_revisits"][name] = {"psnr": masked_mean(r["psnr_per_episode"], mask),
                                       "ssim": masked_mean(r["ssim_per_episode"], mask)}
        everywhere = np.ones_like(mask)
        result["on_all_frames"][name] = {"psnr": masked_mean(r["psnr_per_episode"], everywhere)["mean_over_views"]}
    plain = rollouts["no_memory"]["pictures"].astype(np.float32)
    for name in ("full", "memory_real", "memory_wrong"):
        change = np.abs(rollouts[name]["pictures"].astype(np.float32) - plain).mean(axis=(2, 3, 4, 5))  # (B, horizon)
        result["picture_change_vs_no_memory"][name] = {"revisits": float(change[mask].mean()),
                                                       "all_frames": float(change.mean())}
    copied = real_retrieved["retrieved"]  # (B, horizon) the earlier visit of each place, found by the real pose
    result["return_consistency"] = {name: masked_mean(return_consistency(clips, positions, r["pictures"], copied),
                                                      mask) for name, r in rollouts.items()}
    result["return_consistency"]["real"] = result["on_revisits"]["copy_retrieved"]["psnr"]
    result["retrieval"] = {"full": retrieval_summary(own_pose, own_back, real_pose, mask)}
    copied_pose = np.stack([clips.cache.states[s + clips.cfg.frame_stride * copied[b]][:, list(mc.pose_indices)]
                            for b, s in enumerate(clips.cache.episode_start[positions])])
    result["retrieval"]["copy_retrieved"] = retrieval_summary(copied_pose, np.arange(1, horizon + 1) - copied,
                                                              real_pose, mask)
    result["training_memory"] = training_memory_ages(cfg.model, cfg.training_clips, cfg.seed)
    result["device"] = rollouts["full"]["device"]
    result["seconds"] = time.time() - started
    result["command"] = (f"python -m eval.memory_probe --model={cfg.model} --dataset.root={cfg.dataset.root} "
                         f"--dataset.repo_id={cfg.dataset.repo_id} --episodes={cfg.episodes} "
                         f"--horizon_s={cfg.horizon_s:g} --sampler.memory.capacity={cfg.sampler.memory.capacity} "
                         f"--training_clips={cfg.training_clips} --run={cfg.run}")
    write_results(cfg, result)
    return result


def write_results(cfg: MemoryProbeConfig, result: dict) -> None:
    rv, retrieval = result["revisit"], result["retrieval"]
    lines = [f"# What pose memory does on revisits: {result['run']}", "",
             f"Model `{result['model']}`, {result['episodes']} held-out tours of `{result['dataset']}` replayed open loop "
             f"for {result['horizon_frames']} frames (eval.fidelity's sampler and noise). Revisit frames: {rv['frames']} "
             f"(the real hand back within {100 * rv['near_m']:.0f} cm of a place it left, > {100 * rv['away_m']:.0f} cm "
             f"away, at least {rv['min_gap_frames']} frames earlier). PSNR / SSIM averaged over the views.", "",
             "| variant | what memory holds | PSNR on revisits | SSIM on revisits | PSNR, all frames | "
             "pictures changed vs no_memory (0-255, revisits) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    holds = {"full": "the frames it drew", "no_memory": "nothing (k = 0)", "memory_real": "the real frames (oracle)",
             "memory_wrong": "another episode's real frames", "copy_retrieved": "(not a model) the real frame retrieved "
             "by the real pose, copied", "copy_drawn_retrieved": "(not a model) the frame `full` drew where its memory "
             "retrieved, copied", "copy_first": "(not a model) the first real frame, copied"}
    for name, r in result["on_revisits"].items():
        change = result["picture_change_vs_no_memory"].get(name)
        changed = f"{change['revisits']:.2f}" if change else "-"
        lines.append(f"| {name} | {holds[name]} | {r['psnr']['mean_over_views']:.2f} | {r['ssim']['mean_over_views']:.3f} "
                     f"| {result['on_all_frames'][name]['psnr']:.2f} | {changed} |")
    lines += ["", "Return consistency on the revisit frames: PSNR between the picture drawn now and the picture the same "
              "rollout drew at the earlier visit of that place (the frame `copy_retrieved` finds by the real pose; the "
              "reset frame is the real one). `real` is the real world's own (copy_retrieved's score): a model above it "
              "redraws a place more alike than the world is, below it it redraws the place differently.", "",
              "| rollout | return consistency (PSNR) |", "| --- | ---: |"]
    lines += [f"| {name} | {r['mean_over_views']:.2f} |"
              for name, r in result["return_consistency"].items()]
    for name, r in retrieval.items():
        if r["frames"]:
            lines += ["", f"Retrieval in `{name}`: on {r['frames']} of {rv['frames']} revisit frames, the nearest retrieved "
                      f"frame's hand was {r['hand_cm_median']:.1f} cm from the real hand now and its gripper "
                      f"{r['gripper_median']:.2f} from the real opening (medians), {r['frames_back_median']:.0f} frames back."]
    trained = result["training_memory"]
    if trained["measured"]:
        lines += ["", f"In training ({trained['clips']} clips of `{trained['dataset']}`, memory_min_gap_frames = "
                  f"{trained['memory_min_gap_frames']}): the pose-retrieved memory frames were {trained['frames_back_median']:.1f} "
                  f"frames before the clip (median); {100 * trained['share_at_most_2_back']:.0f}% at most 2 frames back, "
                  f"{100 * trained['share_at_most_5_back']:.0f}% at most 5, {100 * trained['share_at_least_12_back']:.0f}% "
                  "12 or more (the sampler's are always more than its recent window back; on revisits at least 12)."]
    else:
        lines += ["", f"Training clips' memory not measured: {trained['why']}."]
    lines += ["", f"`{result['command']}` ({result['seconds']:.0f} s on {result['device']})."]
    write_result(f"{cfg.results_dir}/memory_probe_{cfg.run}.json", result, lines)


def main() -> None:
    import draccus

    memory_probe(draccus.parse(MemoryProbeConfig))


if __name__ == "__main__":
    main()
