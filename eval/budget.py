"""How much of a training budget a fine-tune has left after the run it starts from.

    python -m eval.budget --init_from=outputs/recipe_cpu/train/tiny/model --total_minutes=120

Prints the minutes for the fine-tune's --train.max_minutes (one decimal, rounded down): the total less the
training behind --init_from (its train_summary.json, in the folder or beside it, counted over its own resumes
and fine-tunes the way `wm train`'s wall_seconds_in_all counts them) less a margin. The margin is there because
the time cap is checked after each step: the step in flight and the final save run past it (a stage 2 capped at
exactly what was left ran 4.5 s over). Exits with an error naming the flag when nothing is left or the time
behind --init_from is unknown, before any training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worldmodel.train import initial_training


@dataclass
class BudgetConfig:
    init_from: str = "outputs/recipe_cpu/train/tiny/model"  # the folder the fine-tune starts from
    total_minutes: float = 120.0  # the training budget of both runs together
    margin_minutes: float = 0.5  # kept back for the step in flight and the save after the cap


def minutes_left(cfg: BudgetConfig) -> float:
    """The fine-tune's cap in minutes (rounded down to 0.1)."""
    behind = initial_training(cfg.init_from)
    if behind is None:
        raise ValueError(f"init_from: no train_summary.json in or beside {cfg.init_from}, so the training time "
                         "behind it is unknown")
    used = behind["wall_seconds"] / 60
    left = math.floor(10 * (cfg.total_minutes - used - cfg.margin_minutes) + 1e-9) / 10
    if left <= 0:
        raise ValueError(f"total_minutes: {cfg.total_minutes} leaves nothing for the fine-tune: {cfg.init_from} "
                         f"already took {used:.1f} min (margin {cfg.margin_minutes} min)")
    return left


def main() -> None:
    import draccus

    cfg = draccus.parse(BudgetConfig)
    try:
        print(f"{minutes_left(cfg):.1f}")
    except ValueError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
