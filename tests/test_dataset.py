"""Training clips: exact frame-level action chunks, episode boundaries, the decoded cache, clear errors."""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from worldmodel.dataset import ClipDataset, DatasetConfig, write_episode


def config(root, **overrides) -> DatasetConfig:
    base = dict(root=str(root), repo_id="test/tiny", camera_keys=["corner", "gripperPOV"], image_size=32,
                frame_stride=3, clip_frames=5)
    return DatasetConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def clips(tiny_dataset_root):
    return ClipDataset(config(tiny_dataset_root))


@pytest.fixture(scope="module")
def parquet(tiny_dataset_root):
    files = sorted((tiny_dataset_root / "data").rglob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)


def test_clip_shapes(clips):
    item = clips[0]
    assert item["images"].shape == (5, 2, 3, 32, 32)
    assert item["images"].min() >= -1 and item["images"].max() <= 1
    assert item["actions"].shape == (5, 3, 4) and item["actions_is_pad"].shape == (5, 3)
    assert item["state"].shape == (5, 39) and item["pose"].shape == (5, 4)
    torch.testing.assert_close(item["pose"], item["state"][:, :4])


def test_actions_are_exactly_the_raw_actions_between_frames(clips, parquet):
    stride = clips.cfg.frame_stride
    for index in [0, 1, 7, len(clips) // 2, len(clips) - 1]:
        item = clips[index]
        ep = int(item["episode_index"])
        episode_rows = parquet[parquet["episode_index"] == ep].sort_values("frame_index")
        raw_actions = np.stack(episode_rows["action"].to_numpy())
        raw_states = np.stack(episode_rows["observation.state"].to_numpy())
        for t, step in enumerate(item["step_index"].tolist()):
            np.testing.assert_array_equal(item["state"][t].numpy(), raw_states[step])
            for j in range(stride):
                src = step - stride + j  # actions taken between frame t-1 (step - stride) and frame t
                if src < 0:
                    assert item["actions_is_pad"][t, j] and (item["actions"][t, j] == 0).all()
                else:
                    assert not item["actions_is_pad"][t, j]
                    np.testing.assert_array_equal(item["actions"][t, j].numpy(), raw_actions[src])


def test_no_clip_crosses_an_episode(clips):
    span = (clips.cfg.clip_frames - 1) * clips.cfg.frame_stride
    assert len(clips) == 3 * (40 - span)
    episodes_seen = set()
    for index in range(len(clips)):
        item = clips[index]
        steps = item["step_index"]
        assert steps[0] >= 0 and steps[-1] < 40
        assert (steps.diff() == clips.cfg.frame_stride).all()
        episodes_seen.add(int(item["episode_index"]))
    assert episodes_seen == {0, 1, 2}
    with pytest.raises(IndexError):
        clips[len(clips)]


def test_cache_matches_direct_decoding(clips, tiny_dataset_root):
    direct = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    for absolute in [0, 17, 39, 40, 79, 119]:
        episode, step = absolute // 40, absolute % 40
        cached = clips.cache.images[clips.cache.episode_start[episode] + step]  # (V, H, W, 3) uint8
        item = direct[absolute]
        for v, key in enumerate(clips.camera_keys):
            decoded = (item[key] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert np.abs(decoded.astype(int) - cached[v].astype(int)).max() <= 1


def test_cache_is_reused_then_rebuilt_when_size_changes(clips, tiny_dataset_root, monkeypatch):
    from worldmodel import dataset as dataset_module

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(dataset_module.DecodedCache, "build", staticmethod(no_rebuild))
        again = ClipDataset(config(tiny_dataset_root))
    assert again.cache_directory == clips.cache_directory

    smaller = ClipDataset(config(tiny_dataset_root, image_size=16))
    assert smaller.cache_directory != clips.cache_directory
    assert smaller[0]["images"].shape == (5, 2, 3, 16, 16)
    # The resized view is the area-average of the full one (within rounding).
    full = clips.cache.images[0, 0].astype(np.float32)
    small = smaller.cache.images[0, 0].astype(np.float32)
    assert np.abs(full.reshape(16, 2, 16, 2, 3).mean((1, 3)) - small).max() <= 1.0


def test_stats_travel_with_the_dataset(clips, parquet):
    actions = np.stack(parquet["action"].to_numpy())
    np.testing.assert_allclose(clips.stats["action_mean"], actions.mean(0), atol=1e-5)
    assert len(clips.stats["state_std"]) == 39 and min(clips.stats["state_std"]) >= 1e-3


def test_the_control_gain_is_fitted_from_the_dataset(clips):
    """MetaWorld's hand follows action[:3]: the fitted (A, P) gain is a positive diagonal for x, y, z that
    predicts each step's hand motion better than assuming no motion."""
    gain = np.asarray(clips.action_to_pose())
    assert gain.shape == (clips.action_dim, len(clips.cfg.pose_indices))
    xyz = gain[:3, :3]
    assert (np.diag(xyz) > 0.001).all() and (np.abs(xyz).argmax(axis=1) == [0, 1, 2]).all()
    cache = clips.cache
    rows = np.concatenate([np.arange(s, s + n - 1) for s, n in zip(cache.episode_start, cache.episode_length)])
    change = cache.states[rows + 1][:, :4] - cache.states[rows][:, :4]
    assert ((change - cache.actions[rows] @ gain) ** 2).mean() < 0.8 * (change ** 2).mean()


def test_bad_inputs_raise_clear_errors(tiny_dataset_root):
    with pytest.raises(KeyError, match="camera_keys.*'wrist'"):
        ClipDataset(config(tiny_dataset_root, camera_keys=["corner", "wrist"]))
    with pytest.raises(ValueError, match="resize=False"):
        ClipDataset(config(tiny_dataset_root, image_size=64, resize=False))
    with pytest.raises(KeyError, match="action_key"):
        ClipDataset(config(tiny_dataset_root, action_key="action.joint"))
    with pytest.raises(KeyError, match="state_key"):
        ClipDataset(config(tiny_dataset_root, state_key="observation.joints"))
    with pytest.raises(ValueError, match="clip_frames"):
        ClipDataset(config(tiny_dataset_root, clip_frames=20, frame_stride=3))
    for size in (0, -4):
        with pytest.raises(ValueError, match="image_size"):
            ClipDataset(config(tiny_dataset_root, image_size=size))


def test_an_older_lerobot_dataset_gets_the_exact_local_conversion_command(tiny_dataset_root, tmp_path):
    import json
    import shutil

    old = tmp_path / "someone" / "old_dataset"
    shutil.copytree(tiny_dataset_root, old)
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="v2.1") as error:
        ClipDataset(config(old))
    message = str(error.value)
    assert f"--root={tmp_path}" in message and "--repo-id=someone/old_dataset" in message
    assert "--push-to-hub=false" in message


def test_memory_frames_come_from_earlier_in_the_episode_by_pose(tiny_dataset_root):
    clips = ClipDataset(config(tiny_dataset_root, memory_frames=3))
    stride = clips.cfg.frame_stride
    late = None
    for index in range(len(clips)):
        item = clips[index]
        first = int(item["step_index"][0])
        offsets = item["memory_offset"]
        valid = item["memory_valid"]
        assert item["memory_images"].shape == (3, 2, 3, 32, 32) and item["memory_state"].shape == (3, 39)
        if first == 0:
            assert not valid.any()  # nothing before the clip
            continue
        assert valid[0] and offsets[0] == -first / stride  # slot 0: the episode's first frame (the sink)
        steps = (offsets[1:][valid[1:]] * stride + first).round().long()
        assert ((steps >= 1) & (steps <= first - stride)).all()  # earlier than the clip by at least a stride
        if first >= 20:
            late = (item, first)
    item, first = late
    # The retrieved frames are among the nearest in pose to some frame of the clip: closer than the median
    # earlier frame is to every clip frame.
    ep = clips.cache.episode_start[int(item["episode_index"])]
    earlier = clips.cache.states[ep + 1:ep + first - stride + 1][:, :4]
    clip_pose = item["pose"].numpy()
    chosen = item["memory_state"][1:][item["memory_valid"][1:]][:, :4].numpy()
    best = lambda p: ((clip_pose[:, None] - p[None]) ** 2).sum(-1).min(0)  # distance to the nearest clip frame
    assert np.median(best(chosen)) <= np.median(best(earlier))
    # Reading the same clip twice gives the same memory (a resumed run sees what it would have seen).
    torch.testing.assert_close(clips[len(clips) - 1]["memory_offset"], clips[len(clips) - 1]["memory_offset"])


def test_a_memory_gap_keeps_memory_frames_out_of_the_frames_just_before_the_clip(tiny_dataset_root):
    """memory_min_gap_frames: every pose-retrieved memory frame lies at least that many frames before the clip, as
    the streaming sampler's do (it retrieves only from before its recent window), and the sink stays."""
    gap = 4
    clips = ClipDataset(config(tiny_dataset_root, memory_frames=3, memory_min_gap_frames=gap))
    stride, retrieved = clips.cfg.frame_stride, 0
    for index in range(len(clips)):
        item = clips[index]
        first, valid = int(item["step_index"][0]), item["memory_valid"]
        assert bool(valid[0]) == (first > 0)
        steps = (item["memory_offset"][1:][valid[1:]] * stride + first).round().long()
        assert ((steps >= 1) & (steps <= first - gap * stride)).all()
        retrieved += len(steps)
    assert retrieved > 0
    with pytest.raises(ValueError, match="memory_min_gap_frames"):
        ClipDataset(config(tiny_dataset_root, memory_frames=3, memory_min_gap_frames=0))


def test_a_missing_local_root_is_named_and_nothing_is_created_or_downloaded(tmp_path, monkeypatch):
    import socket

    from worldmodel.train import TrainConfig, split_episodes

    def no_network(*args, **kwargs):
        raise AssertionError("a local root reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=f"dataset.root: {missing} does not exist"):
        ClipDataset(DatasetConfig(root=str(missing), repo_id="test/tiny", camera_keys=["corner"], image_size=32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        split_episodes(TrainConfig(dataset=DatasetConfig(root=str(missing))))
    assert not missing.exists()  # lerobot would have created it
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no LeRobotDataset"):
        ClipDataset(DatasetConfig(root=str(tmp_path / "empty"), repo_id="test/tiny", camera_keys=["corner"]))


def test_a_hard_kill_while_decoding_leaves_no_cache_and_the_rerun_builds_a_whole_one(tiny_dataset_root, tmp_path):
    """The decoded cache is built in a temp folder and renamed: kill -9 at a random moment of the build leaves
    either no cache or a whole one, never a half-written one in its place."""
    import random
    import os
    import signal
    import subprocess
    import sys
    import time

    cache_root = tmp_path / "cache"
    script = (f"from worldmodel.dataset import ClipDataset, DatasetConfig; ClipDataset(DatasetConfig("
              f"root={str(tiny_dataset_root)!r}, repo_id='test/tiny', camera_keys=['corner', 'gripperPOV'], "
              f"image_size=32, frame_stride=3, clip_frames=5, cache_dir={str(cache_root)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not any(cache_root.rglob("*.tmp-*")) and proc.poll() is None:
        assert time.time() < deadline, "the build never started"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))  # somewhere inside the decoding (or just after it)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, children included
    proc.wait()
    finished = [p.parent for p in cache_root.rglob("cache.json") if ".tmp-" not in p.parent.name]
    for directory in [p for p in cache_root.rglob("*") if p.is_dir() and ".tmp-" not in p.name]:
        if any(directory.glob("*.npy")):  # a cache folder in place is a whole one
            assert directory in finished
    clips = ClipDataset(config(tiny_dataset_root, cache_dir=str(cache_root)))  # the rerun
    direct = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    item = direct[79]
    for v, key in enumerate(clips.camera_keys):
        decoded = (item[key] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        cached = clips.cache.images[clips.cache.episode_start[1] + 39][v]
        assert np.abs(decoded.astype(int) - cached.astype(int)).max() <= 1


def test_commands_are_integrated_from_each_episodes_first_frame(clips):
    """attach_commands: every frame's commanded pose is its episode's first pose plus the fitted gain times every
    action before it (clipped to the pose range at each step); samples carry it; it follows the recorded hand far
    better than its first position does."""
    import torch

    from worldmodel.command import integrate_commands

    gain = clips.command_gain()
    low, high = (torch.as_tensor(b, dtype=torch.float32) for b in clips.pose_range())
    clips.attach_commands(gain, low, high)
    try:
        cache, pose = clips.cache, list(clips.cfg.pose_indices)
        held, followed = [], []
        for start, n in zip(cache.episode_start, cache.episode_length):
            first = torch.from_numpy(cache.states[start, pose])[None]
            expected = integrate_commands(first, torch.from_numpy(cache.actions[start:start + n - 1])[None],
                                          torch.tensor(gain), low, high)[0].numpy()
            np.testing.assert_allclose(clips.commands[start], first[0].numpy())
            np.testing.assert_allclose(clips.commands[start + 1:start + n], expected, atol=1e-6)
            hand = cache.states[start:start + n, :3]
            held.append(np.linalg.norm(hand - hand[0], axis=1).mean())
            followed.append(np.linalg.norm(clips.commands[start:start + n, :3] - hand, axis=1).mean())
        assert np.mean(followed) < 0.5 * np.mean(held)
        episode, step = clips.locate(3)
        sample = clips.clip(episode, step)
        rows = cache.episode_start[episode] + sample["step_index"].numpy()
        np.testing.assert_array_equal(sample["command"].numpy(), clips.commands[rows])
    finally:
        clips.commands = None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scheduling policies are Linux's")
def test_writing_an_episode_leaves_the_thread_at_normal_priority(tmp_path):
    """Run as root (as CI is), the AV1 encoder switches the thread that opens it to real-time priority
    (SCHED_FIFO 99) and leaves it so; every process started afterwards inherited it and could starve the machine."""
    features = {"observation.images.top": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}}
    dataset = LeRobotDataset.create("test/priority", fps=10, features=features, root=tmp_path / "priority",
                                    vcodec="libsvtav1")
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    frames = [{"observation.images.top": np.full((32, 32, 3), 10 * i, np.uint8), "action": np.zeros(2, np.float32)}
              for i in range(4)]
    write_episode(dataset, frames, "stay still")
    dataset.finalize()
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    assert LeRobotDataset("test/priority", root=tmp_path / "priority").num_frames == 4


def test_clips_near_the_object_are_those_with_a_frame_where_the_hand_is_within_the_radius(clips):
    from worldmodel.train import LoopConfig, oversample_clips

    radius = float(np.median(np.linalg.norm(clips.cache.states[:, 0:3] - clips.cache.states[:, 4:7], axis=1)))
    near = clips.clips_near_object(radius)
    assert near.shape == (len(clips),) and 0 < near.sum() < len(clips)
    for index in range(len(clips)):
        state = clips[index]["state"].numpy()
        assert near[index] == bool((np.linalg.norm(state[:, 0:3] - state[:, 4:7], axis=1) < radius).any())
    drawn = oversample_clips(clips, LoopConfig(near_object_repeat=3, near_object_m=radius))
    counts = np.bincount(np.asarray(drawn.indices), minlength=len(clips))
    np.testing.assert_array_equal(counts, np.where(near, 3, 1))
    assert oversample_clips(clips, LoopConfig()) is clips  # the default draws every clip once


def test_clips_revisiting_are_those_where_the_hand_comes_back_to_a_place_it_left(tiny_dataset_root):
    from worldmodel.train import LoopConfig, oversample_clips

    clips = ClipDataset(config(tiny_dataset_root, memory_frames=2, memory_min_gap_frames=4))
    real = clips.cache.states
    try:
        # Every episode: the hand goes 30 cm out along x and comes back to where it started.
        states = real.copy()
        for start, n in zip(clips.cache.episode_start, clips.cache.episode_length):
            states[start:start + n, 0:3] = 0.0
            states[start:start + n, 0] = 0.3 * np.sin(np.pi * np.arange(n) / (n - 1))
        clips.cache.states = states
        revisiting = clips.clips_revisiting(near_m=0.03, away_m=0.10)
        assert revisiting.shape == (len(clips),)
        for episode in range(len(clips.cache.episode_start)):
            first = int(np.sum(clips._starts_per_episode[:episode]))
            last = first + clips._starts_per_episode[episode] - 1
            assert not revisiting[first] and revisiting[last]  # nothing to come back to yet; back at the start
        drawn = oversample_clips(clips, LoopConfig(revisit_repeat=3))
        np.testing.assert_array_equal(np.bincount(np.asarray(drawn.indices), minlength=len(clips)),
                                      np.where(revisiting, 3, 1))
        # A hand that never leaves its place revisits nothing.
        states[:, 0] = 0.0
        assert not clips.clips_revisiting(near_m=0.03, away_m=0.10).any()
    finally:
        clips.cache.states = real


def test_near_object_indices_must_name_a_position_inside_the_state(tiny_dataset_root):
    clips = ClipDataset(config(tiny_dataset_root, object_indices=[4, 5, 39]))
    with pytest.raises(ValueError, match="object_indices.*size 39"):
        clips.clips_near_object(0.05)
