"""A family of MetaWorld policies with controlled degradations, from near-perfect to hopeless, for any task.

Each is MetaWorld's own scripted expert for the task (`expert_policy_for`) acting on `observation.state` (which the world model predicts,
so the same policy runs in the real and in the imagined env), degraded in one documented way:

    noise_std     Gaussian noise added to every action
    latency       actions computed from the observation `latency` steps ago
    goal_bias     the expert aims this many metres off the true goal (success needs < 5 cm)
    action_scale  a weak arm: actions scaled down (slow; on push even 0.35 never arrives in 120 steps,
                  so the family below does not use it)
    random_prob   with this probability an action is replaced by a uniformly random one

Policies take batched observations ({key: (B, ...)}) and return (B, 4) actions, following
`worldmodel.policy.Policy`. Their true success rates are measured in the simulator by `eval.rank`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from worldmodel.envs.metaworld import GOAL_SLICE, expert_policy_for


@dataclass
class Degradation:
    noise_std: float = 0.0
    latency: int = 0
    goal_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    action_scale: float = 1.0
    random_prob: float = 0.0


class DegradedExpert:
    def __init__(self, name: str, degradation: Degradation, task: str = "push-v3", seed: int = 0):
        self.name, self.degradation, self.task, self.seed = name, degradation, task, seed
        self.expert = expert_policy_for(task)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self.seed if seed is None else seed)
        self.history: deque | None = None

    def select_action(self, observation: dict) -> np.ndarray:
        d = self.degradation
        state = np.asarray(observation["observation.state"], dtype=np.float64)
        if state.ndim == 1:
            state = state[None]
        state = state.copy()
        state[:, GOAL_SLICE] += np.asarray(d.goal_bias)  # aim at the wrong place
        actions = np.stack([self.expert.get_action(s) for s in state]).astype(np.float32)
        if d.latency > 0:
            if self.history is None or len(self.history[0]) != len(actions):
                self.history = deque([np.zeros_like(actions)] * d.latency, maxlen=d.latency + 1)
            self.history.append(actions)
            actions = self.history[0]
        actions = actions * np.float32(d.action_scale)
        actions = actions + self.rng.normal(0.0, d.noise_std, actions.shape).astype(np.float32)
        if d.random_prob > 0:
            replace = self.rng.random(len(actions)) < d.random_prob
            actions[replace] = self.rng.uniform(-1, 1, (int(replace.sum()), actions.shape[1]))
        return np.clip(actions, -1.0, 1.0).astype(np.float32)


# The family, roughly from best to worst; `eval.rank` measures where each really lands.
# The success rate each lands at, 120 steps: push-v3 on env seeds 1000-1029 | reach-v3 on seeds 1000-1019.
FAMILY: dict[str, Degradation] = {
    "expert": Degradation(),  # 0.97 | 1.00
    "goal_bias_5cm": Degradation(goal_bias=[0.05, 0.0, 0.0]),  # 0.73 | 0.00
    "latency_6": Degradation(latency=6),  # 0.73 | 0.85
    "noise_0.5": Degradation(noise_std=0.5),  # 0.47 | 0.65
    "random_0.3": Degradation(random_prob=0.3),  # 0.47 | 0.65
    "goal_bias_7cm": Degradation(goal_bias=[0.0, 0.07, 0.0]),  # 0.47 | 0.15
    "latency_10": Degradation(latency=10),  # 0.17 | 0.70
    "noise_1.0": Degradation(noise_std=1.0),  # 0.10 | 0.40
    "random_0.5": Degradation(random_prob=0.5),  # 0.07 | 0.45
    "random": Degradation(random_prob=1.0),  # 0.00 | 0.00
}


def make_family(task: str = "push-v3", seed: int = 0, names: list[str] | None = None) -> list[DegradedExpert]:
    names = names or list(FAMILY)
    unknown = [n for n in names if n not in FAMILY]
    if unknown:
        raise ValueError(f"policies: unknown {unknown}; the family is {list(FAMILY)}")
    return [DegradedExpert(n, FAMILY[n], task, seed) for n in names]
