"""Which part of its own output an imagined rollout goes wrong on: the task's expert closed loop in the world model,
with MetaWorld stepped in lockstep by the same actions, and the real pictures of chosen views (or the real state)
put in place of the drawn ones after every frame (teacher forcing; StreamingSampler.frame_filter).

    python -m eval.picture_swap --model=pretrained/metaworld_push/tiny --real_views=[2] --run=cpu_tiny_views2

With nothing swapped this is eval.expert_trace's imagined run (one episode at a time). If the imagined episodes go
right once the real pictures of one view are swapped in, the model's own pictures of that view are what misleads
it. The expert reads the state the loop runs on (the imagined one, unless --real_state). Writes
<results_dir>/picture_swap_<run>.json and .md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import draccus
import numpy as np
import torch
from tqdm import tqdm

from eval.expert_trace import sampler_flags, trace_summary
from eval.rank import camera_names
from eval.report import write_result
from policies.metaworld import make_family
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.judge import StateDistanceJudge
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel

@dataclass
class PictureSwapConfig:
    model: str = "pretrained/metaworld_push/tiny"
    task: str = "push-v3"
    episodes: int = 20
    max_episode_steps: int = 120
    seed: int = 1000  # episode e starts from env seed `seed + e` (eval.rank's and eval.expert_trace's seeds)
    real_views: list[int] = field(default_factory=list)  # views (camera_keys order) whose real pictures are swapped in
    real_state: bool = False  # also swap in the real state (the expert then acts on it)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run: str = "cpu_tiny"
    results_dir: str = "eval/results"


def check_config(cfg: PictureSwapConfig, model: VideoDiT) -> None:
    views = model.cfg.num_views
    bad = [v for v in cfg.real_views if not 0 <= v < views]
    if bad:
        raise ValueError(f"real_views: view indices must be in 0..{views - 1} ({list(model.cfg.camera_keys)}), "
                         f"got {bad} (model {cfg.model})")


class Swap:
    """The sampler's frame filter: the real pictures of some views (and the real state) in place of the drawn ones."""

    def __init__(self, views: list[int], real_state: bool):
        self.views, self.real_state = views, real_state
        self.latents = self.state = None  # the real frame, set before each world-model step

    def __call__(self, x: torch.Tensor, s: torch.Tensor):
        if self.views:
            x = x.clone()
            x[:, self.views] = self.latents[:, self.views].to(x)
        return x, (self.state.to(s) if self.real_state else s)


def episode(cfg: PictureSwapConfig, env, world: WorldModel, swap: Swap, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One lockstep episode -> states (F, S) of the loop (what the expert read) and of MetaWorld, at the model's frames."""
    stride = world.cfg.frame_stride

    def batch(observation):
        return {k: np.asarray(v)[None] for k, v in observation.items()}

    real, _ = env.reset(seed=seed)
    expert = make_family(cfg.task, names=["expert"])[0]
    expert.reset(seed=seed)
    obs = {k: v.cpu().numpy() for k, v in world.reset(batch(real)).items()}
    loop_states, real_states, chunk = [obs["observation.state"][0]], [real["observation.state"]], []
    for t in range(cfg.max_episode_steps):
        action = expert.select_action(obs)[0]
        chunk.append(action)
        rendered = (t + 1) % stride == 0
        real, *_ = env.step(action) if rendered else env.step_state_only(action)
        if not rendered:
            continue
        swap.latents = world.encode(batch(real))[:, 0]
        swap.state = torch.as_tensor(real["observation.state"], dtype=torch.float32)[None]
        # the frame returned is the one committed: swapped pictures (and state) included
        obs = {k: v.cpu().numpy() for k, v in world.step(np.stack(chunk)[None]).items()}
        chunk = []
        loop_states.append(obs["observation.state"][0])
        real_states.append(real["observation.state"])
    return np.stack(loop_states), np.stack(real_states)


def report_lines(cfg: PictureSwapConfig, result: dict) -> list[str]:
    loop, real = result["loop"], result["real"]
    swapped = ", ".join(result["swapped"]) or "nothing"
    lines = [f"# The expert in imagination with real pictures swapped in: {cfg.run}", "",
             f"Model `{cfg.model}`, task `{cfg.task}`, env seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1}. After every "
             f"imagined frame, swapped in from MetaWorld (stepped in lockstep by the same actions): {swapped}. The "
             "expert reads the loop's state. Per episode, cm.", "",
             "| episode | lowest hand z, loop / MetaWorld | final object-goal, loop / MetaWorld |", "| ---: | --- | --- |"]
    for e in range(cfg.episodes):
        lines.append(f"| {e} | {loop['lowest_hand_z_cm'][e]:.1f} / {real['lowest_hand_z_cm'][e]:.1f} | "
                     f"{loop['final_object_to_goal_cm'][e]:.1f} / {real['final_object_to_goal_cm'][e]:.1f} |")
    lines += ["", f"Successes ({result['success_rule']}, last frame): loop {result['loop_successes']} of "
              f"{cfg.episodes}, MetaWorld {result['real_successes']} of {cfg.episodes}. Mean lowest hand z: loop "
              f"{np.mean(loop['lowest_hand_z_cm']):.2f} cm, MetaWorld {np.mean(real['lowest_hand_z_cm']):.2f} cm.", "",
              "Command:", "", f"    {result['command']}"]
    return lines


def command(cfg: PictureSwapConfig) -> str:
    return " ".join([f"python -m eval.picture_swap --model={cfg.model} --task={cfg.task} --episodes={cfg.episodes} "
                     f"--max_episode_steps={cfg.max_episode_steps} --seed={cfg.seed} "
                     f"--real_views=[{','.join(map(str, cfg.real_views))}] --real_state={cfg.real_state}",
                     *sampler_flags(asdict(cfg.sampler), asdict(SamplerConfig())), f"--run={cfg.run}"])


def picture_swap(cfg: PictureSwapConfig) -> dict:
    started = time.time()
    model = VideoDiT.from_pretrained(cfg.model).float().eval()
    check_config(cfg, model)
    keys = list(model.cfg.camera_keys)
    env = MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=camera_names(keys),
                                                image_size=model.cfg.image_size, max_episode_steps=cfg.max_episode_steps))
    world = WorldModel(model, cfg.sampler, batch_size=1, device="cpu", seed=cfg.seed)
    swap = Swap(cfg.real_views, cfg.real_state)
    world.sampler.frame_filter = swap
    loop, real = [], []
    with torch.no_grad():
        for e in tqdm(range(cfg.episodes), desc="lockstep episodes", unit="episode"):
            loop_states, real_states = episode(cfg, env, world, swap, cfg.seed + e)
            loop.append(loop_states)
            real.append(real_states)
    env.close()
    loop, real = np.stack(loop), np.stack(real)
    loop_summary, real_summary = trace_summary(loop), trace_summary(real)
    rule = StateDistanceJudge.for_task(cfg.task)  # the simulator's own success rule, on the last frame's state
    result = {"run": cfg.run, "config": asdict(cfg),
              "swapped": [keys[v] for v in cfg.real_views] + (["observation.state"] if cfg.real_state else []),
              "loop": {k: v.tolist() for k, v in loop_summary.items()},
              "real": {k: v.tolist() for k, v in real_summary.items()},
              "success_rule": rule.describe(),
              "loop_successes": int(rule(None, loop).sum()), "real_successes": int(rule(None, real).sum()),
              "seconds": time.time() - started, "command": command(cfg)}
    write_result(f"{cfg.results_dir}/picture_swap_{cfg.run}.json", result, report_lines(cfg, result))
    return result


def main() -> None:
    picture_swap(draccus.parse(PictureSwapConfig))


if __name__ == "__main__":
    main()
