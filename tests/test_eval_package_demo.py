"""Shipping: eval.package writes fp16 folders with model cards that load offline; eval.demo runs on them."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from eval.demo import DemoConfig, demo
from eval.package import PackageConfig, package_judge, package_model
from worldmodel.judge import JudgeNetConfig, SuccessJudge
from worldmodel.model import VideoDiT
from worldmodel.world import WorldModel


@pytest.fixture(scope="module")
def trained_dirs(tiny_world_model_dir, tmp_path_factory):
    """A `wm train` output folder and a `wm judge` folder, as those commands lay them out."""
    root = tmp_path_factory.mktemp("trained")
    train_dir = root / "train"
    shutil.copytree(tiny_world_model_dir, train_dir / "model")
    (train_dir / "train_config.json").write_text(json.dumps({"train": {
        "dataset": {"root": "outputs/datasets/x", "clip_frames": 6, "memory_frames": 3},
        "train": {"val_episodes": 2, "batch_size": 8, "lr": 1e-3}}}))
    (train_dir / "train_summary.json").write_text(json.dumps(
        {"steps": 10, "parameters": 12345, "num_processes": 1, "seconds": 60.0, "clips_per_s": 1.5}))
    (train_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "val/psnr_one_step": 21.5,
                                                         "val/psnr_open_loop": 17.25}) + "\n")
    torch.manual_seed(0)
    judge = SuccessJudge(config={**JudgeNetConfig(frames=2, width=8, num_views=2, image_size=32).__dict__})
    judge_dir = root / "judge"
    judge.save_pretrained(judge_dir)
    (judge_dir / "judge_report.json").write_text(json.dumps({
        "config": {"dataset": {"root": "outputs/datasets/x"}}, "episodes": {"train": [0, 1], "val": [2]},
        "val": {"accuracy": 0.875, "precision": 1.0, "recall": 0.5, "n": 16}}))
    return train_dir, judge_dir


def test_package_writes_fp16_weights_and_cards_that_load(trained_dirs, tmp_path):
    train_dir, judge_dir = trained_dirs
    cfg = PackageConfig(train_dir=str(train_dir), name="tiny", judge_dir=str(judge_dir), dest=str(tmp_path / "assets"),
                        note="undertrained test model")
    model_dir, judge_out = package_model(cfg), package_judge(cfg)
    with safe_open(str(model_dir / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    original = VideoDiT.from_pretrained(train_dir / "model")
    shipped = VideoDiT.from_pretrained(model_dir)
    for (name, a), (_, b) in zip(original.state_dict().items(), shipped.state_dict().items()):
        torch.testing.assert_close(b.float(), a.half().float(), msg=name)  # the same weights, fp16-rounded
    card = (model_dir / "README.md").read_text()
    assert "undertrained test model" in card and "17.25" in card and "10 steps" in card
    assert "accuracy 0.88" in (judge_out / "README.md").read_text()  # held-out accuracy 0.875
    assert SuccessJudge.from_pretrained(judge_out).cfg.num_views == 2
    # The shipped folder runs: a WorldModel (fp32 weights for sampling) steps from it.
    world = WorldModel.from_pretrained(model_dir, batch_size=1, device="cpu")
    assert next(world.model.parameters()).dtype == torch.float32
    # Packaging again replaces the folder whole (no leftovers of the old one, no temp folder).
    (model_dir / "stale.txt").write_text("old")
    package_model(cfg)
    assert not (model_dir / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["judge", "tiny"]


def test_demo_ranks_with_shipped_assets(trained_dirs, tmp_path, capsys):
    train_dir, judge_dir = trained_dirs
    assets = tmp_path / "assets"
    shutil.copytree(train_dir / "model", assets / "tiny")
    shutil.copytree(judge_dir, assets / "judge")
    result = demo(DemoConfig(assets=str(assets), episodes=1, policies=["expert", "random"], device="cpu",
                             output_dir=str(tmp_path / "demo")))
    out = capsys.readouterr().out
    assert "1 episodes per policy" in out and "Pearson" in out and "report.html" in out
    assert [p["name"] for p in result["policies"]] == ["expert", "random"]
    assert (tmp_path / "demo" / "report.html").exists()
    with pytest.raises(FileNotFoundError, match="small"):
        demo(DemoConfig(assets=str(assets), model="small", episodes=1, device="cpu", output_dir=str(tmp_path / "x")))
