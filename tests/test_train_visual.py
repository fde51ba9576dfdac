"""The visual-policy recipe: LeRobot's own trainer, checkpoints at each budget, usable as policies."""

import numpy as np
import torch

from policies.train_visual import TrainVisualConfig, train_visual
from worldmodel.policy import LeRobotPolicy


def test_recipe_keeps_a_checkpoint_per_budget_and_they_act(tiny_dataset_root, tmp_path):
    checkpoints = train_visual(TrainVisualConfig(
        dataset_root=str(tiny_dataset_root), repo_id="test/tiny", budgets=[2, 4], output_dir=str(tmp_path / "act"),
        batch_size=2, dim_model=32, chunk_size=4, device="cpu", extra_args=["--num_workers=0"]))
    assert [c.parent.name for c in checkpoints] == ["000002", "000004"]
    policy = LeRobotPolicy.from_pretrained(str(checkpoints[-1]), task="push")
    obs = {"observation.images.corner": np.zeros((2, 32, 32, 3), np.uint8),
           "observation.images.gripperPOV": np.zeros((2, 32, 32, 3), np.uint8),
           "observation.state": np.zeros((2, 39), np.float32)}
    action = policy.select_action(obs)
    assert action.shape == (2, 4) and np.isfinite(action).all()
    # It acts on what it sees: another state gives another action (a fresh queue for both).
    policy.reset()
    moved = policy.select_action({**obs, "observation.state": np.ones((2, 39), np.float32)})
    assert not np.allclose(moved, action)
    # Each budget is its own checkpoint: two more training steps changed the weights.
    early = LeRobotPolicy.from_pretrained(str(checkpoints[0]), task="push")
    assert any(not torch.equal(a, b) for a, b in zip(early.policy.state_dict().values(),
                                                      policy.policy.state_dict().values()))
