"""The policy-improvement loop, measured in the real simulator (Ctrl-World's second result, as a command).

    python -m eval.improve --model=outputs/train/small/model --judge=outputs/judge/metaworld_push

1. A weak policy: LeRobot ACT trained (`lerobot-train`) on only `weak_demos` real demonstrations.
2. Imagine `starts x seeds_per_start` rollouts of it in the world model; keep the judged successes.
3. Fine-tune the weak policy (`lerobot-train --policy.path=weak`) on
      a. the imagined successes,
      b. the same number of *real* demonstrations (episodes the weak policy never saw),
      c. the same number of unfiltered imagined rollouts (judge ignored).
4. Real success in MetaWorld before and after, all on the same env seeds, with Wilson 95% intervals.
Results: eval/results/improve_<run>.json and .md.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.report import write_result
from policies.train_visual import TrainVisualConfig, train_visual
from worldmodel.dataset import DatasetConfig
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.imagine import ImagineConfig, Imaginer
from worldmodel.judge import SuccessJudge
from worldmodel.model import VideoDiT
from worldmodel.policy import LeRobotPolicy
from worldmodel.sampler import SamplerConfig


@dataclass
class ImproveConfig:
    model: str = "outputs/train/tiny_cpu/model"
    judge: str = "outputs/judge/metaworld_push"
    dataset_root: str = "outputs/datasets/metaworld_push"
    repo_id: str = "local/metaworld_push"
    task: str = "push-v3"
    weak_demos: int = 3
    weak_steps: int = 300
    finetune_steps: int = 200
    starts: int = 8
    seeds_per_start: int = 4
    threshold: float = 0.5  # judge probability above which an imagined rollout counts as a success
    eval_episodes: int = 20
    eval_seed: int = 2000
    max_episode_steps: int = 120
    batch_size: int = 32
    dim_model: int = 64
    device: str = "cpu"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run: str = "cpu"
    output_dir: str = "outputs/improve"
    results_dir: str = "eval/results"


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]  # clamped: float error gave -0.00


def real_success(checkpoint: Path, cfg: ImproveConfig, cameras: list[str], image_size: int) -> dict:
    policy = LeRobotPolicy.from_pretrained(str(checkpoint), task=f"Push the puck to the goal ({cfg.task})")
    env = MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=cameras, image_size=image_size,
                                                max_episode_steps=cfg.max_episode_steps))
    outcomes = []
    for e in tqdm(range(cfg.eval_episodes), desc=f"real episodes of {checkpoint.parent.parent.parent.name}",
                  unit="episode"):
        obs, _ = env.reset(seed=cfg.eval_seed + e)
        policy.reset()
        for _ in range(cfg.max_episode_steps):
            obs, _, _, _, info = env.step(np.clip(policy.select_action({k: v[None] for k, v in obs.items()})[0], -1, 1))
        outcomes.append(bool(info["is_success"]))
    env.close()
    k = int(sum(outcomes))
    return {"success": k / len(outcomes), "interval": wilson(k, len(outcomes)), "n": len(outcomes), "per_episode": outcomes}


def improve(cfg: ImproveConfig) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    started = time.time()
    out = Path(cfg.output_dir)
    model = VideoDiT.from_pretrained(cfg.model)
    cameras = [k.removeprefix("observation.images.") for k in model.cfg.camera_keys]
    total = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.dataset_root).total_episodes
    weak_episodes = list(range(cfg.weak_demos))

    def act(name, root, repo_id, steps, episodes, init_from=None):
        return train_visual(TrainVisualConfig(
            dataset_root=str(root), repo_id=repo_id, budgets=[steps], output_dir=str(out / name),
            batch_size=8, dim_model=cfg.dim_model, chunk_size=8, device=cfg.device, init_from=init_from,
            extra_args=["--num_workers=0", f"--dataset.episodes={json.dumps(episodes).replace(' ', '')}"]))[0]

    # 1. The weak policy.
    weak = act("weak", cfg.dataset_root, cfg.repo_id, cfg.weak_steps, weak_episodes)

    # 2. Imagined rollouts of it, filtered by the judge and unfiltered.
    judge = SuccessJudge.from_pretrained(cfg.judge).eval()
    datasets = {}
    for name, threshold in (("imagined_successes", cfg.threshold), ("imagined_unfiltered", 0.0)):
        policy = {"weak": LeRobotPolicy.from_pretrained(str(weak))}
        ledger = Imaginer(ImagineConfig(
            model=cfg.model, judge=cfg.judge, policies=["weak"],
            dataset=DatasetConfig(root=cfg.dataset_root, repo_id=cfg.repo_id), output_root=str(out / name),
            repo_id=f"local/{name}", starts=cfg.starts, seeds_per_start=cfg.seeds_per_start,
            max_episode_steps=cfg.max_episode_steps, threshold=threshold, batch_size=cfg.batch_size,
            sampler=cfg.sampler, device=None if cfg.device == "cuda" else cfg.device), policy, judge.probability).run()
        datasets[name] = [j for j in ledger["jobs"].values() if j["episode_index"] is not None]
    n_kept = len(datasets["imagined_successes"])

    # 3. Fine-tune on the same number of episodes from each source.
    results = {"before": real_success(weak, cfg, cameras, model.cfg.image_size)}
    notes = []
    unseen_real = [e for e in range(total) if e not in weak_episodes]
    n = min(n_kept, len(unseen_real))
    if n == 0:
        notes.append("the judge accepted none of the imagined rollouts: nothing to fine-tune on")
    else:
        random.Random(0).shuffle(unseen_real)
        sources = {
            "imagined_successes": (out / "imagined_successes", "local/imagined_successes", list(range(n))),
            "real_demos": (cfg.dataset_root, cfg.repo_id, sorted(unseen_real[:n])),
            "imagined_unfiltered": (out / "imagined_unfiltered", "local/imagined_unfiltered",
                                    list(range(min(n, len(datasets["imagined_unfiltered"]))))),
        }
        if n < n_kept:
            notes.append(f"only {len(unseen_real)} real demonstrations are left unseen: every arm uses {n} episodes")
        for name, (root, repo_id, episodes) in sources.items():
            tuned = act(f"finetuned_{name}", root, repo_id, cfg.finetune_steps, episodes, init_from=str(weak))
            results[f"after_{name}"] = {**real_success(tuned, cfg, cameras, model.cfg.image_size),
                                        "finetune_episodes": len(episodes)}
    report = {"run": cfg.run, "results": results, "imagined_rollouts": cfg.starts * cfg.seeds_per_start,
              "imagined_kept": n_kept, "notes": notes, "config": asdict(cfg), "seconds": time.time() - started,
              "command": "python -m eval.improve " + " ".join(f"--{k}={v}" for k, v in asdict(cfg).items()
                                                              if k != "sampler")}
    lines = [f"# Policy improvement from imagined data: {cfg.run}", "",
             f"World model `{cfg.model}`, judge `{cfg.judge}`; weak ACT on {cfg.weak_demos} demos x {cfg.weak_steps} "
             f"steps; {report['imagined_rollouts']} imagined rollouts, {n_kept} judged successful; fine-tuning "
             f"{cfg.finetune_steps} steps. Real success on {cfg.eval_episodes} MetaWorld episodes (seeds "
             f"{cfg.eval_seed}+), Wilson 95% intervals.", "", "| policy | real success | 95% interval |",
             "| --- | ---: | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['success']:.2f} | [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}] |")
    lines += [""] + [f"Note: {n}" for n in notes]
    write_result(Path(cfg.results_dir) / f"improve_{cfg.run}.json", report, lines)
    return report


def main() -> None:
    import draccus

    improve(draccus.parse(ImproveConfig))


if __name__ == "__main__":
    main()
