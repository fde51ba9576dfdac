"""eval.observation_rate holds each observation for hold_steps steps, and with a hold of one it is eval.rank's real
episode exactly (the twins all end alike)."""

import json

import numpy as np
import pytest

from eval.observation_rate import ObservationRateConfig, episode_success, observation_rate
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv


class SpyPolicy:
    """Moves the hand towards the goal, and remembers which observation it read at every step."""

    def __init__(self):
        self.seen = []

    def reset(self, seed=None):
        self.seen = []

    def select_action(self, obs):
        self.seen.append(obs["observation.state"].copy())
        return np.array([[0.5, 0.5, -0.5, 0.0]], dtype=np.float32)


def test_the_policy_reads_a_new_observation_every_hold_steps_steps():
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[], max_episode_steps=12))
    policy = SpyPolicy()
    episode_success(env, policy, seed=0, steps=12, hold_steps=4)
    env.close()
    seen = np.stack(policy.seen)
    for start in (0, 4, 8):
        assert np.all(seen[start:start + 4] == seen[start])  # held within a frame
    assert not np.allclose(seen[0], seen[4]) and not np.allclose(seen[4], seen[8])  # fresh at each frame


def test_a_hold_of_one_step_agrees_with_reading_every_step(tmp_path):
    cfg = ObservationRateConfig(episodes=2, max_episode_steps=40, hold_steps=1, policies=["expert", "noise_1.0"],
                                run="test", results_dir=str(tmp_path))
    result = observation_rate(cfg)
    assert result["episodes_held"] == result["episodes_every_step"] and result["episode_agreement"] == 1.0
    saved = json.loads((tmp_path / "observation_rate_test.json").read_text())
    assert saved["command"].startswith("python -m eval.observation_rate") and "--hold_steps=1" in saved["command"]
    with pytest.raises(ValueError, match="hold_steps"):
        observation_rate(ObservationRateConfig(hold_steps=0, results_dir=str(tmp_path)))
