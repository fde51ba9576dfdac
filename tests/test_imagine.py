"""`wm imagine`: a LeRobotDataset of judged imagined rollouts; filtering; crash-safe resume; trainable."""

import json

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from worldmodel.dataset import DatasetConfig
from worldmodel.imagine import ImagineConfig, Imaginer
from worldmodel.policy import CallablePolicy
from worldmodel.sampler import SamplerConfig


def even_rows_succeed(frames, states, task):
    """A judge that scores rollout b of a batch 0.9 when b is even, else 0.1."""
    return torch.tensor([0.9 if b % 2 == 0 else 0.1 for b in range(frames.shape[0])])


def config(model_dir, dataset_root, out, **kw):
    settings = dict(model=str(model_dir), judge="(test judge)", policies=["drift"],
                    dataset=DatasetConfig(root=str(dataset_root), repo_id="test/tiny"),
                    output_root=str(out), repo_id="test/imagined", starts=2, seeds_per_start=2,
                    max_episode_steps=8, batch_size=4, warmup_random_steps=4,
                    sampler=SamplerConfig(steps=2, window=2), device="cpu")
    return ImagineConfig(**{**settings, **kw})


def drift():
    return {"drift": CallablePolicy(lambda obs: np.tile([0.5, 0.0, 0.0, 0.0], (len(obs["observation.state"]), 1)),
                                    "drift")}


def test_keeps_only_judged_successes_with_the_source_features(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    ledger = Imaginer(config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "out"), drift(),
                      even_rows_succeed).run()
    kept = [j for j in ledger["jobs"].values() if j["episode_index"] is not None]
    assert len(ledger["jobs"]) == 4 and len(kept) == 2
    assert all(j["score"] >= 0.5 for j in kept) and all(
        j["score"] < 0.5 for j in ledger["jobs"].values() if j["episode_index"] is None)
    ds = LeRobotDataset("test/imagined", root=tmp_path / "out")
    source = LeRobotDataset("test/tiny", root=tiny_dataset_root)
    assert ds.meta.total_episodes == 2 and len(ds) == 16 and ds.fps == source.fps
    assert set(ds.meta.features) == set(source.meta.features)
    for key in ("observation.images.corner", "observation.images.gripperPOV", "observation.state", "action"):
        assert tuple(ds.meta.features[key]["shape"]) == tuple(source.meta.features[key]["shape"])
    item = ds[3]
    assert item["observation.images.corner"].shape == (3, 32, 32)
    np.testing.assert_allclose(item["action"].numpy(), [0.5, 0, 0, 0])
    meta = json.loads((tmp_path / "out" / "meta" / "imagined.json").read_text())
    assert meta["world_model"] == str(tiny_world_model_dir) and meta["threshold"] == 0.5
    assert meta["warmup_random_steps"] == 4 and {j["seed"] for j in meta["jobs"].values()} == {0, 1}


def test_action_noise_explores_and_the_executed_action_is_written(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    cfg = config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "out", action_noise=0.2, keep_failures=True)
    ledger = Imaginer(cfg, drift(), even_rows_succeed).run()
    assert ledger["action_noise"] == 0.2
    table = LeRobotDataset("test/imagined", root=tmp_path / "out").hf_dataset.with_format("numpy")
    actions, episode = np.asarray(table["action"]), np.asarray(table["episode_index"])
    assert actions.shape == (4 * 8, 4) and np.abs(actions).max() <= 1.0
    noise = actions - np.array([0.5, 0.0, 0.0, 0.0])
    assert abs(noise.mean()) < 0.05 and 0.15 < noise.std() < 0.25  # the policy's action plus N(0, 0.2)
    seeds_of_start_0 = [j["episode_index"] for j in ledger["jobs"].values() if j["start"] == 0]
    assert len(seeds_of_start_0) == 2  # two seeds of one start explore differently
    assert not np.allclose(actions[episode == seeds_of_start_0[0]], actions[episode == seeds_of_start_0[1]])
    lag1 = np.corrcoef(noise[:-1, 1], noise[1:, 1])[0, 1]
    assert abs(lag1) < 0.5  # white noise by default

    cfg = config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "drifting", action_noise=0.2, keep_failures=True,
                 action_noise_correlation=0.95)
    Imaginer(cfg, drift(), even_rows_succeed).run()
    table = LeRobotDataset("test/imagined", root=tmp_path / "drifting").hf_dataset.with_format("numpy")
    noise, episode = np.asarray(table["action"])[:, 1], np.asarray(table["episode_index"])
    same_episode = episode[:-1] == episode[1:]
    assert np.corrcoef(noise[:-1][same_episode], noise[1:][same_episode])[0, 1] > 0.8  # a slowly drifting offset
    with pytest.raises(ValueError, match="action_noise_correlation"):
        Imaginer(config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "bad", action_noise=0.2,
                        action_noise_correlation=1.0), drift(), even_rows_succeed)


def test_interrupted_generation_resumes_without_duplicates(tiny_world_model_dir, tiny_dataset_root, tmp_path,
                                                           monkeypatch):
    cfg = config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "out", keep_failures=True)
    real_save = LeRobotDataset.save_episode
    calls = {"n": 0}

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(LeRobotDataset, "save_episode", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        Imaginer(cfg, drift(), even_rows_succeed).run()
    monkeypatch.undo()
    assert LeRobotDataset("test/imagined", root=tmp_path / "out").meta.total_episodes == 2  # whole episodes only

    ledger = Imaginer(cfg, drift(), even_rows_succeed).run()
    ds = LeRobotDataset("test/imagined", root=tmp_path / "out")
    assert ds.meta.total_episodes == 4 and len(ds) == 32
    indices = sorted(j["episode_index"] for j in ledger["jobs"].values())
    assert indices == [0, 1, 2, 3]  # every job once
    assert "imagined.success_probability" in ds.meta.features
    scores = {int(ds[i * 8]["episode_index"]): float(ds[i * 8]["imagined.success_probability"]) for i in range(4)}
    assert sorted(round(v, 1) for v in scores.values()) == [0.1, 0.1, 0.9, 0.9]


def test_a_rerun_extends_only_what_the_same_settings_made(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    out = tmp_path / "out"
    Imaginer(config(tiny_world_model_dir, tiny_dataset_root, out), drift(), even_rows_succeed).run()
    more = Imaginer(config(tiny_world_model_dir, tiny_dataset_root, out, seeds_per_start=3), drift(),
                    even_rows_succeed).run()  # more seeds per start: the same settings, extended
    assert len(more["jobs"]) == 6 and {j["seed"] for j in more["jobs"].values()} == {0, 1, 2}
    with pytest.raises(ValueError, match=r"output_root: .*out.*action_noise: 0\.2 asked, 0\.0 recorded"):
        Imaginer(config(tiny_world_model_dir, tiny_dataset_root, out, action_noise=0.2), drift(), even_rows_succeed)
    with pytest.raises(ValueError, match=r"judge: 'another judge' asked"):
        Imaginer(config(tiny_world_model_dir, tiny_dataset_root, out, judge="another judge"), drift(),
                 even_rows_succeed)
    assert LeRobotDataset("test/imagined", root=out).meta.total_episodes == 3  # the refused runs wrote nothing


def test_a_lerobot_training_step_runs_on_imagined_data(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    from policies.train_visual import TrainVisualConfig, train_visual

    Imaginer(config(tiny_world_model_dir, tiny_dataset_root, tmp_path / "out"), drift(), even_rows_succeed).run()
    checkpoints = train_visual(TrainVisualConfig(
        dataset_root=str(tmp_path / "out"), repo_id="test/imagined", budgets=[1], output_dir=str(tmp_path / "act"),
        batch_size=2, dim_model=32, chunk_size=4, device="cpu", extra_args=["--num_workers=0"]))
    assert checkpoints[0].exists()


def run_imagine(model_dir, dataset_root, out, starts):
    """What the hard-kill test runs in a subprocess: one committed episode at a time."""
    cfg = config(model_dir, dataset_root, out, keep_failures=True, commit_every=1)
    cfg.starts = starts
    Imaginer(cfg, drift(), even_rows_succeed).run()


def test_a_hard_kill_keeps_every_committed_episode_and_the_rerun_completes(tiny_world_model_dir, tiny_dataset_root,
                                                                           tmp_path):
    import random
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "out"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_imagine; "
              f"test_imagine.run_imagine({str(tiny_world_model_dir)!r}, {str(tiny_dataset_root)!r}, {str(out)!r}, 3)")

    def committed() -> int:
        try:
            return json.loads((out / "meta" / "info.json").read_text())["total_episodes"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while committed() < 1:
        assert proc.poll() is None, "imagine exited before its first commit"
        assert time.time() < deadline, "no commit in time"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # inside a later episode or commit
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, children included
    proc.wait()

    survived = LeRobotDataset("test/imagined", root=out)  # lerobot opens what the kill left
    n = survived.meta.total_episodes
    ledger = json.loads((out / "meta" / "imagined.json").read_text())
    assert n >= 1 and sorted(j["episode_index"] for j in ledger["jobs"].values()) == list(range(n))
    assert len(survived) == 8 * n and survived[len(survived) - 1]["action"].shape == (4,)  # whole, decodable
    subprocess.run([sys.executable, "-c", script], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300)
    finished = LeRobotDataset("test/imagined", root=out)
    ledger = json.loads((out / "meta" / "imagined.json").read_text())
    assert finished.meta.total_episodes == 6 and len(ledger["jobs"]) == 6  # 3 starts x 2 seeds, each once
    assert sorted(j["episode_index"] for j in ledger["jobs"].values()) == list(range(6))
    assert not (tmp_path / "out.recording").exists() and not (tmp_path / "out.old").exists()
