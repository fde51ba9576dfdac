"""Success judges: the learned one separates success from failure on held-out episodes; the rule is exact."""

import json

import numpy as np
import torch

from data.metaworld.record import RecordConfig, record
from worldmodel.dataset import DatasetConfig
from worldmodel.envs.metaworld import MetaWorldConfig
from worldmodel.judge import JudgeNetConfig, JudgeTrainConfig, StateDistanceJudge, SuccessJudge, train_judge


def test_rule_judge_on_hand_made_states():
    states = torch.zeros(3, 2, 39)
    states[0, -1, 4:7] = torch.tensor([0.0, 0.8, 0.02])
    states[0, -1, 36:39] = torch.tensor([0.0, 0.83, 0.02])  # 3 cm away: success
    states[1, -1, 36:39] = torch.tensor([0.2, 0.8, 0.02])  # 20 cm away: failure
    states[2, 0, 36:39] = torch.tensor([0.5, 0.5, 0.5])  # only the last frame counts
    assert StateDistanceJudge.for_task("push-v3")(None, states).tolist() == [1.0, 0.0, 1.0]
    # reach scores the fingertips (4.5 cm below the state's hand) against the goal, not the object
    states[:, -1, 0:3] = states[:, -1, 36:39] + torch.tensor([0.0, 0.0, 0.045])
    assert StateDistanceJudge.for_task("reach-v3")(None, states).tolist() == [1.0, 1.0, 1.0]


def test_state_rule_agrees_with_the_simulator_on_reach():
    # The rule reads only the state; the simulator's flag is MetaWorld's own evaluate_state.
    from worldmodel.envs.metaworld import MetaWorldMultiViewEnv, expert_policy_for

    env = MetaWorldMultiViewEnv(MetaWorldConfig(task="reach-v3", cameras=["corner"], image_size=32))
    rule, expert, rng = StateDistanceJudge.for_task("reach-v3"), expert_policy_for("reach-v3"), np.random.default_rng(0)
    agree, flags = [], []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(80):
            action = np.clip(expert.get_action(obs["observation.state"]) + rng.normal(0, 0.5, 4), -1, 1)
            obs, _, _, _, info = env.step_state_only(action.astype(np.float32))
            flags.append(info["is_success"])
            agree.append(bool(rule(None, torch.as_tensor(obs["observation.state"])[None, None])[0]) == info["is_success"])
    assert 0.2 < np.mean(flags) < 0.9  # both outcomes occur, so agreement is not trivially one-sided
    assert np.mean(agree) >= 0.95


def test_state_rule_for_a_task_without_one_names_the_task():
    import pytest

    with pytest.raises(ValueError, match="door-open-v3"):
        StateDistanceJudge.for_task("door-open-v3")


def test_learned_judge_separates_success_from_failure(tmp_path):
    # A clean expert reaches the goal after ~65 steps: every episode has failure frames, then success frames.
    root = tmp_path / "ds"
    record(RecordConfig(root=str(root), repo_id="test/judge", episodes=5, workers=1, action_noise=0.0,
                        perturb_prob=0.0, env=MetaWorldConfig(cameras=["corner"], image_size=32, max_episode_steps=90)))
    out = tmp_path / "judge"
    train_judge(JudgeTrainConfig(
        dataset=DatasetConfig(root=str(root), repo_id="test/judge", camera_keys=["corner"], image_size=32,
                              frame_stride=4),
        judge=JudgeNetConfig(frames=2, width=16), val_episodes=1, steps=250, batch_size=32, output_dir=str(out)))
    report = json.loads((out / "judge_report.json").read_text())
    assert 0.2 < report["val"]["positives"] / report["val"]["n"] < 0.8  # both classes are held out
    assert report["val"]["accuracy"] > 0.85, report["val"]
    judge = SuccessJudge.from_pretrained(out)
    frames = torch.zeros(2, 2, 1, 3, 32, 32, dtype=torch.uint8)
    p = judge.probability(frames, torch.zeros(2, 2, 39))
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
