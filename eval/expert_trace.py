"""Where imagination parts from the simulator on one task's expert: the same expert, closed loop, on the same env
seeds in MetaWorld and in the world model, traced frame by frame.

    python -m eval.expert_trace --model=pretrained/metaworld_push/tiny --task=push-v3 --episodes=20 --run=cpu_tiny

eval.rank says how often imagined episodes end in success; this says why they do not. Per episode, for the real
and the imagined twin: the hand's lowest point, how far the object travels, how far it ends from the goal, and the
hand-object distance in the plane where the hand is lowest (a push or a grasp needs the fingers around the
object). The expert reads the state, so in imagination it acts on the predicted hand and object. Writes
<results_dir>/expert_trace_<run>.json and .md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import draccus
import numpy as np
import torch
from tqdm import tqdm

from eval.fidelity import HAND, OBJECT
from eval.rank import camera_names, real_episode
from eval.report import write_result
from policies.metaworld import make_family
from worldmodel.envs.imagined import ImaginedVectorEnv
from worldmodel.envs.metaworld import STATE_NAMES, MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.judge import StateDistanceJudge
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel

GOAL = [STATE_NAMES.index(n) for n in ("goal_x", "goal_y", "goal_z")]


@dataclass
class ExpertTraceConfig:
    model: str = "pretrained/metaworld_push/tiny"
    task: str = "push-v3"
    episodes: int = 20
    max_episode_steps: int = 120
    seed: int = 1000  # episode e starts from env seed `seed + e` (eval.rank's seeds)
    # Which member of the task's policy family (policies.metaworld) to trace. One that draws noise (noise_*,
    # random_*) draws different noise in the two worlds, so its twins part for that reason too.
    policy: str = "expert"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run: str = "cpu_tiny"
    results_dir: str = "eval/results"


def trace_summary(states: np.ndarray) -> dict:
    """states (E, F, S), one row of frames per episode -> per episode (cm): the hand's lowest z, the object's travel
    in the plane, its final distance to the goal in the plane, and at the hand's lowest frame the hand-object distance
    in the plane and the object's height."""
    hand, obj, goal = states[..., HAND], states[..., OBJECT], states[..., GOAL]
    lowest = hand[..., 2].argmin(1)
    rows = np.arange(len(states))
    return {"lowest_hand_z_cm": 100 * hand[rows, lowest, 2],
            "object_travel_cm": 100 * np.linalg.norm(obj[:, -1, :2] - obj[:, 0, :2], axis=-1),
            "final_object_to_goal_cm": 100 * np.linalg.norm(obj[:, -1, :2] - goal[:, -1, :2], axis=-1),
            # in 3D, as push's success rule measures it (success: under 5 cm)
            "final_object_to_goal_3d_cm": 100 * np.linalg.norm(obj[:, -1] - goal[:, -1], axis=-1),
            "hand_object_xy_at_lowest_cm": 100 * np.linalg.norm(hand[rows, lowest, :2] - obj[rows, lowest, :2],
                                                                axis=-1),
            # the expert lowers the hand to the object's height + 3 cm: an object seen too high stops it early
            "object_z_at_lowest_cm": 100 * obj[rows, lowest, 2]}


def real_traces(cfg: ExpertTraceConfig, model: VideoDiT) -> tuple[list[dict], np.ndarray]:
    """The traced policy in MetaWorld: -> the initial observations and the states (E, F, S) at the model's frames."""
    stride = model.cfg.frame_stride
    env = MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=camera_names(list(model.cfg.camera_keys)),
                                                image_size=model.cfg.image_size,
                                                max_episode_steps=cfg.max_episode_steps))
    initials, states = [], []
    for e in tqdm(range(cfg.episodes), desc="real episodes", unit="episode"):
        policy = make_family(cfg.task, names=[cfg.policy])[0]
        initial, kept, _, _, _ = real_episode(env, policy, cfg.seed + e, cfg.max_episode_steps, stride,
                                              keep_frames=True, render=False)
        initials.append(initial)
        states.append(np.stack([o["observation.state"] for o in kept]))
    env.close()
    return initials, np.stack(states)


def imagined_traces(cfg: ExpertTraceConfig, model: VideoDiT, initials: list[dict]) -> np.ndarray:
    """The traced policy in the world model from the same first observations, all episodes in one batch: -> (E, F, S)."""
    keys, E = list(model.cfg.camera_keys), len(initials)
    world = WorldModel(model, cfg.sampler, batch_size=E, device="cpu", seed=cfg.seed)
    env = ImaginedVectorEnv(world, StateDistanceJudge.for_task(cfg.task), cfg.max_episode_steps, task=cfg.task)
    obs, _ = env.reset(options={"observations": {k: np.stack([i[k] for i in initials])
                                                 for k in keys + ["observation.state"]}})
    policy = make_family(cfg.task, names=[cfg.policy])[0]  # acts on a batch
    policy.reset(seed=cfg.seed)
    states = [obs["observation.state"].copy()]
    for t in tqdm(range(cfg.max_episode_steps), desc="imagined steps", unit="step"):
        obs, *_ = env.step(policy.select_action(obs))
        if (t + 1) % model.cfg.frame_stride == 0:
            states.append(obs["observation.state"].copy())
    return np.stack(states, 1)


def report_lines(cfg: ExpertTraceConfig, result: dict) -> list[str]:
    lines = [f"# The {cfg.policy} policy traced in the simulator and in imagination: {cfg.run}", "",
             f"Model `{cfg.model}`, task `{cfg.task}`, policy `{cfg.policy}` on env seeds {cfg.seed}-"
             f"{cfg.seed + cfg.episodes - 1}, closed loop in MetaWorld and in the world model from the same first "
             "observation (in imagination the policy reads the predicted state). Per episode, cm.", "",
             "| episode | lowest hand z, real / imagined | object travel, real / imagined | final object-goal, "
             "real / imagined | final object-goal in 3D, real / imagined | hand-object in the plane at the lowest, "
             "real / imagined | object z at the lowest, real / imagined |",
             "| ---: | --- | --- | --- | --- | --- | --- |"]
    real, imagined = result["real"], result["imagined"]
    for e in range(cfg.episodes):
        cells = [f"{real[k][e]:.1f} / {imagined[k][e]:.1f}" for k in real]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", "Mean: " + "; ".join(f"{k} {np.mean(real[k]):.1f} real, {np.mean(imagined[k]):.1f} imagined"
                                      for k in real) + ".", "",
              "Command:", "", f"    {result['command']}"]
    return lines


def sampler_flags(sampler: dict, default: dict, prefix: str = "--sampler.") -> list[str]:
    """The sampler settings that differ from the default, as flags (nested ones dotted: --sampler.memory.k=0)."""
    flags = []
    for key, value in sampler.items():
        if isinstance(value, dict):
            flags += sampler_flags(value, default[key], f"{prefix}{key}.")
        elif value != default[key]:
            flags.append(f"{prefix}{key}={value}")
    return flags


def command(cfg: ExpertTraceConfig) -> str:
    return " ".join([f"python -m eval.expert_trace --model={cfg.model} --task={cfg.task} --episodes={cfg.episodes} "
                     f"--max_episode_steps={cfg.max_episode_steps} --seed={cfg.seed}"
                     + (f" --policy={cfg.policy}" if cfg.policy != "expert" else ""),
                     *sampler_flags(asdict(cfg.sampler), asdict(SamplerConfig())), f"--run={cfg.run}"])


def expert_trace(cfg: ExpertTraceConfig) -> dict:
    started = time.time()
    model = VideoDiT.from_pretrained(cfg.model).float().eval()
    initials, real = real_traces(cfg, model)
    with torch.no_grad():
        imagined = imagined_traces(cfg, model, initials)
    result = {"run": cfg.run, "config": asdict(cfg),
              "real": {k: v.tolist() for k, v in trace_summary(real).items()},
              "imagined": {k: v.tolist() for k, v in trace_summary(imagined).items()},
              "seconds": time.time() - started,
              "command": command(cfg)}
    write_result(f"{cfg.results_dir}/expert_trace_{cfg.run}.json", result, report_lines(cfg, result))
    return result


def main() -> None:
    expert_trace(draccus.parse(ExpertTraceConfig))


if __name__ == "__main__":
    main()
