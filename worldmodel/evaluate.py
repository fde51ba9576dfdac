"""`wm eval`: rank your own LeRobot policies inside your own world model, from your dataset's episodes.

    wm eval --model=outputs/train/small/model --judge=outputs/judge/mine \\
        --policies='[outputs/act_5k/pretrained_model,outputs/act_20k/pretrained_model]' \\
        --dataset.root=outputs/datasets/mine --episodes=20

Every policy starts from the first frame of the same `episodes` dataset episodes (cycled if the
dataset has fewer); all of a policy's rollouts run as one batch. With no simulator at hand this gives
imagined success rates and the ranking they imply. Given a few real outcomes per policy (`real_outcomes`), it
also estimates each policy's real success with a valid interval (worldmodel/estimate.py). `python -m eval.rank`
is the version that also measures real success (MetaWorld) and the agreement between the two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.dataset import DatasetConfig, start_frames
from worldmodel.envs.imagined import ImaginedVectorEnv
from worldmodel.estimate import SuccessEstimate, compare_policies
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
    # Real outcomes of each policy's first episodes, run from the same initial states as those imagined episodes: a
    # JSON file {policy folder: [0/1, ...]}. Each such policy's real success is then estimated from those real trials
    # and all its imagined episodes, with an interval that holds however wrong imagination is
    # (worldmodel/estimate.py), and the policies are compared (which is surely better than which).
    real_outcomes: str | None = None
    confidence: float = 0.95


def initial_observations(model: VideoDiT, cfg: EvalConfig) -> tuple[dict, str]:
    """First frame of `episodes` episodes, at the model's views and size, in LeRobot keys."""
    clips = start_frames(cfg.dataset, model.cfg)
    observations = clips.first_observations(np.arange(cfg.episodes))
    task = str(clips.lerobot_dataset.meta.tasks.index[0]) if len(clips.lerobot_dataset.meta.tasks) else ""
    return observations, task


def load_real_outcomes(cfg: EvalConfig) -> dict[str, list[int]]:
    """{policy: real 0/1 outcomes of its first episodes} from cfg.real_outcomes, checked before any rollout."""
    if cfg.real_outcomes is None:
        return {}
    path = Path(cfg.real_outcomes)
    if not path.is_file():
        raise FileNotFoundError(f"real_outcomes: {path} does not exist; expected a JSON file "
                                "{policy folder: [0/1 outcome of its real episode 0, 1, ...]}")
    outcomes = json.loads(path.read_text())
    unknown = sorted(set(outcomes) - set(cfg.policies))
    if unknown:
        raise ValueError(f"real_outcomes: {path} names policies {unknown} that are not in policies {cfg.policies}")
    for policy, values in outcomes.items():
        if not isinstance(values, list) or not 0 < len(values) < cfg.episodes or not set(values) <= {0, 1, True, False}:
            raise ValueError(f"real_outcomes: {path}[{policy!r}] must be a list of 1 to episodes - 1 = "
                             f"{cfg.episodes - 1} outcomes 0/1 (the rest are imagined only), got {values!r}")
    return outcomes


def add_estimates(results: list[dict], real_outcomes: dict, confidence: float) -> dict | None:
    """Each policy with real outcomes gets `real_success_estimate`; with all of them, the comparison."""
    fitted = {}
    for r in results:
        real = real_outcomes.get(r["policy"])
        if real is not None:
            imagined = r["per_episode_success"]
            fitted[r["policy"]] = SuccessEstimate(real, imagined[:len(real)], imagined[len(real):],
                                                  confidence=confidence)
            r["real_success_estimate"] = fitted[r["policy"]].to_dict()
    if len(fitted) < 2:
        return None
    return compare_policies(list(fitted), list(fitted.values()))


def evaluate(cfg: EvalConfig) -> dict:
    if not cfg.policies:
        raise ValueError("policies: give at least one LeRobot pretrained policy folder")
    real_outcomes = load_real_outcomes(cfg)
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
    comparison = add_estimates(results, real_outcomes, cfg.confidence)
    if comparison is not None:
        report["comparison"] = comparison
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in results:
        estimate = r.get("real_success_estimate")
        real = "" if estimate is None else (f"  real {estimate['estimate']['value']:.2f} [{estimate['estimate']['low']:.2f}, "
                                            f"{estimate['estimate']['high']:.2f}]")
        print(f"{r['imagined_success']:.2f}{real}  {r['policy']}")
    return report


def main(argv: list[str] | None = None) -> None:
    import draccus

    evaluate(draccus.parse(EvalConfig, args=argv))
