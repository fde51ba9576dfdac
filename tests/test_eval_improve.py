"""The improvement loop's statistics: Wilson intervals and the interval of a change in success rate."""

import numpy as np
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


def test_the_loop_runs_every_arm_on_the_same_real_seeds(tiny_world_model_dir, tmp_path):
    # Toy sizes end to end on reach (the tiny model's views): weak policy, imagination (scored by the task's state
    # rule, with action noise), four fine-tuned arms. threshold=0 keeps every rollout as a "success", so every arm really fine-tunes.
    import json

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.metaworld.record import RecordConfig, record
    from eval.improve import ImproveConfig, improve
    from worldmodel.envs.metaworld import MetaWorldConfig
    from worldmodel.sampler import SamplerConfig

    root = tmp_path / "reach"
    record(RecordConfig(root=str(root), repo_id="test/reach", episodes=6, seed=0, workers=1, action_noise=0.6,
                        env=MetaWorldConfig(task="reach-v3", cameras=["corner", "gripperPOV"], image_size=32,
                                            max_episode_steps=100)))
    table = LeRobotDataset("test/reach", root=root).hf_dataset.with_format("numpy")
    episode, success = np.asarray(table["episode_index"]), np.asarray(table["next.success"]).reshape(-1)
    ends_in_success = {int(e): bool(success[episode == e][-1]) for e in set(episode.tolist())}
    assert 3 <= sum(ends_in_success.values()) < 6  # demonstrations and at least one failed episode

    cfg = ImproveConfig(model=str(tiny_world_model_dir), judge=None, dataset_root=str(root),
                        repo_id="test/reach", task="reach-v3", weak_demos=1, weak_steps=2, finetune_steps=2, starts=2,
                        seeds_per_start=1, warmup_random_steps=2, action_noise=0.3, threshold=0.0, eval_episodes=2, max_episode_steps=8,
                        batch_size=2, sampler=SamplerConfig(steps=1, window=1), run="test",
                        output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"))
    report = improve(cfg)
    results = report["results"]
    assert list(results) == ["before", "after_demos_only", "after_imagined_successes", "after_real_demos",
                             "after_imagined_unfiltered"]
    assert report["imagined_kept"] == 2 and report["finetune_episodes"] == 2
    # Demonstrations are the episodes that end in success: the weak policy's and the real-demos arm's.
    assert report["demonstrations"] == sorted(e for e, ok in ends_in_success.items() if ok)
    assert all(ends_in_success[e] for e in report["weak_episodes"] + results["after_real_demos"]["episodes"])
    assert not set(report["weak_episodes"]) & set(results["after_real_demos"]["episodes"])
    for name, r in results.items():
        assert r["n"] == 2 and len(r["per_episode"]) == 2
        if name != "before":
            assert r["finetune_episodes"] == (1 if name == "after_demos_only" else 2)
            assert r["change_interval"][0] <= r["change"] <= r["change_interval"][1]
    # Every arm also trains on the weak policy's demonstration (it must not forget it); demos_only on that alone.
    for arm, episodes in [("imagined_successes", 3), ("real_demos", 3), ("demos_only", 1)]:
        data = LeRobotDataset("test/x", root=tmp_path / "out" / f"finetuned_{arm}_data")
        assert data.meta.total_episodes == episodes
    assert json.loads((tmp_path / "results" / "improve_test.json").read_text())["run"] == "test"
    assert "change vs before" in (tmp_path / "results" / "improve_test.md").read_text()
