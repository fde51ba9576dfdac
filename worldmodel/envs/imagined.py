"""The imagined env: a gymnasium VectorEnv around `WorldModel`, indistinguishable from the real env to
a policy: the same observation keys and spaces (`observation.images.<cam>`, `observation.state`), the
same action space, `info["is_success"]` (from a success judge instead of the simulator).

The env steps at the control rate: each `step(actions)` takes one env action per rollout; every
`frame_stride` actions the world model draws the next frame (and state), which is what the policy
observes until the next frame (policies that output action chunks fit naturally). Episodes end by
truncation after `max_episode_steps`; reset takes the initial observations to imagine from:

    env = make_env(world_model, n_envs=16, judge=judge, max_episode_steps=120)
    obs, info = env.reset(options={"observations": real_initial_observations})
    obs, reward, terminated, truncated, info = env.step(actions)      # actions (16, A)

Autoreset is disabled: after truncation call reset again (as lerobot-eval's rollout loop does).
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from worldmodel.envs.spaces import action_space, observation_space
from worldmodel.judge import judge_window
from worldmodel.world import WorldModel

# (frames (B, K, V, 3, H, W) uint8, states (B, K, S), task) -> success probability (B,)
Judge = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


class ImaginedVectorEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": ["rgb_array"]}

    def __init__(self, world: WorldModel, judge: Judge | None = None, max_episode_steps: int = 120,
                 task: str = "", success_threshold: float = 0.5, judge_frames: int | None = None,
                 action_low: float = -1.0, action_high: float = 1.0):
        cfg = world.cfg
        self.world, self.judge, self.task = world, judge, task
        self.task_description = task
        self.num_envs = world.batch_size
        self.max_episode_steps = max_episode_steps
        # How many last frames the judge reads travels with the judge (worldmodel.judge.judge_window).
        self.success_threshold = success_threshold
        self.judge_frames = judge_frames if judge_frames is not None else judge_window(judge)
        self.single_observation_space = observation_space(list(cfg.camera_keys), cfg.image_size, cfg.state_dim)
        self.single_action_space = action_space(cfg.action_dim, action_low, action_high)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._pending: list[np.ndarray] = []
        self._recent: list[dict] = []  # the last judge_frames observations, for the judge
        self._observation = None
        self._steps = 0
        self.last_success_probability = np.zeros(self.num_envs, np.float32)

    def _numpy(self, obs: dict) -> dict:
        return {k: v.cpu().numpy().astype(np.float32 if k == "observation.state" else np.uint8)
                for k, v in obs.items()}

    def reset(self, *, seed=None, options=None):
        if not options or "observations" not in options:
            raise ValueError("reset: pass options={'observations': {...}}, the real observations to imagine from")
        if seed is not None:
            self.world.generator.manual_seed(int(np.atleast_1d(seed)[0]))
        self._observation = self._numpy(self.world.reset(options["observations"]))
        self._recent = [self._observation]
        self._pending, self._steps = [], 0
        self.last_success_probability = np.zeros(self.num_envs, np.float32)
        return self._observation, {"is_success": np.zeros(self.num_envs, bool)}

    def step(self, actions):
        if self._observation is None:
            raise RuntimeError("reset: call reset(options={'observations': ...}) before step")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, *self.single_action_space.shape):
            raise ValueError(f"actions: expected ({self.num_envs}, {self.single_action_space.shape[0]}), "
                             f"got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("actions: contain NaN or inf")
        self._pending.append(np.clip(actions, self.single_action_space.low, self.single_action_space.high))
        self._steps += 1
        if len(self._pending) == self.world.cfg.frame_stride:  # a frame's worth of actions: imagine it
            chunk = np.stack(self._pending, axis=1)  # (B, stride, A)
            self._pending = []
            self._observation = self._numpy(self.world.step(chunk))
            self._recent = (self._recent + [self._observation])[-self.judge_frames:]
            self.last_success_probability = self._judge()
        success = self.last_success_probability >= self.success_threshold
        truncated = np.full(self.num_envs, self._steps >= self.max_episode_steps)
        info = {"is_success": success, "success_probability": self.last_success_probability.copy()}
        return (self._observation, success.astype(np.float32), np.zeros(self.num_envs, bool), truncated, info)

    def _judge(self) -> np.ndarray:
        if self.judge is None:
            return np.zeros(self.num_envs, np.float32)
        keys = list(self.world.cfg.camera_keys)
        # Right after a reset fewer than K frames exist: the oldest is repeated, as if the robot had waited.
        recent = [self._recent[0]] * (self.judge_frames - len(self._recent)) + self._recent
        frames = torch.stack([torch.stack([torch.as_tensor(o[k]) for k in keys], dim=1) for o in recent], dim=1)
        frames = frames.permute(0, 1, 2, 5, 3, 4)  # (B, K, V, 3, H, W) uint8
        states = torch.stack([torch.as_tensor(o["observation.state"]) for o in recent], dim=1)
        with torch.no_grad():
            return np.asarray(torch.as_tensor(self.judge(frames, states, self.task)).float().cpu(), np.float32)

    def render(self):
        keys = list(self.world.cfg.camera_keys)
        return np.concatenate([self._observation[k] for k in keys], axis=2)


def make_env(world: WorldModel, n_envs: int | None = None, **kwargs) -> ImaginedVectorEnv:
    """lerobot-eval style factory: a VectorEnv of `n_envs` imagined rollouts (the world's batch size)."""
    if n_envs is not None and n_envs != world.batch_size:
        raise ValueError(f"n_envs: {n_envs} differs from the world model's batch_size {world.batch_size}")
    return ImaginedVectorEnv(world, **kwargs)


class ImaginedEnv(gym.Env):
    """The single-rollout gymnasium env: an `ImaginedVectorEnv` of one, with unbatched observations
    and actions (what a policy written for the real `MetaWorldMultiViewEnv` expects)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, world: WorldModel, **kwargs):
        if world.batch_size != 1:
            raise ValueError(f"world: ImaginedEnv runs one rollout; got batch_size {world.batch_size} "
                             "(use ImaginedVectorEnv)")
        self.vector = ImaginedVectorEnv(world, **kwargs)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.task = self.task_description = self.vector.task

    def reset(self, *, seed=None, options=None):
        if options and "observations" in options:
            options = {"observations": {k: np.asarray(v)[None] for k, v in options["observations"].items()}}
        obs, info = self.vector.reset(seed=seed, options=options)
        return {k: v[0] for k, v in obs.items()}, {k: v[0] for k, v in info.items()}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.vector.step(np.asarray(action, np.float32)[None])
        return ({k: v[0] for k, v in obs.items()}, float(reward[0]), bool(terminated[0]), bool(truncated[0]),
                {k: v[0] for k, v in info.items()})

    def render(self):
        return self.vector.render()[0]
