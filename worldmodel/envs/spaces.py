"""The observation/action spaces the real and the imagined env share (LeRobot keys)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def observation_space(camera_keys: list[str], image_size: int, state_dim: int) -> gym.spaces.Dict:
    spaces = {key: gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8) for key in camera_keys}
    spaces["observation.state"] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    return gym.spaces.Dict(spaces)


def action_space(action_dim: int, low: float = -1.0, high: float = 1.0) -> gym.spaces.Box:
    return gym.spaces.Box(low, high, (action_dim,), np.float32)
