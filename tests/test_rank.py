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
    # The second reference: real episodes in imagination's loop, scored like the first.
    assert set(saved["same_loop"]) == {"judge", "state_rule"} and "episode_agreement" in saved["same_loop"]["judge"]
    assert all(p["real_success_same_loop"] is not None for p in saved["policies"])
    assert "imagination's loop" in (tmp_path / "results" / "rank_tiny.md").read_text()

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

    # One success rule for both worlds: every verdict is the configured rule applied to that episode's per-frame
    # flags (the simulator's for the real twin, the judge's for the imagined one), one flag per world-model frame.
    from worldmodel.metrics import SuccessRule

    rule = SuccessRule()
    frames = 12 // 4  # config's max_episode_steps / the model's frame_stride
    for r in records:
        assert len(r["real_success_frames"]) == len(r["imagined_success_frames"]) == frames
        assert r["real_success"] == bool(rule(r["real_success_frames"]))
        assert r["imagined_success"] == bool(rule(r["imagined_success_frames"]))
        assert r["state_rule_on_imagined"] == bool(rule(r["state_rule_frames"]))
    assert "final frame succeeded" in (tmp_path / "results" / "rank_tiny.md").read_text()
    assert saved["success_rule"]["last_frames"] == 1

    # Records from a run before the same-loop reference: resumed, the report leaves that reference out.
    (tmp_path / "out" / "episodes.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "real_success_same_loop"}) + "\n" for r in records))
    older = rank(config(tiny_world_model_dir, tmp_path, resume=True))
    assert older["same_loop"] is None and older["policies"][0]["real_success_same_loop"] is None


def test_a_hard_kill_of_rank_keeps_finished_pairs_and_the_resumed_run_completes(tiny_world_model_dir, tmp_path):
    """kill -9 at a random moment after the first imagined batch: episodes.jsonl holds whole records only (a torn
    last line is dropped by the resume), and --resume=true finishes every (policy, episode) pair exactly once."""
    import random
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "eval.rank", f"--model={tiny_world_model_dir}", "--judge=null",
           "--policies=[expert,random]", "--episodes=6", "--max_episode_steps=12", "--sampler.steps=2",
           "--sampler.window=2", "--n_boot=20", "--batch_size=2", "--device=cpu", "--videos_per_policy=0",
           "--run=killed", f"--output_dir={out}", f"--results_dir={tmp_path / 'results'}", "--resume=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    episodes = out / "episodes.jsonl"
    while not (episodes.exists() and episodes.read_text().count("\n") >= 2):
        assert proc.poll() is None, "rank exited before its first imagined batch was written"
        assert time.time() < deadline, "no imagined batch in time"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, children included
    proc.wait()
    kept = [json.loads(line) for line in episodes.read_text().splitlines() if line.strip().endswith("}")]
    assert len(kept) >= 2
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    records = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert sorted((r["policy"], r["episode"]) for r in records) == sorted(
        (p, e) for p in ("expert", "random") for e in range(6))  # every pair once
    for record in kept:  # what was finished before the kill is kept, not redone
        assert record in records
    saved = json.loads((tmp_path / "results" / "rank_killed.json").read_text())
    assert all(p["n_episodes"] == 6 for p in saved["policies"])
