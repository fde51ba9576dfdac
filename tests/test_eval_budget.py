"""eval.budget: the cap a fine-tune gets from a total training budget, counted from its starting run's summary."""

import json

import pytest

from eval.budget import BudgetConfig, minutes_left


def write_run(folder, wall_seconds, **summary):
    (folder / "model").mkdir(parents=True)
    (folder / "train_summary.json").write_text(json.dumps({"steps": 100, "wall_seconds": wall_seconds, **summary}))
    return str(folder / "model")


def test_the_cap_is_the_total_less_the_run_behind_less_the_margin_rounded_down(tmp_path):
    stage1 = write_run(tmp_path / "stage1", wall_seconds=5417.94)  # 90.30 min: the shipped stage 1
    assert minutes_left(BudgetConfig(init_from=stage1, total_minutes=120)) == 29.2
    # the cap plus what was behind it, plus the step in flight, stays inside the total
    assert 90.30 + minutes_left(BudgetConfig(init_from=stage1, total_minutes=120)) + 0.2 < 120
    assert minutes_left(BudgetConfig(init_from=stage1, total_minutes=120, margin_minutes=0)) == 29.7  # the cap the shipped stage 2 had
    # a run that was itself a fine-tune counts its whole history
    chained = write_run(tmp_path / "chained", wall_seconds=60.0, wall_seconds_in_all=6000.0)
    assert minutes_left(BudgetConfig(init_from=chained, total_minutes=120)) == 19.5


def test_no_time_left_or_an_unknown_past_is_a_clear_error(tmp_path):
    stage1 = write_run(tmp_path / "stage1", wall_seconds=5417.94)
    with pytest.raises(ValueError, match=r"total_minutes: 90.*already took 90.3 min"):
        minutes_left(BudgetConfig(init_from=stage1, total_minutes=90.5))
    (tmp_path / "bare").mkdir()
    with pytest.raises(ValueError, match=r"init_from: no train_summary.json .*bare"):
        minutes_left(BudgetConfig(init_from=str(tmp_path / "bare"), total_minutes=120))
