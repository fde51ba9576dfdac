"""eval.ppi end to end on a tiny config: estimates, ground truth, trust signals, reports; resumable."""

import json

import numpy as np

from eval.ppi import PPIConfig, ppi, trust_scores
from eval.rank import RankConfig, real_episode
from policies.metaworld import make_family
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.sampler import SamplerConfig


def config(model_dir, tmp_path):
    rank = RankConfig(model=str(model_dir), judge=None, policies=["expert", "random"], episodes=3,
                      max_episode_steps=12, sampler=SamplerConfig(steps=2, window=2), n_boot=20, device="cpu",
                      videos_per_policy=1)
    return PPIConfig(rank=rank, paired_real=1, ground_truth_episodes=2, trust_episodes=2, run="tiny",
                     output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"))


def test_ppi_end_to_end_and_resumable(tiny_world_model_dir, tmp_path):
    result = ppi(config(tiny_world_model_dir, tmp_path))
    saved = json.loads((tmp_path / "results" / "ppi_tiny.json").read_text())
    for source in ("judge", "state_rule"):
        block = saved["estimates"][source]
        assert [r["name"] for r in block["policies"]] == ["expert", "random"]
        for row in block["policies"]:
            assert row["n_real"] == 1 and row["n_imagined"] == 3
            assert row["estimate"]["low"] <= row["estimate"]["value"] <= row["estimate"]["high"]
            # never less precise than the one real trial alone
            assert row["estimate"]["high"] - row["estimate"]["low"] <= row["real_only"]["high"] - row["real_only"]["low"] + 1e-9
        assert set(block["coverage"]) == {"estimate", "real_only", "imagined_only"}
    assert set(saved["trust"]["candidates"]) == {"judge_uncertainty", "judge_vs_state_rule", "sample_disagreement"}
    assert saved["trust"]["episodes_common"] == 4  # 2 policies x trust_episodes
    assert "<svg" in (tmp_path / "out" / "report.html").read_text()
    info = json.loads((tmp_path / "out" / "eval_info.json").read_text())
    assert "real_success_estimate" in info["per_group"]["expert"] and "per_task" in info  # lerobot's shape, extended
    assert (tmp_path / "results" / "ppi_tiny.md").exists()

    truth_file = tmp_path / "out" / "ground_truth.jsonl"
    lines = truth_file.read_text()
    assert len(lines.splitlines()) == 4
    again = ppi(config(tiny_world_model_dir, tmp_path))  # every stage resumes: nothing is run again
    assert truth_file.read_text() == lines
    assert json.dumps(again["estimates"]) == json.dumps(result["estimates"])  # (NaN correlations compare as text)


def test_ground_truth_episodes_follow_the_same_physics_as_ranked_ones():
    """The camera-free ground-truth rollout (render=False) gives the same per-frame success flags as eval.rank's."""
    env = MetaWorldMultiViewEnv(MetaWorldConfig(image_size=32, max_episode_steps=80))
    policy = make_family("push-v3", names=["expert"])[0]
    _, _, flags, _, _ = real_episode(env, policy, seed=7, steps=80, stride=4, keep_frames=False)
    _, kept, unrendered, _, _ = real_episode(env, policy, seed=7, steps=80, stride=4, keep_frames=False, render=False)
    assert unrendered == flags and "observation.images.corner" not in kept[-1]
    env.close()


def test_trust_scores_use_only_imagination():
    records = [{"imagined_success": True, "state_rule_on_imagined": False, "imagined_success_probability": 0.5,
                "real_success": True},
               {"imagined_success": False, "state_rule_on_imagined": False, "imagined_success_probability": 0.0,
                "real_success": True}]
    scores = trust_scores(records, [{"imagined_success": False}, None])
    assert scores["judge_uncertainty"].tolist() == [1.0, 0.0]
    assert scores["judge_vs_state_rule"].tolist() == [1.0, 0.0]
    assert scores["sample_disagreement"][0] == 1.0 and np.isnan(scores["sample_disagreement"][1])
    # the real outcome does not enter any score
    flipped = [{**r, "real_success": not r["real_success"]} for r in records]
    again = trust_scores(flipped, [{"imagined_success": False}, None])
    assert all(np.array_equal(scores[k], again[k], equal_nan=True) for k in scores)
