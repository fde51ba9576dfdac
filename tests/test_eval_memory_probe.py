"""eval.memory_probe on a tiny recording: every memory content, the copied retrieved frame, the report."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from eval.fidelity import held_out_tours
from eval.memory_probe import (MemoryProbeConfig, copy_pictures_at, copy_retrieved, memory_probe,
                               return_consistency)
from worldmodel.dataset import DatasetConfig
from worldmodel.memory import MemoryConfig
from worldmodel.metrics import psnr, recorded_frames
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig


def probe_config(model_dir, root, tmp_path, k=2) -> MemoryProbeConfig:
    # 40-step episodes are 10 frames: every frame at least 4 after a place counts as a revisit here.
    return MemoryProbeConfig(model=str(model_dir), dataset=DatasetConfig(root=str(root), repo_id="test/tiny"),
                             episodes=2, horizon_s=0.4, sampler=SamplerConfig(steps=2, window=2, recent_frames=2,
                                                                              memory=MemoryConfig(k=k, capacity=8)),
                             revisit_near=1.0, revisit_away=0.0, revisit_min_gap=4, run="tiny",
                             results_dir=str(tmp_path), device="cpu")


def test_each_memory_content_changes_the_pictures_and_only_through_memory(tiny_world_model_dir, tiny_dataset_root,
                                                                          tmp_path):
    result = memory_probe(probe_config(tiny_world_model_dir, tiny_dataset_root, tmp_path))
    assert set(result["on_revisits"]) == {"full", "no_memory", "memory_real", "memory_wrong", "copy_retrieved",
                                          "copy_drawn_retrieved", "copy_first"}
    assert set(result["return_consistency"]) == {"full", "no_memory", "memory_real", "memory_wrong", "real"}
    assert result["revisit"]["frames"] > 0
    change = result["picture_change_vs_no_memory"]
    # A random network reads whatever memory holds: drawn, real and another episode's frames all change its pictures,
    # and differently (the real and the wrong memory are not the drawn one).
    assert all(change[name]["revisits"] > 0 for name in ("full", "memory_real", "memory_wrong"))
    psnr = {name: r["psnr"]["mean_over_views"] for name, r in result["on_revisits"].items()}
    assert len({psnr["full"], psnr["memory_real"], psnr["memory_wrong"]}) == 3
    assert result["retrieval"]["full"]["frames"] > 0
    saved = json.loads((tmp_path / "memory_probe_tiny.json").read_text())
    assert saved["on_revisits"]["full"] == result["on_revisits"]["full"]
    assert "| memory_real |" in (tmp_path / "memory_probe_tiny.md").read_text()
    # The published command names every field it sets with this run's value (training_clips was once left out).
    cfg = probe_config(tiny_world_model_dir, tiny_dataset_root, tmp_path)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in result["command"].split()[3:])
    assert flags == {"model": cfg.model, "dataset.root": cfg.dataset.root, "dataset.repo_id": cfg.dataset.repo_id,
                     "episodes": str(cfg.episodes), "horizon_s": f"{cfg.horizon_s:g}",
                     "sampler.memory.capacity": str(cfg.sampler.memory.capacity),
                     "training_clips": str(cfg.training_clips), "run": cfg.run}
    # Without memory (k = 0) no memory content can change anything: the probe measures memory and nothing else.
    blind = memory_probe(probe_config(tiny_world_model_dir, tiny_dataset_root, tmp_path, k=0))
    assert all(blind["picture_change_vs_no_memory"][name]["all_frames"] == 0
               for name in ("full", "memory_real", "memory_wrong"))


def test_copy_retrieved_copies_the_real_frame_nearest_in_pose_outside_the_recent_window(tiny_world_model_dir,
                                                                                        tiny_dataset_root, tmp_path):
    cfg = probe_config(tiny_world_model_dir, tiny_dataset_root, tmp_path)
    model = VideoDiT.from_pretrained(cfg.model)
    mc = model.cfg
    clips = held_out_tours(cfg.dataset, 2, mc, 8)
    out = copy_retrieved(cfg, model, clips, [0, 1], 8)
    recent = cfg.sampler.recent_frames
    for b, start in enumerate(clips.cache.episode_start[:2]):
        pose = clips.cache.states[start + mc.frame_stride * np.arange(10)][:, list(mc.pose_indices)]
        for f in range(8):
            frame, eligible = f + 1, np.arange(1, f + 1 - recent)  # not the sink, not the recent window
            if len(eligible) == 0:
                assert out["retrieved"][b, f] == 0
                continue
            nearest = eligible[((pose[eligible] - pose[frame]) ** 2).sum(-1).argmin()]
            assert out["retrieved"][b, f] == nearest
    # A frame copied onto itself would be infinitely sharp: the copies are other frames, finite PSNR.
    assert all(np.isfinite(v).all() for v in out["psnr_per_episode"].values())


def test_drawn_copies_and_return_consistency_of_the_real_frames_are_the_real_world_s(tiny_world_model_dir,
                                                                                    tiny_dataset_root, tmp_path):
    # Handed the real frames as "drawn" pictures, copying the drawn retrieved frame is copy_retrieved, and the return
    # consistency is the real world's: both index the frames alike (0 = the reset frame, imagined f = f + 1).
    cfg = probe_config(tiny_world_model_dir, tiny_dataset_root, tmp_path)
    model = VideoDiT.from_pretrained(cfg.model)
    clips = held_out_tours(cfg.dataset, 2, model.cfg, 8)
    stride, starts = model.cfg.frame_stride, clips.cache.episode_start[:2]
    real = np.stack([clips.cache.images[s + stride * np.arange(1, 9)] for s in starts])  # (B, 8, V, H, W, 3)
    found = copy_retrieved(cfg, model, clips, [0, 1], 8)
    assert found["retrieved"].max() > 0
    drawn = copy_pictures_at(clips, [0, 1], real, found["retrieved"])
    consistency = return_consistency(clips, [0, 1], real, found["retrieved"])
    for v, key in enumerate(clips.camera_keys):
        # copy_retrieved's copies, read straight from the recording: real frame `retrieved` of each episode
        copied = torch.stack([recorded_frames(clips.cache, [s], stride * found["retrieved"][b], v)[0]
                              for b, s in enumerate(starts)])
        expected = psnr(copied, recorded_frames(clips.cache, starts, stride * np.arange(1, 9), v)).numpy()
        np.testing.assert_allclose(found["psnr_per_episode"][key], expected, rtol=1e-5)
        np.testing.assert_allclose(drawn["psnr_per_episode"][key], found["psnr_per_episode"][key], rtol=1e-5)
        np.testing.assert_allclose(drawn["ssim_per_episode"][key], found["ssim_per_episode"][key], rtol=1e-5)
        np.testing.assert_allclose(consistency[key], found["psnr_per_episode"][key], rtol=1e-5)
    # A picture compared with itself is as alike as PSNR goes; changed pictures are not.
    itself = return_consistency(clips, [0, 1], real, np.tile(np.arange(1, 9), (2, 1)))
    assert all((v > 100).all() for v in itself.values())
    assert all((v < 100).all() for v in return_consistency(clips, [0, 1], 255 - real, found["retrieved"]).values())


def test_one_episode_is_refused_before_any_work(tmp_path):
    cfg = replace(probe_config(tmp_path / "no_model", tmp_path / "no_data", tmp_path), episodes=1)
    with pytest.raises(ValueError, match="episodes"):
        memory_probe(cfg)
