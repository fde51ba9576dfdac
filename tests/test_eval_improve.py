"""The improvement loop's statistics: Wilson intervals and the interval of a change in success rate."""

import pytest

from eval.improve import difference_interval, wilson


def test_wilson_interval_matches_the_textbook_value():
    assert wilson(5, 50) == pytest.approx([0.0435, 0.2136], abs=1e-3)
    assert wilson(0, 50)[0] == 0.0 and wilson(50, 50)[1] == 1.0


def test_difference_interval_excludes_zero_only_for_a_real_change():
    # Newcombe (1998), table II example: 56/70 vs 48/80 -> difference 0.2, interval [0.0524, 0.3339]
    assert difference_interval(56, 70, 48, 80) == pytest.approx([0.0524, 0.3339], abs=1e-3)
    lo, hi = difference_interval(20, 50, 5, 50)  # +30 points on 50 seeds each: clearly above zero
    assert lo > 0
    lo, hi = difference_interval(8, 50, 5, 50)  # +6 points: the interval straddles zero
    assert lo < 0 < hi


def test_the_loop_runs_every_arm_on_the_same_real_seeds(tiny_dataset_root, tiny_world_model_dir, tmp_path):
    # Toy sizes end to end: weak policy, imagination (scored by the task's state rule), three fine-tuned arms.
    # threshold=0 keeps every rollout as a "success", so every arm really fine-tunes.
    import json

    from eval.improve import ImproveConfig, improve
    from worldmodel.sampler import SamplerConfig

    cfg = ImproveConfig(model=str(tiny_world_model_dir), judge=None, dataset_root=str(tiny_dataset_root),
                        repo_id="test/tiny", task="push-v3", weak_demos=1, weak_steps=2, finetune_steps=2, starts=2,
                        seeds_per_start=1, warmup_random_steps=2, threshold=0.0, eval_episodes=2, max_episode_steps=8,
                        batch_size=2, sampler=SamplerConfig(steps=1, window=1), run="test",
                        output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"))
    report = improve(cfg)
    results = report["results"]
    assert list(results) == ["before", "after_imagined_successes", "after_real_demos", "after_imagined_unfiltered"]
    assert report["imagined_kept"] == 2 and report["finetune_episodes"] == 2
    for name, r in results.items():
        assert r["n"] == 2 and len(r["per_episode"]) == 2
        if name != "before":
            assert r["finetune_episodes"] == 2 and r["change_interval"][0] <= r["change"] <= r["change_interval"][1]
    assert json.loads((tmp_path / "results" / "improve_test.json").read_text())["run"] == "test"
    assert "change vs before" in (tmp_path / "results" / "improve_test.md").read_text()
