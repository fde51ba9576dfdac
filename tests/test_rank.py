"""eval.rank end to end on a tiny config: results, report, lerobot-eval info, reproducible, resumable."""

import json

from eval.rank import RankConfig, rank
from worldmodel.sampler import SamplerConfig


def config(model_dir, tmp_path, **kw):
    return RankConfig(model=str(model_dir), judge=None, policies=["expert", "random"], episodes=2,
                      max_episode_steps=12, sampler=SamplerConfig(steps=2, window=2), n_boot=50, run="tiny",
                      output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"), device="cpu",
                      videos_per_policy=1, **kw)


def test_rank_end_to_end_reproducible_and_resumable(tiny_world_model_dir, tmp_path):
    first = rank(config(tiny_world_model_dir, tmp_path))
    saved = json.loads((tmp_path / "results" / "rank_tiny.json").read_text())
    assert [p["name"] for p in saved["policies"]] == ["expert", "random"]
    for p in saved["policies"]:
        assert set(p) >= {"name", "real_success", "imagined_success", "n_episodes"} and p["n_episodes"] == 2
    for key in ("pearson", "spearman", "mmrv", "judge_accuracy", "model", "judge", "sampler", "episode_agreement"):
        assert key in saved
    # judge=None means the judge *is* the state rule: on imagined episodes they must agree every time.
    assert saved["judge_agreement_imagined"] == 1.0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in html and html.count("data:image/gif;base64") == 2  # one video per policy
    info = json.loads((tmp_path / "out" / "eval_info.json").read_text())
    assert {g["task_group"] for g in info["per_task"]} == {"expert", "random"}
    assert info["overall"]["n_episodes"] == 4 and "pc_success" in info["per_group"]["expert"]
    assert (tmp_path / "results" / "rank_tiny.md").exists()

    # Same seed -> same results.
    again = rank(config(tiny_world_model_dir, tmp_path / "again"))
    assert again["policies"] == first["policies"]

    # Resume: finished (policy, episode) pairs are not run again.
    episodes = (tmp_path / "out" / "episodes.jsonl").read_text()
    resumed = rank(config(tiny_world_model_dir, tmp_path, resume=True))
    assert (tmp_path / "out" / "episodes.jsonl").read_text() == episodes
    assert resumed["policies"] == first["policies"]

    # A hard kill while a batch was being appended leaves a torn last line: resuming redoes that pair only.
    lines = episodes.splitlines(keepends=True)
    (tmp_path / "out" / "episodes.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    healed = rank(config(tiny_world_model_dir, tmp_path, resume=True))
    records = [json.loads(line) for line in (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["policy"], r["episode"]) for r in records) == [("expert", 0), ("expert", 1), ("random", 0),
                                                                     ("random", 1)]
    assert [p["real_success"] for p in healed["policies"]] == [p["real_success"] for p in first["policies"]]
