"""What observing at the world model's frame rate alone does to a policy family, in the simulator.

    python -m eval.observation_rate --task=push-v3 --episodes=20 --run=cpu

In imagination a policy reads a new observation once per world-model frame (every `frame_stride` env steps) and
acts on it until the next (worldmodel.envs.imagined); in eval.rank's real episodes it reads one every step. The
family's scripted policies are feedback controllers, some with hard thresholds (the push expert lowers the hand
only once it is within 2 cm of the puck in the plane), so the hold alone changes how episodes end. This runs every
policy twice in MetaWorld on the same seeds, reading every step and holding each observation for `hold_steps`
steps, and scores the held runs as if they were imagined ones: per-policy success, ranking metrics, and how often
twin episodes end alike. It is the part of eval.rank's gap that no world model drawing a frame per `hold_steps`
actions can close. Writes <results_dir>/observation_rate_<run>.json and .md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import draccus
import numpy as np
from tqdm import tqdm

from eval.rank import real_episode
from eval.report import write_result
from policies.metaworld import FAMILY, make_family
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.metrics import ranking_metrics


@dataclass
class ObservationRateConfig:
    task: str = "push-v3"
    episodes: int = 20
    max_episode_steps: int = 120
    seed: int = 1000  # episode e starts from env seed `seed + e` (eval.rank's seeds)
    hold_steps: int = 4  # the shipped models' frame_stride
    policies: list[str] | None = None  # None: the whole family
    run: str = "cpu"
    results_dir: str = "eval/results"


def episode_success(env, policy, seed: int, steps: int, hold_steps: int) -> bool:
    """One episode in which the policy reads a fresh observation every `hold_steps` steps; success as eval.rank's
    --success.last_frames=1 reads it: the simulator's flag after the last step."""
    _, _, flags, _, _ = real_episode(env, policy, seed, steps, stride=1, keep_frames=False, render=False,
                                     hold_steps=hold_steps)
    return flags[-1]


def observation_rate(cfg: ObservationRateConfig) -> dict:
    if cfg.hold_steps < 1:
        raise ValueError(f"hold_steps: expected >= 1, got {cfg.hold_steps}")
    started = time.time()
    names = cfg.policies or list(FAMILY)
    env = MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=[], max_episode_steps=cfg.max_episode_steps))
    every_step, held = {}, {}
    for name in tqdm(names, desc="policies", unit="policy"):
        policy = make_family(cfg.task, names=[name])[0]
        runs = [[episode_success(env, policy, cfg.seed + e, cfg.max_episode_steps, hold)
                 for e in range(cfg.episodes)] for hold in (1, cfg.hold_steps)]
        every_step[name], held[name] = runs
    env.close()
    real = [float(np.mean(every_step[n])) for n in names]
    held_rate = [float(np.mean(held[n])) for n in names]
    alike = float(np.mean([a == b for n in names for a, b in zip(every_step[n], held[n])]))
    result = {"run": cfg.run, "config": asdict(cfg), "policies": names,
              "success_every_step": real, "success_held": held_rate,
              "episodes_every_step": every_step, "episodes_held": held,
              **ranking_metrics(real, held_rate), "episode_agreement": alike,
              "seconds": time.time() - started, "command": command(cfg)}
    write_result(f"{cfg.results_dir}/observation_rate_{cfg.run}.json", result, report_lines(cfg, result))
    return result


def command(cfg: ObservationRateConfig) -> str:
    flags = [f"--task={cfg.task}", f"--episodes={cfg.episodes}", f"--max_episode_steps={cfg.max_episode_steps}",
             f"--seed={cfg.seed}", f"--hold_steps={cfg.hold_steps}"]
    if cfg.policies:
        flags.append(f"--policies=[{','.join(cfg.policies)}]")
    return " ".join(["python -m eval.observation_rate", *flags, f"--run={cfg.run}"])


def report_lines(cfg: ObservationRateConfig, result: dict) -> list[str]:
    lines = [f"# Observing at the world model's frame rate, in the simulator: {cfg.run}", "",
             f"Task `{cfg.task}`, env seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1}, {cfg.max_episode_steps} steps. "
             f"Each policy runs twice in MetaWorld: reading the observation every step (as in eval.rank's real "
             f"episodes) and holding each one for {cfg.hold_steps} steps (as in imagination). Success: the "
             "simulator's flag after the last step.", "",
             f"| policy | success, every step | success, held {cfg.hold_steps} steps |", "| --- | ---: | ---: |"]
    for name, a, b in zip(result["policies"], result["success_every_step"], result["success_held"]):
        lines.append(f"| {name} | {a:.2f} | {b:.2f} |")
    lines += ["", f"Scored as if the held runs were imagined ones: Pearson r {result['pearson']:.3f}, Spearman rho "
              f"{result['spearman']:.3f}, MMRV {result['mmrv']:.3f}; twin episodes end alike "
              f"{result['episode_agreement']:.2f} of the time. A perfect world model drawing one frame per "
              f"{cfg.hold_steps} actions would score this against eval.rank's real episodes.", "",
              "Command:", "", f"    {result['command']}"]
    return lines


def main() -> None:
    observation_rate(draccus.parse(ObservationRateConfig))


if __name__ == "__main__":
    main()
