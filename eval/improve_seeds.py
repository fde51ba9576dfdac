"""Improvement-loop runs of one configuration with different seeds, side by side and pooled.

    python -m eval.improve_seeds --name=cpu_reach_explore_correlated_1000steps_3seeds \\
        --runs='[cpu_reach_explore_correlated_1000steps,cpu_reach_explore_correlated_1000steps_seed1,...]'

One run of `eval.improve` is one weak policy, one set of imagined rollouts and one fine-tuning of each arm: its
intervals cover the real seeds' luck, not the training's. This reads the runs' JSON results and writes one table:
each arm's change from before in every run, and the pooled success over all runs (every run's real episodes
counted together, with Wilson and Newcombe intervals as in eval.improve). The runs evaluate the same env seeds,
so pooled trials are not fully independent: read the pooled interval as approximate and the per-run columns as
the spread. Results: eval/results/improve_<name>.json and .md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.improve import difference_interval, wilson
from eval.report import write_result


@dataclass
class ImproveSeedsConfig:
    runs: list[str] = field(default_factory=list)  # run names of eval.improve results (improve_<run>.json)
    name: str = "pooled"
    results_dir: str = "eval/results"


def read_runs(cfg: ImproveSeedsConfig) -> list[dict]:
    if len(cfg.runs) < 2:
        raise ValueError(f"runs: expected at least 2 run names, got {cfg.runs}")
    paths = [Path(cfg.results_dir) / f"improve_{run}.json" for run in cfg.runs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"runs: no eval.improve results at {missing}")
    reports = [json.loads(p.read_text()) for p in paths]
    arms = [list(r["results"]) for r in reports]
    if any(a != arms[0] for a in arms):
        raise ValueError(f"runs: the runs have different arms {arms}; pool runs of one configuration")
    return reports


def pooled(reports: list[dict]) -> dict:
    """Per arm: each run's success and change, and the pooled success and change with their intervals."""
    table = {}
    k_before = sum(r["results"]["before"]["successes"] for r in reports)
    n_before = sum(r["results"]["before"]["n"] for r in reports)
    for arm in reports[0]["results"]:
        k = sum(r["results"][arm]["successes"] for r in reports)
        n = sum(r["results"][arm]["n"] for r in reports)
        table[arm] = {"per_run": [r["results"][arm]["success"] for r in reports],
                      "per_run_change": [r["results"][arm].get("change") for r in reports],
                      "successes": k, "n": n, "success": k / n, "interval": wilson(k, n)}
        if arm != "before":
            table[arm]["change"] = k / n - k_before / n_before
            table[arm]["change_interval"] = difference_interval(k, n, k_before, n_before)
    return table


def report_lines(cfg: ImproveSeedsConfig, reports: list[dict], table: dict) -> list[str]:
    runs = " | ".join(f"run {i + 1}" for i in range(len(reports)))
    lines = [f"# Policy improvement from imagined data, {len(reports)} runs pooled: {cfg.name}", "",
             "Runs (weak policy, imagination and fine-tuning each with its own seed): "
             + ", ".join(f"[{run}](improve_{run}.md)" for run in cfg.runs) + ".", "",
             f"| policy | {runs} | pooled success | 95% interval | pooled change (points) | 95% interval |",
             "| --- | " + " | ".join("---:" for _ in reports) + " | ---: | --- | ---: | --- |"]
    for arm, row in table.items():
        per_run = " | ".join(f"{s:.2f}" if c is None else f"{s:.2f} ({100 * c:+.0f})"
                             for s, c in zip(row["per_run"], row["per_run_change"]))
        change = ("", "") if arm == "before" else (
            f"{100 * row['change']:+.0f}",
            f"[{100 * row['change_interval'][0]:+.0f}, {100 * row['change_interval'][1]:+.0f}]")
        lines.append(f"| {arm} | {per_run} | {row['success']:.2f} | [{row['interval'][0]:.2f}, "
                     f"{row['interval'][1]:.2f}] | {change[0]} | {change[1]} |")
    return lines + ["", "The runs evaluate the same real env seeds, so the pooled trials are not fully independent.",
                    "", "Command:", "",
                    f"    python -m eval.improve_seeds --name={cfg.name} --runs='[{','.join(cfg.runs)}]'"
                    + ("" if cfg.results_dir == "eval/results" else f" --results_dir={cfg.results_dir}")]


def improve_seeds(cfg: ImproveSeedsConfig) -> dict:
    reports = read_runs(cfg)
    table = pooled(reports)
    result = {"name": cfg.name, "runs": cfg.runs, "pooled": table}
    write_result(Path(cfg.results_dir) / f"improve_{cfg.name}.json", result, report_lines(cfg, reports, table))
    return result


def main() -> None:
    import draccus

    improve_seeds(draccus.parse(ImproveSeedsConfig))


if __name__ == "__main__":
    main()
