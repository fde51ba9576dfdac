"""eval.fidelity end to end on a tiny config: every variant, per view and horizon, revisits, report."""

import json

import numpy as np
import pytest

from eval.fidelity import FidelityConfig, fidelity, variant_sampler
from worldmodel.dataset import DatasetConfig
from worldmodel.sampler import SamplerConfig


def test_fidelity_variants_horizons_and_report(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    cfg = FidelityConfig(model=str(tiny_world_model_dir),
                         dataset=DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny"),
                         baseline_dataset=DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny"),
                         episodes=2, horizons_s=[0.1, 0.4], sampler=SamplerConfig(steps=2, window=2, recent_frames=2),
                         run="tiny", results_dir=str(tmp_path / "results"), output_dir=str(tmp_path / "out"),
                         device="cpu")
    result = fidelity(cfg)
    assert result["horizons_frames"] == [2, 8]  # 20 world-model frames per second of robot time
    assert set(result["variants"]) == {"full", "no_memory", "no_sinks", "chunk", "copy_first", "state_ridge",
                                       "state_kinematic"}
    for name in ("full", "chunk", "state_ridge", "state_kinematic"):  # position errors at every horizon
        v = result["variants"][name]
        assert len(v["hand_error_m"]) == 2 and len(v["object_error_m"]) == 2
        assert all(np.isfinite(e) and e >= 0 for e in v["hand_error_m"] + v["object_error_m"])
    for name in ("state_ridge", "state_kinematic"):  # fitted on these very episodes: close to the truth
        assert max(result["variants"][name]["hand_error_m"]) < 0.05
    assert "psnr" not in result["variants"]["state_ridge"]
    for name, v in result["variants"].items():
        if name.startswith("state_"):
            continue
        for metric in ("psnr", "ssim"):
            assert set(v[metric]) == {"observation.images.corner", "observation.images.gripperPOV", "mean_over_views"}
            assert all(len(x) == 2 for x in v[metric].values())
        assert len(v["psnr_curve"]["observation.images.corner"]) == 8
    # The copy baseline at its first horizon is a real frame vs a nearby real frame: far better than noise.
    assert result["variants"]["copy_first"]["psnr"]["mean_over_views"][0] > 20
    # Variants really differ (each changes what the sampler attends to), and the run is deterministic.
    assert result["variants"]["full"]["psnr_curve"] != result["variants"]["no_sinks"]["psnr_curve"]
    assert result["variants"]["full"]["psnr_curve"] != result["variants"]["chunk"]["psnr_curve"]
    saved = json.loads((tmp_path / "results" / "fidelity_tiny.json").read_text())
    assert saved["variants"]["full"]["psnr_curve"] == result["variants"]["full"]["psnr_curve"]
    assert "revisit" in saved and "| full |" in (tmp_path / "results" / "fidelity_tiny.md").read_text()
    assert "<svg" in (tmp_path / "out" / "fidelity_tiny.html").read_text()
    # Too long a horizon for the episodes: a clear error.
    with pytest.raises(ValueError, match="horizon"):
        fidelity(FidelityConfig(**{**cfg.__dict__, "horizons_s": [1.0]}))


def test_variant_sampler_changes_one_mechanism_each():
    base = SamplerConfig()
    assert variant_sampler(base, "no_memory").memory.k == 0 and base.memory.k > 0
    assert variant_sampler(base, "no_sinks").sink_frames == 0
    assert variant_sampler(base, "chunk").rolling is False
    with pytest.raises(ValueError, match="variants"):
        variant_sampler(base, "nothing")


class _Cache:
    """The parts of a ClipDataset cache the state baselines read."""

    def __init__(self, states, actions, lengths):
        self.states, self.actions = states, actions
        self.episode_length = np.asarray(lengths)
        self.episode_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])


class _Clips:
    def __init__(self, cache, stride):
        self.cache, self.cfg = cache, type("cfg", (), {"frame_stride": stride})()


def test_state_baselines_recover_simple_dynamics():
    from eval.fidelity import HAND, OBJECT, fit_state_ridge, kinematic_model, state_rollout

    rng = np.random.default_rng(0)
    stride, lengths = 4, [200, 200, 200]
    actions = rng.uniform(-1, 1, (sum(lengths), 4)).astype(np.float32)
    states = np.zeros((sum(lengths), 39), dtype=np.float32)
    for start, length in zip(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths):
        states[start, HAND] = rng.uniform(-0.1, 0.1, 3)
        states[start, OBJECT] = [0.0, 0.7, 0.02]
        for t in range(start + 1, start + length):  # the hand moves exactly as dead reckoning says
            states[t] = states[t - 1]
            states[t, HAND] = states[t - 1, HAND] + 0.01 * actions[t - 1, :3]
    clips = _Clips(_Cache(states, actions, lengths), stride)
    truth = np.stack([states[s + stride * np.arange(1, 11)] for s in clips.cache.episode_start])
    for predict in (kinematic_model(clips), fit_state_ridge(clips, alpha=1e-6)):
        rolled = state_rollout(predict, clips, [0, 1, 2], horizon=10)
        assert rolled.shape == (3, 10, 39)
        assert np.abs(rolled[..., HAND] - truth[..., HAND]).max() < 2e-3
        assert np.abs(rolled[..., OBJECT] - truth[..., OBJECT]).max() < 2e-3
    # Dead reckoning never leaves the workspace the hand reached in the data.
    far = kinematic_model(clips)(states[:1].astype(np.float64), np.ones((1, stride, 4)) * 100)
    assert (far[0, HAND] <= states[:, HAND].max(0) + 1e-6).all()


def test_far_object_motion_tells_an_object_dragged_by_a_distant_hand_from_a_still_one():
    """An object that follows a hand 30 cm away is flagged (it moves, and with the hand); a still one is not;
    frames with the hand near the object (a push) are left out."""
    from eval.fidelity import HAND, OBJECT, far_object_motion

    rng = np.random.default_rng(0)
    hand = np.cumsum(rng.normal(0, 0.005, (2, 50, 3)), axis=1)
    state = np.zeros((2, 50, 39))
    state[..., HAND] = hand
    state[..., OBJECT] = 0.3  # far from the hand (which stays within a few cm of the origin)
    still = far_object_motion(state, far=0.2)
    assert still["frames"] == 2 * 49 and still["object_step_m"] == 0.0 and still["hand_correlation"] == [0.0] * 3
    state[..., OBJECT] = hand + 0.3  # dragged along by a hand 52 cm away
    dragged = far_object_motion(state, far=0.2)
    assert dragged["object_step_m"] > 0.005 and min(dragged["hand_correlation"]) > 0.99
    state[..., OBJECT] = hand + 0.01  # in contact: not counted
    assert far_object_motion(state, far=0.2)["frames"] == 0
