"""eval.ablation: what it runs for a variant (from scratch or fine-tuned) and the table it writes."""

import json

from eval.ablation import AblationConfig, ablation, state_drift_command, train_command


def scored_variant(work, run, name, object_1, object_5):
    """The files a finished variant leaves behind (the study reads them back instead of rerunning)."""
    train = work / "train" / name
    (train / "model").mkdir(parents=True)
    (train / "model" / "config.json").write_text("{}")
    (train / "train_summary.json").write_text(json.dumps({"steps": 300, "wall_seconds": 240.0, "clips_per_s": 19.5,
                                                          "parameters": 3_300_000}))
    (train / "metrics.jsonl").write_text(json.dumps({"step": 300, "loss": 0.1}) + "\n")
    views = {"mean_over_views": [22.0, 21.0]}
    entry = {"psnr": views, "ssim": {"mean_over_views": [0.7, 0.6]}, "hand_error_m": [0.01, 0.02],
             "object_error_m": [0.05, 0.3]}
    (work / "fidelity").mkdir(exist_ok=True)
    (work / "fidelity" / f"fidelity_ablation_{run}_{name}.json").write_text(json.dumps(
        {"device": "cpu", "variants": {"full": entry, "copy_first": {"psnr": views, "ssim": views}}}))
    (work / "state_drift").mkdir(exist_ok=True)
    (work / "state_drift" / f"state_drift_ablation_{run}_{name}.json").write_text(json.dumps(
        {"starts": 320, "episodes": 8, "hand_error_m": {"model": [0.008, 0.016], "dead_reckoning": [0.012, 0.04]},
         "object_error_m": {"model": [object_1, object_5], "held_still": [0.0031, 0.0141]}}))


def test_fine_tuned_variants_are_scored_teacher_forced_and_tabled(tmp_path):
    work = tmp_path / "work"
    cfg = AblationConfig(run="t", work_dir=str(work), results_dir=str(tmp_path / "results"),
                         variants=["mean_state", "median_state"], init_from="pretrained/metaworld_push/tiny",
                         lr=2e-4, teacher_forced=True)
    assert "--init_from=pretrained/metaworld_push/tiny" in train_command(cfg, "median_state")
    assert "--diffusion.median_state=true" in train_command(cfg, "median_state")
    assert "--diffusion.median_state=false" in train_command(cfg, "mean_state")
    assert "--train.lr=0.0002" in train_command(cfg, "mean_state")
    assert f"--model={work}/train/median_state/model" in state_drift_command(cfg, "median_state")
    scored_variant(work, "t", "mean_state", 0.0060, 0.0242)
    scored_variant(work, "t", "median_state", 0.0039, 0.0150)
    result = ablation(cfg)  # every variant already scored: read back, nothing rerun
    assert result["variants"]["median_state"]["teacher_forced"]["object_error_m"]["model"] == [0.0039, 0.0150]
    table = (tmp_path / "results" / "ablation_t.md").read_text()
    assert "fine-tuned from `pretrained/metaworld_push/tiny`" in table
    assert "| median_state | 0.80 | 1.60 | 0.39 | 1.50 |" in table
    assert "| mean_state | 0.80 | 1.60 | 0.60 | 2.42 |" in table
    assert "| *dead reckoning / object held still* | 1.20 | 4.00 | 0.31 | 1.41 |" in table
    assert "--init_from=pretrained/metaworld_push/tiny --lr=0.0002 --teacher_forced=true" in table
