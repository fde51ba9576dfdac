"""The MetaWorld recorder writes a LeRobotDataset v3 that lerobot itself opens, and resumes safely."""

import numpy as np
import pandas as pd
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from data.metaworld import record as record_module


def _parquet(root):
    return pd.concat([pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet"))], ignore_index=True)


def test_recorded_dataset_opens_with_lerobot(tiny_dataset_root):
    ds = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    assert ds.meta.total_episodes == 3 and ds.num_episodes == 3
    assert ds.meta.total_frames == 120 and len(ds) == 120
    assert ds.meta.video_keys == ["observation.images.corner", "observation.images.gripperPOV"]
    for key in ("observation.state", "action", "next.success", "next.reward"):
        assert key in ds.meta.features
    assert ds.meta.features["observation.images.corner"]["shape"] == (32, 32, 3)
    item = ds[45]
    assert item["observation.images.gripperPOV"].shape == (3, 32, 32)
    assert item["observation.state"].shape == (39,) and item["action"].shape == (4,)
    assert item["task"].startswith("Push the puck")


def test_interrupted_recording_keeps_whole_episodes_and_resumes(tmp_path, monkeypatch, make_record_config):
    root = tmp_path / "ds"
    calls = {"n": 0}
    real_save = LeRobotDataset.save_episode

    def save_then_interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C while the second episode is being written
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(LeRobotDataset, "save_episode", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        record_module.record(make_record_config(root, episodes=3, steps=12, seed=5))
    monkeypatch.undo()

    partial = LeRobotDataset("test/tiny", root=root)
    assert partial.meta.total_episodes == 1 and len(partial) == 12  # no half episode

    record_module.record(make_record_config(root, episodes=3, steps=12, seed=5))
    resumed = LeRobotDataset("test/tiny", root=root)
    assert resumed.meta.total_episodes == 3 and len(resumed) == 36
    assert sorted(_parquet(root)["episode_index"].unique()) == [0, 1, 2]

    # Same seeds -> the resumed dataset equals an uninterrupted recording.
    straight = tmp_path / "straight"
    record_module.record(make_record_config(straight, episodes=3, steps=12, seed=5))
    np.testing.assert_allclose(np.stack(_parquet(root)["action"]), np.stack(_parquet(straight)["action"]))


def test_existing_dataset_with_other_features_is_refused(tiny_dataset_root, make_record_config):
    cfg = make_record_config(tiny_dataset_root, episodes=4)
    cfg.env.image_size = 64
    with pytest.raises(ValueError, match="observation.images.corner"):
        record_module.record(cfg)


def test_waypoint_tour_follows_the_expert_then_leaves_and_revisits():
    from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
    from worldmodel.metrics import revisit_frames

    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[], max_episode_steps=600))
    toured = record_module.rollout_episode(env, 3, 0.3, 0.0, tour_after=40)
    plain = record_module.rollout_episode(env, 3, 0.3, 0.0)
    env.close()
    assert len(toured["action"]) == 600 and len(plain["action"]) == 600
    # Same seed: identical expert steps until the tour takes over, different motion afterwards.
    np.testing.assert_array_equal(toured["action"][:40], plain["action"][:40])
    assert not np.allclose(toured["action"][40:80], plain["action"][40:80])
    hand = toured["observation.state"][::4, :3]  # world-model frames at stride 4
    assert np.ptp(hand, axis=0).max() > 0.15  # the tour covers the workspace
    assert revisit_frames(hand, min_gap=12).size > 0  # and comes back to places it left
    # tour_prob 0: no tour at all.
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[], max_episode_steps=100))
    never = record_module.rollout_episode(env, 3, 0.3, 0.0, tour_after=40, tour_prob=0.0)
    np.testing.assert_array_equal(never["action"], plain["action"][:100])


def test_a_hard_kill_keeps_every_committed_episode_and_the_rerun_completes(tmp_path):
    import json
    import random
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "ds"
    cmd = [sys.executable, "-m", "data.metaworld.record", f"--root={root}", "--repo_id=test/tiny", "--episodes=8",
           "--finalize_every=2", "--workers=1", "--seed=5", "--env.max_episode_steps=12",
           "--env.cameras=[corner,gripperPOV]", "--env.image_size=32"]

    def committed() -> int:
        try:
            return json.loads((root / "meta" / "info.json").read_text())["total_episodes"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while committed() < 2:
        assert proc.poll() is None, "the recorder exited before its first commit"
        assert time.time() < deadline, "no commit in time"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere inside the next batch, or a commit
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, children included
    proc.wait()

    survived = LeRobotDataset("test/tiny", root=root)  # lerobot opens what the kill left
    n = survived.meta.total_episodes
    assert n >= 2 and n % 2 == 0 and len(survived) == 12 * n  # whole committed batches, nothing torn
    assert survived[len(survived) - 1]["observation.state"].shape == (39,)  # the last frame decodes
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    finished = LeRobotDataset("test/tiny", root=root)
    assert finished.meta.total_episodes == 8 and len(finished) == 96
    assert not (tmp_path / "ds.recording").exists() and not (tmp_path / "ds.old").exists()


def test_an_aimed_push_takes_the_puck_to_the_aimed_point_not_the_goal():
    from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv

    offsets = np.stack([record_module.aim_offset(np.random.default_rng([s, 2]), 0.1) for s in range(200)])
    assert np.all(np.linalg.norm(offsets[:, :2], axis=1) <= 0.1) and np.all(offsets[:, 2] == 0)
    assert np.ptp(offsets[:, 0]) > 0.15 and np.ptp(offsets[:, 1]) > 0.15  # the whole disc, both directions

    seed = 4  # aims 7.7 cm off; the plain expert gets this puck to the goal (on seed 2 it lifts it instead)
    assert np.linalg.norm(offsets[seed]) > 0.07
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[], max_episode_steps=200))
    aimed = record_module.rollout_episode(env, seed, 0.0, 0.0, aim_offset_m=0.1)
    plain = record_module.rollout_episode(env, seed, 0.0, 0.0)
    env.close()
    goal = plain["observation.state"][-1, record_module.GOAL_SLICE]
    plain_puck, aimed_puck = plain["observation.state"][-1, 4:7], aimed["observation.state"][-1, 4:7]
    assert np.linalg.norm(plain_puck[:2] - goal[:2]) < 0.03  # the expert brings it to the goal
    assert np.linalg.norm(aimed_puck[:2] - (goal + offsets[seed])[:2]) < 0.03  # aimed: to the aimed point
    assert np.linalg.norm(aimed_puck[:2] - goal[:2]) > 0.05


def test_a_delayed_push_acts_on_the_state_from_delay_steps_before():
    from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv, expert_policy_for

    delays = [int(np.random.default_rng([s, 3]).integers(1, 9)) for s in range(100)]
    assert set(delays) == set(range(1, 9))  # every delay in 1..delay_max_steps is drawn
    seed = 1
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[], max_episode_steps=60))
    delayed = record_module.rollout_episode(env, seed, 0.0, 0.0, delay_max_steps=8)
    plain = record_module.rollout_episode(env, seed, 0.0, 0.0)
    env.close()
    expert, d = expert_policy_for("push-v3"), delays[seed]
    states = delayed["observation.state"].astype(np.float64)
    for t in range(60):
        want = np.clip(expert.get_action(states[max(0, t - d)]), -1.0, 1.0)
        np.testing.assert_allclose(delayed["action"][t], want, atol=1e-6)
    assert np.abs(delayed["action"] - plain["action"]).max() > 0.1  # the delay changes what the expert does
