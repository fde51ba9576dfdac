"""The state-only policy recipe: a state-only copy lerobot reads, lerobot-train on it, and a policy that acts on the
env's `observation.state` alone (the same in MetaWorld and inside the world model)."""

import numpy as np
import pytest

from policies.state_policy import POLICY_STATE_KEY, StatePolicyConfig, load_state_policy, state_only_copy, train_state_policy


def test_state_only_copy_holds_the_chosen_episodes_without_video(tiny_dataset_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    source = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    copy_root = state_only_copy(str(tiny_dataset_root), "test/tiny", [0, 2], tmp_path / "copy")
    copy = LeRobotDataset("test/tiny_state", root=copy_root)
    assert copy.meta.total_episodes == 2 and not copy.meta.video_keys
    states = np.asarray(copy.hf_dataset.with_format("numpy")[POLICY_STATE_KEY])
    source_table = source.hf_dataset.with_format("numpy")
    wanted = np.isin(np.asarray(source_table["episode_index"]), [0, 2])
    np.testing.assert_allclose(states, np.asarray(source_table["observation.state"])[wanted])
    with pytest.raises(ValueError, match=r"episodes: \[7\] are not episodes"):
        state_only_copy(str(tiny_dataset_root), "test/tiny", [0, 7], tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # refused before anything was written


def test_state_policy_trains_and_acts_on_the_state_alone(tiny_dataset_root, tmp_path):
    checkpoint = train_state_policy(StatePolicyConfig(
        dataset_root=str(tiny_dataset_root), repo_id="test/tiny", episodes=[0, 1], steps=3, batch_size=4,
        dim_model=16, chunk_size=2, output_dir=str(tmp_path / "act")))
    policy = load_state_policy(str(checkpoint))
    assert not any(k.startswith("observation.images") for k in policy.expected_keys)
    state = np.random.default_rng(0).normal(size=(2, 39)).astype(np.float32)
    action = policy.select_action({"observation.state": state})  # no images needed
    assert action.shape == (2, 4) and np.isfinite(action).all()
    policy.reset()
    assert not np.allclose(policy.select_action({"observation.state": state + 1}), action)  # it reads the state
    with pytest.raises(KeyError, match="from observation.state"):
        policy.select_action({"observation.images.corner": np.zeros((2, 32, 32, 3), np.uint8)})
    # an interrupted caller resumes: a finished checkpoint is reused, not retrained
    assert train_state_policy(StatePolicyConfig(dataset_root="/nonexistent", steps=3,
                                                output_dir=str(tmp_path / "act"))) == checkpoint
