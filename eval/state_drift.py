"""Why an open-loop state drifts: the model's hand error a few frames after a *real* frame (teacher forced)
beside the same error of dead reckoning, on the held-out tours of eval.fidelity.

    python -m eval.state_drift --model=pretrained/metaworld_push/tiny \
        --dataset.root=outputs/recipe_cpu/datasets/metaworld_push_long --run=cpu_tiny

From every `every`-th frame of each tour, the real frame and state are given and the next `frames_ahead` frames
are predicted from the recorded actions (the reference sampler). Dead reckoning starts from the same real hand
and adds MetaWorld's gain x the actions, clipped to the training workspace (eval.fidelity's state_kinematic). If the model is as good as
dead reckoning a few frames ahead but far worse after many, its error compounds: it anchors each state on its
own last prediction, while dead reckoning integrates the commands from one fixed start. Writes
<results_dir>/state_drift_<run>.json and .md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from eval.fidelity import HAND, OBJECT, kinematic_model
from eval.report import write_result
from worldmodel.dataset import ClipDataset, DatasetConfig
from worldmodel.diffusion import sample_full_sequence
from worldmodel.model import VideoDiT


@dataclass
class StateDriftConfig:
    model: str = "pretrained/metaworld_push/tiny"
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(root="outputs/datasets/metaworld_push_long",
                                                                         repo_id="local/metaworld_push_long"))
    baseline_dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        root="outputs/datasets/metaworld_push", repo_id="local/metaworld_push"))
    episodes: int = 8
    frames_ahead: int = 5
    every: int = 10  # a start every this many frames of each tour
    steps: int = 4  # sampling steps (the state is the network's prediction at the last one)
    seed: int = 0
    run: str = "cpu_tiny"
    results_dir: str = "eval/results"


def teacher_forced_errors(model: VideoDiT, clips: ClipDataset, cfg: StateDriftConfig, dead_reckoning) -> dict:
    """Hand and object error (m) k = 1..frames_ahead frames after real frames: {"model": (N, k), "dead_reckoning":
    (N, k)} (dead reckoning moves the hand by the actions and holds the object still), and the same for the object
    under "object_model" / "object_held_still"."""
    stride, F = model.cfg.frame_stride, cfg.frames_ahead
    errors = {"model": [], "dead_reckoning": [], "object_model": [], "object_held_still": []}
    for position, length in enumerate(clips.cache.episode_length):
        starts = range(0, int(length) - (F + 1) * stride, cfg.every * stride)
        batch = [clips.clip(position, int(s)) for s in starts]
        images = torch.stack([b["images"] for b in batch])  # (B, F + 1, V, 3, H, W)
        state, actions = torch.stack([b["state"] for b in batch]), torch.stack([b["actions"] for b in batch])
        with torch.no_grad():
            # a model told the commanded pose gets the one integrated from the tour's start (the hand lags it)
            command = torch.stack([b["command"] for b in batch]) if "command" in batch[0] else None
            _, predicted = sample_full_sequence(model, images[:, :1], state[:, :1], actions, num_steps=cfg.steps,
                                                generator=torch.Generator().manual_seed(cfg.seed), command=command)
        real = state[:, 1:, HAND].numpy()
        errors["model"].append(np.linalg.norm(predicted[..., HAND].numpy() - real, axis=-1))
        real_object = state[:, 1:, OBJECT].numpy()
        errors["object_model"].append(np.linalg.norm(predicted[..., OBJECT].numpy() - real_object, axis=-1))
        errors["object_held_still"].append(np.linalg.norm(state[:, :1, OBJECT].numpy() - real_object, axis=-1))
        reckoned, current = [], state[:, 0].numpy().astype(np.float64)
        for f in range(1, F + 1):
            current = dead_reckoning(current, actions[:, f].numpy())
            reckoned.append(current[:, HAND])
        errors["dead_reckoning"].append(np.linalg.norm(np.stack(reckoned, 1) - real, axis=-1))
    return {k: np.concatenate(v) for k, v in errors.items()}


def state_drift(cfg: StateDriftConfig) -> dict:
    started = time.time()
    model = VideoDiT.from_pretrained(cfg.model).float().eval()
    mc = model.cfg
    view = dict(camera_keys=list(mc.camera_keys), image_size=mc.image_size, frame_stride=mc.frame_stride,
                memory_frames=0)
    clips = ClipDataset(replace(cfg.dataset, clip_frames=cfg.frames_ahead + 1, episodes=list(range(cfg.episodes)),
                                **view))
    if mc.condition_on_command:
        clips.attach_commands(*model.command_parameters())
    train = ClipDataset(replace(cfg.baseline_dataset, clip_frames=2, **view))
    errors = teacher_forced_errors(model, clips, cfg, kinematic_model(train))
    hand = {k: errors[k] for k in ("model", "dead_reckoning")}
    obj = {k.removeprefix("object_"): errors[k] for k in ("object_model", "object_held_still")}
    result = {"run": cfg.run, "model": cfg.model, "dataset": cfg.dataset.root, "episodes": cfg.episodes,
              "starts": int(len(errors["model"])), "frames_ahead": list(range(1, cfg.frames_ahead + 1)),
              "hand_error_m": {k: v.mean(0).round(5).tolist() for k, v in hand.items()},
              "hand_error_median_m": {k: np.median(v, 0).round(5).tolist() for k, v in hand.items()},
              "object_error_m": {k: v.mean(0).round(5).tolist() for k, v in obj.items()},
              "seconds": time.time() - started,
              "command": f"python -m eval.state_drift --model={cfg.model} --dataset.root={cfg.dataset.root} "
                         f"--dataset.repo_id={cfg.dataset.repo_id} --baseline_dataset.root={cfg.baseline_dataset.root} "
                         f"--episodes={cfg.episodes} --frames_ahead={cfg.frames_ahead} --run={cfg.run}"}
    ahead = " | ".join(str(k) for k in result["frames_ahead"])
    lines = [f"# Teacher-forced state error: {cfg.run}", "",
             f"Model `{cfg.model}`; {result['starts']} starts on {cfg.episodes} held-out tours of `{cfg.dataset.root}`. "
             "From a real frame and state, the hand and the object k frames later (cm, mean over starts), predicted "
             "from the recorded actions, beside dead reckoning from the same real hand (eval.fidelity's "
             "state_kinematic) and the object held where it was.", "",
             f"| frames ahead | {ahead} |", "| --- |" + " ---: |" * cfg.frames_ahead]
    for part in ("hand", "object"):
        for name, values in result[f"{part}_error_m"].items():
            lines.append(f"| {part}, {name.replace('_', ' ')} | " + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
    lines += ["", f"`{result['command']}` ({result['seconds']:.0f} s)."]
    write_result(f"{cfg.results_dir}/state_drift_{cfg.run}.json", result, lines)
    return result


def main() -> None:
    import draccus

    state_drift(draccus.parse(StateDriftConfig))


if __name__ == "__main__":
    main()
