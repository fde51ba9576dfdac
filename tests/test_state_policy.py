"""The state-only policy recipe: a state-only copy lerobot reads, lerobot-train on it, and a policy that acts on the
env's `observation.state` alone (the same in MetaWorld and inside the world model)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from policies.state_policy import (POLICY_STATE_KEY, STATE_DIMS_FILE, EpisodeSource, StatePolicyConfig,
                                   checkpoint_folder, checkpoint_steps, load_state_policy, state_only_copy,
                                   train_state_policy)


def test_state_only_copy_holds_the_chosen_episodes_of_every_source_without_video(tiny_dataset_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    source = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    root = str(tiny_dataset_root)
    copy_root = state_only_copy([EpisodeSource(root, "test/tiny", [0, 2]), EpisodeSource(root, "test/tiny", [1])],
                                tmp_path / "copy")
    copy = LeRobotDataset("test/tiny_state", root=copy_root)
    assert copy.meta.total_episodes == 3 and not copy.meta.video_keys
    states = np.asarray(copy.hf_dataset.with_format("numpy")[POLICY_STATE_KEY])
    source_table = source.hf_dataset.with_format("numpy")
    episode, state = np.asarray(source_table["episode_index"]), np.asarray(source_table["observation.state"])
    # the first source's episodes, then the second's
    np.testing.assert_allclose(states, np.concatenate([state[np.isin(episode, [0, 2])], state[episode == 1]]))
    with pytest.raises(ValueError, match=r"episodes: \[7\] are not episodes"):
        state_only_copy([EpisodeSource(root, "test/tiny", [0]), EpisodeSource(root, "test/tiny", [0, 7])],
                        tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # refused before anything was written


def test_a_state_policy_trains_acts_on_its_state_dimensions_alone_and_resumes(tiny_dataset_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dims = [0, 1, 2, 36, 37, 38]  # the hand and the goal
    cfg = StatePolicyConfig(dataset_root=str(tiny_dataset_root), repo_id="test/tiny", episodes=[0], steps=3,
                            batch_size=4, dim_model=16, chunk_size=2, output_dir=str(tmp_path / "act"), state_dims=dims,
                            lr=1e-4, final_lr=1e-5, save_every=2)
    checkpoint = train_state_policy(cfg)
    # A candidate every 2 steps and the last, each loadable with its dimensions; the rate decayed to final_lr.
    assert checkpoint_steps(cfg) == [2, 3] and checkpoint == checkpoint_folder(cfg, 3)
    assert json.loads((checkpoint_folder(cfg, 2) / STATE_DIMS_FILE).read_text())["state_dims"] == dims
    scheduler = json.loads((checkpoint.parent / "training_state" / "scheduler_state.json").read_text())
    assert scheduler["_last_lr"] == pytest.approx([1e-5])
    copy = LeRobotDataset("test/tiny_state", root=tmp_path / "act_data")
    source = LeRobotDataset("test/tiny", root=tiny_dataset_root, episodes=[0])
    np.testing.assert_allclose(np.asarray(copy.hf_dataset.with_format("numpy")[POLICY_STATE_KEY]),
                               np.asarray(source.hf_dataset.with_format("numpy")["observation.state"])[:, dims])
    policy = load_state_policy(str(checkpoint))  # the dimensions travel with the checkpoint
    assert not any(k.startswith("observation.images") for k in policy.expected_keys)
    state = np.asarray(source.hf_dataset.with_format("numpy")["observation.state"][:2]).astype(np.float32)

    def act(s):
        policy.reset()
        return policy.select_action({"observation.state": s})

    assert act(state).shape == (2, 4) and np.isfinite(act(state)).all()  # no images needed
    other, chosen = state.copy(), state.copy()
    other[:, 4:7] += 0.3  # the puck: not read
    chosen[:, 37] += 0.3  # the goal: read
    np.testing.assert_array_equal(act(other), act(state))
    assert not np.allclose(act(chosen), act(state))
    # The goal never varied in this one demo. Moved by 1 mm, as a world model's error might move it, the action
    # barely changes (z-scored by a zero spread it would be an input of 10^5).
    nudged = state.copy()
    nudged[:, 37] += 1e-3
    assert np.abs(act(nudged) - act(state)).max() < 1e-2
    with pytest.raises(KeyError, match="from observation.state"):
        policy.select_action({"observation.images.corner": np.zeros((2, 32, 32, 3), np.uint8)})
    with pytest.raises(ValueError, match="final_lr"):  # refused before anything is trained
        train_state_policy(replace(cfg, final_lr=1e-3, output_dir=str(tmp_path / "bad_lr")))
    with pytest.raises(ValueError, match="save_every"):
        train_state_policy(replace(cfg, save_every=0, output_dir=str(tmp_path / "bad_every")))
    assert not (tmp_path / "bad_lr").exists() and not (tmp_path / "bad_every").exists()
    with pytest.raises(ValueError, match="state_dims"):
        state_only_copy([EpisodeSource(str(tiny_dataset_root), "test/tiny", [0])], tmp_path / "bad", state_dims=[0, 39])
    # An interrupted caller resumes: a finished checkpoint of the same config (the thread share aside) is reused,
    # not retrained; one trained on other episodes is refused, not handed back as if it were the one asked for.
    weights_written = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert train_state_policy(replace(cfg, threads=1)) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == weights_written
    with pytest.raises(ValueError, match=r"output_dir: .*act holds a policy trained with another config "
                                         r"\(episodes: \[1\] asked, \[0\] recorded\)"):
        train_state_policy(replace(cfg, episodes=[1]))
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == weights_written


def test_the_thread_share_reaches_the_lerobot_train_process(tiny_dataset_root, tmp_path, monkeypatch):
    # Several arms train at once only if each lerobot-train child keeps to its share of the cores: the share is in
    # the child's environment (torch reads OMP_NUM_THREADS at start), and without a share the child inherits ours.
    import policies.state_policy as state_policy

    children = []

    def lerobot_train(command, check, env):  # stands in for the child: records what it would start with
        children.append(env)
        raise RuntimeError("not started")

    monkeypatch.setattr(state_policy.subprocess, "run", lerobot_train)
    cfg = StatePolicyConfig(dataset_root=str(tiny_dataset_root), repo_id="test/tiny", episodes=[0], steps=3,
                            output_dir=str(tmp_path / "act"), threads=1)
    for config in (cfg, replace(cfg, threads=None)):
        with pytest.raises(RuntimeError, match="not started"):
            train_state_policy(config)
    assert children[0]["OMP_NUM_THREADS"] == children[0]["MKL_NUM_THREADS"] == "1"
    assert children[1] is None  # subprocess.run's default: the parent's environment
