"""The improvement loop: its statistics (Wilson intervals, the interval of a change in success rate), the replay check
of imagined rollouts in the simulator, and the whole loop at toy sizes."""

from dataclasses import replace

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


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory):
    """6 noisy-expert reach episodes x 100 steps (env seeds 0..5), some of them failures; -> root, final outcomes."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.metaworld.record import RecordConfig, record
    from worldmodel.envs.metaworld import MetaWorldConfig

    root = tmp_path_factory.mktemp("improve") / "reach"
    record(RecordConfig(root=str(root), repo_id="test/reach", episodes=6, seed=0, workers=1, action_noise=0.6,
                        env=MetaWorldConfig(task="reach-v3", cameras=["corner", "gripperPOV"], image_size=32,
                                            max_episode_steps=100)))
    table = LeRobotDataset("test/reach", root=root).hf_dataset.with_format("numpy")
    episode, success = np.asarray(table["episode_index"]), np.asarray(table["next.success"]).reshape(-1)
    ends_in_success = {int(e): bool(success[episode == e][-1]) for e in set(episode.tolist())}
    assert 3 <= sum(ends_in_success.values()) < 6  # demonstrations and at least one failed episode
    return root, ends_in_success


def test_replaying_recorded_actions_from_their_start_reproduces_their_outcome(reach_demos):
    # The replay check's ground truth: an episode's actions replayed from its env seed end as recorded; with the
    # wrong seed no start matches, and nothing is replayed.
    from eval.improve import ImproveConfig, replay_in_the_simulator, replay_summary

    root, ends_in_success = reach_demos
    cfg = ImproveConfig(dataset_root=str(root), repo_id="test/reach", task="reach-v3", max_episode_steps=100)
    jobs = [{"start": e, "episode_index": e, "score": float(ok)} for e, ok in sorted(ends_in_success.items())]
    outcomes = replay_in_the_simulator(cfg, root, "test/reach", jobs)
    assert outcomes == [ends_in_success[e] for e in sorted(ends_in_success)]
    summary = replay_summary(cfg, jobs, outcomes)
    assert summary["imagined_successes_real"] == summary["imagined_successes"] == sum(ends_in_success.values())
    assert summary["imagined_failures_real_successes"] == 0
    wrong_seed = replace(cfg, dataset_seed=100)
    assert replay_in_the_simulator(wrong_seed, root, "test/reach", jobs) == [None] * len(jobs)


def test_real_demos_from_another_recording_lift_the_cap_of_the_datasets_unseen_demos(reach_demos):
    # The dataset's own demonstrations minus the weak policy's cap every arm; another recording of the task gives
    # the real-demos arm all of its episodes that end in success, and no failed one.
    from eval.improve import ImproveConfig, demonstrations, finetune_sources

    root, ends_in_success = reach_demos
    demos = demonstrations(str(root), "test/reach", [])
    assert demos == sorted(e for e, ok in ends_in_success.items() if ok)
    cfg = ImproveConfig(dataset_root=str(root), repo_id="test/reach", weak_demos=2)
    successes = list(range(100, 110))  # ten imagined successes
    n, sources = finetune_sources(cfg, root, successes, successes, demos, notes := [])
    assert n == len(demos) - 2 and "capped" in notes[0]
    assert set(sources["real_demos"][2]) == set(demos[2:])
    other = replace(cfg, real_demos_root=str(root), real_demos_repo_id="test/reach")
    n, sources = finetune_sources(other, root, successes, successes, demos, [])
    assert n == len(demos) and sources["real_demos"][:2] == (str(root), "test/reach")
    assert sources["real_demos"][2] == demos and len(sources["imagined_successes"][2]) == n


def test_the_loop_runs_every_arm_on_the_same_real_seeds(tiny_world_model_dir, reach_demos, tmp_path):
    # Toy sizes end to end on reach (the tiny model's views): weak policy, imagination (scored by the task's state
    # rule, with action noise), four fine-tuned arms, all at once, each arm's checkpoint chosen in imagination.
    # threshold=0 keeps every rollout as a "success", so every arm really fine-tunes.
    import json

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from eval.improve import ImproveConfig, improve, most_imagined_successes
    from worldmodel.sampler import SamplerConfig

    root, ends_in_success = reach_demos

    cfg = ImproveConfig(model=str(tiny_world_model_dir), judge=None, dataset_root=str(root),
                        repo_id="test/reach", task="reach-v3", weak_demos=1, weak_steps=2, finetune_steps=2, starts=2,
                        seeds_per_start=1, warmup_random_steps=0, action_noise=0.3, threshold=0.0, eval_episodes=2, max_episode_steps=8,
                        batch_size=2, finetune_workers=4, sampler=SamplerConfig(steps=1, window=1), run="test",
                        finetune_final_lr=1e-5, candidate_every=1, selection_starts=2, real_success_of_candidates=True,
                        output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"))
    for bad in [replace(cfg, selection_root=str(tmp_path / "nowhere")), replace(cfg, candidate_every=3),
                replace(cfg, real_demos_root=str(tmp_path / "nowhere"))]:
        with pytest.raises(ValueError, match="selection_root|candidate_every|real_demos_root"):  # before anything trains
            improve(bad)
    assert not (tmp_path / "out").exists()
    report = improve(cfg)
    results = report["results"]
    assert list(results) == ["before", "after_demos_only", "after_imagined_successes", "after_real_demos",
                             "after_imagined_unfiltered"]
    assert report["imagined_kept"] == 2 and report["finetune_episodes"] == 2
    assert report["replay"]["replayed"] == 2 and report["replay"]["imagined_successes"] == 2  # threshold 0
    # Demonstrations are the episodes that end in success: the weak policy's and the real-demos arm's.
    assert report["demonstrations"] == sorted(e for e, ok in ends_in_success.items() if ok)
    assert all(ends_in_success[e] for e in report["weak_episodes"] + results["after_real_demos"]["episodes"])
    assert not set(report["weak_episodes"]) & set(results["after_real_demos"]["episodes"])
    for name, r in results.items():
        assert r["n"] == 2 and len(r["per_episode"]) == 2
        if name != "before":
            assert r["finetune_episodes"] == (1 if name == "after_demos_only" else 2)
            assert r["change_interval"][0] <= r["change"] <= r["change_interval"][1]
    # Each arm's policy is its candidate (steps 1 and 2) with the most imagined successes, the later of equals, and
    # its real success is that candidate's.
    for name, r in results.items():
        if name != "before":
            assert set(r["imagined_success_of_candidates"]) == set(r["real_success_of_candidates"]) == {1, 2}
            assert r["checkpoint_step"] == most_imagined_successes(r["imagined_success_of_candidates"])
            assert r["success"] == r["real_success_of_candidates"][r["checkpoint_step"]]
            arm = name.removeprefix("after_")
            assert (tmp_path / "out" / f"selection_{arm}" / "meta" / "imagined.json").exists()
    # Every arm also trains on the weak policy's demonstration (it must not forget it); demos_only on that alone.
    for arm, episodes in [("imagined_successes", 3), ("real_demos", 3), ("demos_only", 1)]:
        data = LeRobotDataset("test/x", root=tmp_path / "out" / f"finetuned_{arm}_data")
        assert data.meta.total_episodes == episodes
    assert json.loads((tmp_path / "results" / "improve_test.json").read_text())["run"] == "test"
    assert "change vs before" in (tmp_path / "results" / "improve_test.md").read_text()
    assert "Candidates of each arm" in (tmp_path / "results" / "improve_test.md").read_text()
    assert report["choice_check"]["candidates"] == 8 and report["choice_check"]["mean_regret"] >= 0


def test_imagination_chooses_the_candidate_with_the_most_successes_the_later_of_equals():
    from eval.improve import choice_check, most_imagined_successes

    assert most_imagined_successes({250: 0.5, 500: 0.7, 750: 0.7, 1000: 0.6}) == 750
    assert most_imagined_successes({250: 0.9, 500: 0.1}) == 250
    # The check of the choice: imagination ranks arm a's candidates right and arm b's wrong.
    results = {"before": {"success": 0.4},
               "a": {"imagined_success_of_candidates": {1: 0.1, 2: 0.3}, "real_success_of_candidates": {1: 0.2, 2: 0.6},
                     "success": 0.6},
               "b": {"imagined_success_of_candidates": {1: 0.2, 2: 0.1}, "real_success_of_candidates": {1: 0.3, 2: 0.5},
                     "success": 0.3}}
    check = choice_check(results)
    assert check["candidates"] == 4
    assert check["mean_regret"] == pytest.approx(0.1) and check["max_regret"] == pytest.approx(0.2)
    assert check["pearson"] == pytest.approx(np.corrcoef([0.1, 0.3, 0.2, 0.1], [0.2, 0.6, 0.3, 0.5])[0, 1])
    assert choice_check({"before": {"success": 0.4}}) is None


def test_runs_of_one_configuration_pool_into_one_table(tmp_path):
    import json

    from eval.improve_seeds import ImproveSeedsConfig, improve_seeds

    def run(name, before, after):  # successes out of 50 real episodes
        results = {"before": {"success": before / 50, "successes": before, "n": 50},
                   "after_x": {"success": after / 50, "successes": after, "n": 50, "change": (after - before) / 50}}
        (tmp_path / f"improve_{name}.json").write_text(json.dumps({"results": results}))

    run("a", 10, 20)
    run("b", 12, 14)
    pooled = improve_seeds(ImproveSeedsConfig(runs=["a", "b"], name="ab", results_dir=str(tmp_path)))["pooled"]
    assert (pooled["after_x"]["successes"], pooled["after_x"]["n"]) == (34, 100)
    assert pooled["after_x"]["change"] == pytest.approx(0.12)
    assert pooled["after_x"]["change_interval"] == pytest.approx(difference_interval(34, 100, 22, 100))
    assert pooled["after_x"]["per_run"] == [0.4, 0.28]
    assert "| after_x | 0.40 (+20) | 0.28 (+4) | 0.34 |" in (tmp_path / "improve_ab.md").read_text()
    with pytest.raises(FileNotFoundError, match="improve_c.json"):
        improve_seeds(ImproveSeedsConfig(runs=["a", "c"], results_dir=str(tmp_path)))


def test_successes_are_taken_round_robin_over_starts_and_only_from_hard_starts_when_asked():
    from eval.improve import kept_successes

    jobs = [{"episode_index": e, "start": s, "score": p}
            for e, (s, p) in enumerate([(0, 0.9), (0, 0.8), (1, 0.2), (1, 0.7), (2, 0.6), (2, 0.9), (0, 0.7)])]
    # every start's first success (episodes 0, 3, 4), then every start's second (1, 5), then the third (6)
    assert kept_successes(jobs, 0.5) == [0, 3, 4, 1, 5, 6]
    assert kept_successes(jobs, 0.5, hard_starts=[1, 2]) == [3, 4, 5]
    assert kept_successes(jobs, 0.5, hard_starts=[]) == []


def test_hard_starts_are_those_where_the_policy_without_noise_is_judged_to_fail(tiny_world_model_dir, reach_demos,
                                                                                tmp_path):
    # The policy's own rollout from each start, in the world model, judged by the task's state rule: with a
    # threshold no score reaches, every start is hard; with 0, none is.
    from eval.improve import ImproveConfig, load_judge, starts_the_policy_fails
    from worldmodel.sampler import SamplerConfig

    class StandStill:  # a policy: the hand does not move
        def reset(self):
            pass

        def select_action(self, obs):
            return np.zeros((len(obs["observation.state"]), 4), np.float32)

    root, _ = reach_demos
    cfg = ImproveConfig(model=str(tiny_world_model_dir), judge=None, dataset_root=str(root), repo_id="test/reach",
                        task="reach-v3", starts=3, max_episode_steps=2, batch_size=3,
                        sampler=SamplerConfig(steps=1, window=1))
    judge = load_judge(cfg)  # the task's state rule, and its name
    assert starts_the_policy_fails(replace(cfg, threshold=1.01), StandStill(), *judge, tmp_path / "a") == {0, 1, 2}
    assert starts_the_policy_fails(replace(cfg, threshold=0.0), StandStill(), *judge, tmp_path / "b") == set()
    assert (tmp_path / "b" / "imagined_noise_free" / "meta" / "imagined.json").exists()  # a rerun resumes from it
