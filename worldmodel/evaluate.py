"""`wm eval`: rank your own LeRobot policies inside your own world model, from your dataset's episodes.

    wm eval --model=outputs/train/small/model --judge=outputs/judge/mine \\
        --policies='[outputs/act_5k/pretrained_model,outputs/act_20k/pretrained_model]' \\
        --dataset.root=outputs/datasets/mine --episodes=20

Every policy starts from the first frame of the same `episodes` dataset episodes (cycled if the
dataset has fewer); all of a policy's rollouts run as one batch. With no simulator at hand this gives
imagined success rates and the ranking they imply; `python -m eval.rank` is the version that also
measures real success (MetaWorld) and the agreement between the two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.dataset import DatasetConfig, start_frames
from worldmodel.envs.imagined import ImaginedVectorEnv
from worldmodel.judge import SuccessJudge
from worldmodel.metrics import SuccessRule
from worldmodel.model import VideoDiT
from worldmodel.policy import LeRobotPolicy
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


@dataclass
class EvalConfig:
    model: str = "outputs/train/tiny_cpu/model"
    judge: str = "outputs/judge/metaworld_push"
    policies: list[str] = field(default_factory=list)  # LeRobot pretrained policy folders
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    episodes: int = 10
    max_episode_steps: int = 120
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    device: str | None = None
    output: str = "outputs/eval/imagined.json"
    # When an imagined episode is a success, from the judge's verdict on each of its frames (eval.rank applies the
    # same rule to real episodes).
    success: SuccessRule = field(default_factory=SuccessRule)


def initial_observations(model: VideoDiT, cfg: EvalConfig) -> tuple[dict, str]:
    """First frame of `episodes` episodes, at the model's views and size, in LeRobot keys."""
    clips = start_frames(cfg.dataset, model.cfg)
    observations = clips.first_observations(np.arange(cfg.episodes))
    task = str(clips.lerobot_dataset.meta.tasks.index[0]) if len(clips.lerobot_dataset.meta.tasks) else ""
    return observations, task


def evaluate(cfg: EvalConfig) -> dict:
    if not cfg.policies:
        raise ValueError("policies: give at least one LeRobot pretrained policy folder")
    model = VideoDiT.from_pretrained(cfg.model)
    judge = SuccessJudge.from_pretrained(cfg.judge).eval()
    start, task = initial_observations(model, cfg)
    results = []
    for path in tqdm(cfg.policies, desc="policies", unit="policy"):
        policy = LeRobotPolicy.from_pretrained(path, task=task, name=path)
        world = WorldModel(model, cfg.sampler, batch_size=cfg.episodes, device=cfg.device, seed=cfg.seed)
        env = ImaginedVectorEnv(world, judge.probability, cfg.max_episode_steps, task=task)
        obs, _ = env.reset(options={"observations": start})
        policy.reset()
        flags = []  # (frames, episodes): the judge's verdict on every world-model frame
        for t in range(cfg.max_episode_steps):
            obs, _, _, _, info = env.step(np.clip(policy.select_action(obs), env.single_action_space.low,
                                                  env.single_action_space.high))
            if (t + 1) % model.cfg.frame_stride == 0:
                flags.append(np.asarray(info["is_success"], bool))
        success = cfg.success(np.stack(flags, axis=1)) if flags else np.zeros(cfg.episodes, bool)
        results.append({"policy": path, "imagined_success": float(success.mean()),
                        "n_episodes": cfg.episodes, "per_episode_success": success.tolist(),
                        "per_episode_probability": info["success_probability"].tolist()})
    ranking = [r["policy"] for r in sorted(results, key=lambda r: -r["imagined_success"])]
    report = {"policies": results, "ranking": ranking, "model": cfg.model, "judge": cfg.judge, "task": task,
              "success_rule": cfg.success.describe(), "config": asdict(cfg)}
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['imagined_success']:.2f}  {r['policy']}")
    return report


def main(argv: list[str] | None = None) -> None:
    import draccus

    evaluate(draccus.parse(EvalConfig, args=argv))
