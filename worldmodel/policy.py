"""The policy protocol the real and the imagined env are driven by, and adapters to it.

A policy takes a *batch* of observations in LeRobot's keys ({"observation.images.<cam>": (B, H, W, 3)
uint8, "observation.state": (B, S)}) and returns actions (B, A) as a numpy float32 array:

    policy.reset()
    actions = policy.select_action(observation)

Adapters: `CallablePolicy` for any function of the observation, `LeRobotPolicy` for a LeRobot
`PreTrainedPolicy` with its pre/post-processors (normalisation, device, action queue all handled by
LeRobot itself).
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch

from worldmodel.model import check_pretrained_path


class Policy(Protocol):
    name: str

    def reset(self) -> None: ...

    def select_action(self, observation: dict) -> np.ndarray: ...


def batched(observation: dict) -> tuple[dict, bool]:
    """Add a batch dim to a single env observation; returns (observation, was_single)."""
    state = np.asarray(observation["observation.state"])
    if state.ndim == 1:
        return {k: (np.asarray(v)[None] if not isinstance(v, str) else v) for k, v in observation.items()}, True
    return observation, False


class CallablePolicy:
    def __init__(self, fn: Callable[[dict], np.ndarray], name: str = "callable"):
        self.fn, self.name = fn, name

    def reset(self) -> None:
        pass

    def select_action(self, observation: dict) -> np.ndarray:
        return np.asarray(self.fn(observation), dtype=np.float32)


class LeRobotPolicy:
    """A LeRobot `PreTrainedPolicy` (ACT, Diffusion Policy, ...) behind the batched protocol.

    Images arrive as uint8 HWC and are handed to LeRobot as float CHW in [0, 1], the way LeRobot's own
    env wrappers do; `task` is passed for language-conditioned policies. `key_map` names, for a policy input
    the observation does not hold under that name, the observation key that feeds it (e.g. a state-only ACT's
    `observation.environment_state` <- `observation.state`); `input_dims`, for a policy input trained on some
    dimensions of its source only, which ones (the last axis)."""

    def __init__(self, policy, preprocessor, postprocessor, task: str = "", name: str | None = None,
                 key_map: dict[str, str] | None = None, input_dims: dict[str, list[int]] | None = None):
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.task = task
        self.name = name or type(policy).__name__
        self.device = next(policy.parameters()).device
        self.expected_keys = list(policy.config.input_features)
        self.key_map = dict(key_map or {})
        self.input_dims = {k: list(v) for k, v in (input_dims or {}).items()}

    @classmethod
    def from_pretrained(cls, path: str, task: str = "", **kwargs) -> "LeRobotPolicy":
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors
        from lerobot.configs.policies import PreTrainedConfig

        check_pretrained_path(path, "a LeRobot policy (a pretrained_model folder)")
        config = PreTrainedConfig.from_pretrained(path)
        policy = get_policy_class(config.type).from_pretrained(path)
        pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
        return cls(policy, pre, post, task=task, **kwargs)

    def reset(self) -> None:
        self.policy.reset()

    @torch.no_grad()
    def select_action(self, observation: dict) -> np.ndarray:
        sources = {key: self.key_map.get(key, key) for key in self.expected_keys}
        missing = [f"{k} (from {s})" if s != k else k for k, s in sources.items() if s not in observation]
        if missing:
            raise KeyError(f"observation: the policy needs {missing}; got {sorted(observation)}")
        batch = {}
        for key in self.expected_keys:
            value = np.asarray(observation[sources[key]])
            value = torch.as_tensor(value[..., self.input_dims[key]] if key in self.input_dims else value)
            if key.startswith("observation.images"):
                value = value.permute(0, 3, 1, 2).float() / 255.0 if value.dtype == torch.uint8 else value.float()
            batch[key] = value.float().to(self.device)
        B = next(iter(batch.values())).shape[0]
        batch["task"] = [self.task] * B
        action = self.postprocessor(self.policy.select_action(self.preprocessor(batch)))
        return action.detach().cpu().numpy().astype(np.float32)
