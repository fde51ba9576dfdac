"""eval.fidelity end to end on a tiny config: every variant, per view and horizon, revisits, report."""

import json

import pytest

from eval.fidelity import FidelityConfig, fidelity, variant_sampler
from worldmodel.dataset import DatasetConfig
from worldmodel.sampler import SamplerConfig


def test_fidelity_variants_horizons_and_report(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    cfg = FidelityConfig(model=str(tiny_world_model_dir),
                         dataset=DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny"),
                         episodes=2, horizons_s=[0.1, 0.4], sampler=SamplerConfig(steps=2, window=2, recent_frames=2),
                         run="tiny", results_dir=str(tmp_path / "results"), output_dir=str(tmp_path / "out"),
                         device="cpu")
    result = fidelity(cfg)
    assert result["horizons_frames"] == [2, 8]  # 20 world-model frames per second of robot time
    assert set(result["variants"]) == {"full", "no_memory", "no_sinks", "chunk", "copy_first"}
    for name, v in result["variants"].items():
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
