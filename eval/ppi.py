"""How sure to be: each policy's real success from a few real trials plus many imagined ones, checked against a
large real-only ground truth, and a trust signal per imagined rollout.

    python -m eval.ppi --rank.model=pretrained/metaworld_push/tiny --rank.judge=pretrained/metaworld_push/judge

Per policy of the MetaWorld family:
  1. `rank.episodes` episodes in the simulator and in imagination from the same initial states (eval.rank). The
     estimator sees the real outcome of only the first `paired_real` of them (the real trials a user would run);
     the others count as imagined episodes without a real twin.
  2. `ground_truth_episodes` more real episodes from other seeds (no cameras: the family reads the state), whose
     success rate is the truth the intervals are checked against.
  3. A second imagined sample of the first `trust_episodes` episodes (another noise seed), for the trust signal.
Estimates (worldmodel/estimate.py): prediction-powered, real-only and imagined-only intervals, effective real
trials, coverage of the ground truth, which policy is surely better than which. Trust signals: the AUROC of each
candidate score for "this imagined episode ends unlike its real twin", and the ranking after dropping the least
trusted rollouts.

Writes <results_dir>/ppi_<run>.json, .md; <output_dir>/report.html (every policy's intervals in one plot) and
<output_dir>/eval_info.json (lerobot-eval's shape, with the estimates added per policy). Every stage resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.rank import RankConfig, camera_names, load_finished, rank, real_episode
from eval.report import write_result
from policies.metaworld import FAMILY, make_family
from worldmodel.atomic import write_json_atomic, write_text_atomic
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.estimate import SuccessEstimate, compare_policies
from worldmodel.metrics import auroc, ranking_metrics
from worldmodel.model import VideoDiT

# The imagined outcome of an episode, two ways: the judge's verdict on the frames, the simulator's success rule on
# the predicted state (eval.rank records both).
SOURCES = {"judge": "imagined_success", "state_rule": "state_rule_on_imagined"}


@dataclass
class PPIConfig:
    rank: RankConfig = field(default_factory=lambda: RankConfig(episodes=45))
    paired_real: int = 5  # real outcomes the estimator sees per policy (the first episodes)
    ground_truth_episodes: int = 100
    ground_truth_seed: int = 100_000  # ground-truth episode e starts from env seed ground_truth_seed + e
    trust_episodes: int = 20  # episodes per policy imagined a second time (sample disagreement)
    drop_fraction: float = 0.2  # the least trusted share of imagined rollouts dropped before ranking
    confidence: float = 0.95
    run: str = "cpu_tiny"
    output_dir: str = "outputs/ppi"
    results_dir: str = "eval/results"

    def __post_init__(self):
        if not 0 < self.paired_real < self.rank.episodes:
            raise ValueError(f"paired_real: expected between 1 and rank.episodes - 1 = {self.rank.episodes - 1} "
                             f"(the rest are the imagined-only episodes), got {self.paired_real}")
        if not 0 < self.trust_episodes <= self.rank.episodes:
            raise ValueError(f"trust_episodes: expected between 1 and rank.episodes = {self.rank.episodes}, "
                             f"got {self.trust_episodes}")


# -- data ---------------------------------------------------------------------------------------------------------
def imagined_samples(cfg: PPIConfig, out: Path) -> tuple[dict, dict]:
    """eval.rank twice (both resume): all episodes, and a second imagined sample of the first trust_episodes.
    -> (policy, episode) -> record, for each."""
    first = replace(cfg.rank, run=cfg.run, output_dir=str(out / "imagined"), results_dir=str(out), resume=True)
    second = replace(first, run=f"{cfg.run}_second_sample", episodes=cfg.trust_episodes,
                     noise_seed=cfg.rank.noise_seed + 1, output_dir=str(out / "second_sample"), videos_per_policy=0)
    rank(first)
    rank(second)
    return (load_finished(Path(first.output_dir) / "episodes.jsonl", True),
            load_finished(Path(second.output_dir) / "episodes.jsonl", True))


def ground_truth(cfg: PPIConfig, names: list[str], out: Path) -> dict:
    """policy -> real 0/1 outcomes of ground_truth_episodes episodes (resumes from ground_truth.jsonl)."""
    path = out / "ground_truth.jsonl"
    done = load_finished(path, True)
    pending = [(n, e) for n in names for e in range(cfg.ground_truth_episodes) if (n, e) not in done]
    if pending:
        model_cfg = VideoDiT.load_config(cfg.rank.model)["config"]
        stride = model_cfg["frame_stride"]
        env = MetaWorldMultiViewEnv(MetaWorldConfig(
            task=cfg.rank.task, cameras=camera_names(model_cfg["camera_keys"]), image_size=model_cfg["image_size"],
            max_episode_steps=cfg.rank.max_episode_steps))
        with open(path, "a") as f:
            for name, e in tqdm(pending, desc="ground-truth real episodes", unit="episode"):
                _, _, flags, _, _ = real_episode(env, make_family(cfg.rank.task, names=[name])[0],
                                                 cfg.ground_truth_seed + e, cfg.rank.max_episode_steps, stride,
                                                 keep_frames=False, render=False)
                record = {"policy": name, "episode": e, "real_success": bool(cfg.rank.success(flags))}
                f.write(json.dumps(record) + "\n")
                f.flush()
                done[(name, e)] = record
        env.close()
    return {n: np.array([done[(n, e)]["real_success"] for e in range(cfg.ground_truth_episodes)], float)
            for n in names}


# -- estimates ----------------------------------------------------------------------------------------------------
def estimates(cfg: PPIConfig, names: list[str], episodes: dict, truth: dict, source: str) -> dict:
    """Per policy: the estimate from paired_real real trials + every imagined episode, coverage of the truth."""
    E, n = cfg.rank.episodes, cfg.paired_real
    key = SOURCES[source]
    per_policy, fitted = [], []
    for name in names:
        records = [episodes[(name, e)] for e in range(E)]
        real = [r["real_success"] for r in records[:n]]
        imagined = [r[key] for r in records]
        estimate = SuccessEstimate(real, imagined[:n], imagined[n:], confidence=cfg.confidence)
        g = float(truth[name].mean())
        row = {"name": name, **estimate.to_dict(), "ground_truth": g,
               "covered": {"estimate": estimate.low <= g <= estimate.high,
                           "real_only": estimate.real_only[1] <= g <= estimate.real_only[2],
                           "imagined_only": estimate.imagined_only[1] <= g <= estimate.imagined_only[2]}}
        per_policy.append(row)
        fitted.append(estimate)
    comparison = compare_policies(names, fitted)
    truth_rates = [row["ground_truth"] for row in per_policy]
    return {"policies": per_policy, "comparison": comparison,
            "coverage": {k: float(np.mean([row["covered"][k] for row in per_policy]))
                         for k in ("estimate", "real_only", "imagined_only")},
            "mean_width": {k: float(np.mean([row[k]["high"] - row[k]["low"] for row in per_policy]))
                           for k in ("estimate", "real_only", "imagined_only")},
            "mean_effective_real_trials": float(np.mean([row["effective_real_trials"] for row in per_policy])),
            "ranking_vs_truth": {k: ranking_metrics(truth_rates, [row[k]["value"] for row in per_policy])
                                 for k in ("estimate", "real_only", "imagined_only")},
            "surely_ordered_pairs": surely_ordered_pairs(comparison, truth_rates)}


def surely_ordered_pairs(comparison: dict, truth_rates: list[float]) -> dict:
    """How many ordered pairs the comparison calls 'surely better', and how many of those the truth contradicts."""
    better = np.asarray(comparison["surely_better"])
    truth = np.asarray(truth_rates)
    wrong = better & (truth[:, None] < truth[None, :])
    return {"claimed": int(better.sum()), "contradicted_by_truth": int(wrong.sum())}


# -- trust signals ------------------------------------------------------------------------------------------------
def trust_scores(records: list[dict], second: list[dict | None]) -> dict:
    """Candidate scores (higher: trust less) per episode, none using the real twin."""
    probability = np.array([r["imagined_success_probability"] for r in records])
    scores = {"judge_uncertainty": 1 - np.abs(2 * probability - 1),
              "judge_vs_state_rule": np.array([r["imagined_success"] != r["state_rule_on_imagined"]
                                               for r in records], float),
              "sample_disagreement": np.array([np.nan if s is None else float(r["imagined_success"] !=
                                                                              s["imagined_success"])
                                               for r, s in zip(records, second)])}
    return scores


def trust(cfg: PPIConfig, names: list[str], episodes: dict, second: dict, truth: dict) -> dict:
    """AUROC of every candidate for 'the imagined episode ends unlike its real twin' (on all paired episodes, and on
    those with a second sample, where every candidate exists), and the ranking after dropping the least trusted."""
    keys = [(n, e) for n in names for e in range(cfg.rank.episodes)]
    records = [episodes[k] for k in keys]
    scores = trust_scores(records, [second.get(k) for k in keys])
    wrong = np.array([r["imagined_success"] != r["real_success"] for r in records])
    both = np.array([k in second for k in keys])
    table = {name: {"auroc_all": None if np.isnan(s).any() else auroc(wrong, s),
                    "auroc_common": auroc(wrong[both], s[both])} for name, s in scores.items()}
    best = max(table, key=lambda name: table[name]["auroc_common"])
    return {"wrong_share": float(wrong.mean()), "episodes_all": len(records), "episodes_common": int(both.sum()),
            "candidates": table, "best": best,
            "ranking_after_drop": ranking_after_drop(cfg, names, keys, records, scores[best], both, truth)}


def ranking_after_drop(cfg: PPIConfig, names, keys, records, score, both, truth) -> dict:
    """Imagined success per policy on the episodes with a second sample, before and after dropping the
    drop_fraction least trusted of them, ranked against the ground truth."""
    kept_all = both.copy()
    order = np.argsort(-np.where(both, score, -np.inf), kind="stable")  # least trusted first
    kept_all[order[:int(round(cfg.drop_fraction * both.sum()))]] = False
    truth_rates = [float(truth[n].mean()) for n in names]
    out = {}
    for label, kept in (("all", both), ("trusted", kept_all)):
        rates = []
        for name in names:
            mine = [r["imagined_success"] for k, r, keep in zip(keys, records, kept) if keep and k[0] == name]
            rates.append(float(np.mean(mine)) if mine else float("nan"))
        out[label] = {"imagined_success": dict(zip(names, rates)), "kept": int(kept.sum()),
                      **ranking_metrics(truth_rates, np.nan_to_num(rates, nan=0.0))}
    return out


# -- reports ------------------------------------------------------------------------------------------------------
def interval_text(t: dict) -> str:
    return f"{t['value']:.2f} [{t['low']:.2f}, {t['high']:.2f}]"


def ranking_text(metrics: dict) -> str:
    if np.isnan(metrics["pearson"]):  # a constant vector has no correlation
        return (f"Pearson and Spearman undefined (every policy gets the same imagined success), MMRV "
                f"{metrics['mmrv']:.3f}")
    return f"Pearson {metrics['pearson']:.3f}, Spearman {metrics['spearman']:.3f}, MMRV {metrics['mmrv']:.3f}"


def markdown(cfg: PPIConfig, result: dict) -> list[str]:
    lines = [f"# Real success from {cfg.paired_real} real trials + imagination: {cfg.run}", "",
             f"Model `{cfg.rank.model}`, judge `{cfg.rank.judge}`; {len(result['policies'])} policies; per policy "
             f"{cfg.paired_real} real episodes with imagined twins, {cfg.rank.episodes - cfg.paired_real} more imagined "
             f"episodes, and {cfg.ground_truth_episodes} real-only episodes (other seeds) as the ground truth. "
             f"Success rule, real and imagined alike: {result['success_rule']}. {int(100 * cfg.confidence)}% "
             "intervals (worldmodel/estimate.py: prediction-powered with exact small-sample bounds; Clopper-Pearson "
             "for real-only and imagined-only)."]
    for source, block in result["estimates"].items():
        lines += ["", f"## Imagined outcome from the {source.replace('_', ' ')}", "",
                  "| policy | ground truth | estimate | real-only | imagined-only | effective real trials | method |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {r['name']} | {r['ground_truth']:.2f} | {interval_text(r['estimate'])} | "
                  f"{interval_text(r['real_only'])} | {interval_text(r['imagined_only'])} | "
                  f"{r['effective_real_trials']:.1f} | {r['method'].split(' (')[0]} |" for r in block["policies"]]
        cov, width, vs = block["coverage"], block["mean_width"], block["ranking_vs_truth"]
        pairs = block["surely_ordered_pairs"]
        lines += ["", f"Coverage of the ground truth: estimate {cov['estimate']:.2f}, real-only {cov['real_only']:.2f}, "
                  f"imagined-only {cov['imagined_only']:.2f}; mean width {width['estimate']:.2f} / "
                  f"{width['real_only']:.2f} / {width['imagined_only']:.2f}; mean effective real trials "
                  f"{block['mean_effective_real_trials']:.1f} (of {cfg.paired_real} run). Spearman with the truth: "
                  f"estimate {vs['estimate']['spearman']:.2f}, real-only {vs['real_only']['spearman']:.2f}, "
                  f"imagined-only {vs['imagined_only']['spearman']:.2f}. Pairs called surely better: "
                  f"{pairs['claimed']}, contradicted by the truth: {pairs['contradicted_by_truth']}.", "",
                  "Ranking to believe (equal ranks: the data cannot separate them): "
                  + ", ".join(f"{r['rank']}. {r['name']}" for r in block["comparison"]["ranking"]) + "."]
    t = result["trust"]
    lines += ["", "## Trust signal per imagined rollout", "",
              f"AUROC for \"the imagined episode ends unlike its real twin\" ({t['wrong_share']:.2f} of "
              f"{t['episodes_all']} paired episodes do); 'common': the {t['episodes_common']} episodes with a second "
              "imagined sample, where every candidate exists.", "",
              "| candidate | AUROC (all) | AUROC (common) |", "| --- | ---: | ---: |"]
    for name, row in t["candidates"].items():
        all_text = "-" if row["auroc_all"] is None else f"{row['auroc_all']:.3f}"
        lines.append(f"| {name} | {all_text} | {row['auroc_common']:.3f} |")
    drop = t["ranking_after_drop"]
    lines += ["", f"Best: {t['best']}. Ranking against the ground truth on the common episodes: all "
              f"{drop['all']['kept']} rollouts {ranking_text(drop['all'])}; after dropping the "
              f"{int(100 * cfg.drop_fraction)}% least trusted ({drop['trusted']['kept']} kept) "
              f"{ranking_text(drop['trusted'])}.",
              "", f"`{result['command']}` ({result['seconds']:.0f} s)."]
    return lines


def intervals_svg(rows: list[dict], width: int = 640, row_height: int = 26) -> str:
    """Every policy's intervals on one axis: real-only (grey), imagined-only (blue), estimate (red), truth (black)."""
    pad, label = 20, 150
    inner = width - label - 2 * pad
    height = pad * 2 + row_height * len(rows) + 20

    def x(v):
        return label + pad + v * inner

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{x(tick):.1f}" y1="{pad}" x2="{x(tick):.1f}" y2="{height - 20}" stroke="#eee"/>'
                     f'<text x="{x(tick):.1f}" y="{height - 6}" text-anchor="middle">{tick}</text>')
    for i, r in enumerate(rows):
        y = pad + i * row_height + row_height / 2
        parts.append(f'<text x="{label}" y="{y + 4:.1f}" text-anchor="end">{r["name"]}</text>')
        for offset, key, color in ((-7, "real_only", "#888"), (0, "imagined_only", "#2e86c1"), (7, "estimate", "#c0392b")):
            t = r[key]
            parts.append(f'<line x1="{x(t["low"]):.1f}" y1="{y + offset:.1f}" x2="{x(t["high"]):.1f}" y2="{y + offset:.1f}" '
                         f'stroke="{color}" stroke-width="3"><title>{key} {interval_text(t)}</title></line>'
                         f'<circle cx="{x(t["value"]):.1f}" cy="{y + offset:.1f}" r="3" fill="{color}"/>')
        parts.append(f'<circle cx="{x(r["ground_truth"]):.1f}" cy="{y:.1f}" r="4" fill="none" stroke="#000">'
                     f'<title>ground truth {r["ground_truth"]:.2f}</title></circle>')
    return "".join(parts) + "</svg>"


def write_report(path: Path, cfg: PPIConfig, result: dict, lines: list[str]) -> None:
    plots = "".join(f"<h2>Imagined outcome from the {source.replace('_', ' ')}</h2>{intervals_svg(block['policies'])}"
                    for source, block in result["estimates"].items())
    text = "".join(f"<p>{line}</p>" for line in lines[2:3])
    write_text_atomic(path, f"""<!doctype html><html><head><meta charset="utf-8"><title>worldmodel success estimates
{cfg.run}</title><style>body{{font-family:sans-serif;margin:2em}}</style></head><body>
<h1>Real success from {cfg.paired_real} real trials + imagination ({cfg.run})</h1>{text}
<p>Per policy: real-only interval (grey), imagined-only (blue), prediction-powered estimate (red), ground truth from
{cfg.ground_truth_episodes} real episodes (black ring).</p>{plots}<p>Tables: <code>{cfg.results_dir}/ppi_{cfg.run}.md</code></p>
</body></html>""")


def write_eval_info(out: Path, result: dict) -> None:
    """eval.rank's eval_info.json (lerobot-eval's shape), each policy's group with the estimates added."""
    info = json.loads((out / "imagined" / "eval_info.json").read_text())
    for row in result["estimates"]["judge"]["policies"]:
        info["per_group"][row["name"]]["real_success_estimate"] = {
            k: row[k] for k in ("estimate", "real_only", "imagined_only", "method", "effective_real_trials")}
    write_json_atomic(out / "eval_info.json", info)


def ppi(cfg: PPIConfig) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = cfg.rank.policies or list(FAMILY)
    episodes, second = imagined_samples(cfg, out)
    truth = ground_truth(cfg, names, out)
    result = {"run": cfg.run, "policies": names, "success_rule": cfg.rank.success.describe(),
              "estimates": {source: estimates(cfg, names, episodes, truth, source) for source in SOURCES},
              "trust": trust(cfg, names, episodes, second, truth), "config": asdict(cfg),
              "seconds": time.time() - started,
              "command": f"python -m eval.ppi --rank.model={cfg.rank.model} --rank.judge={cfg.rank.judge} "
                         f"--rank.episodes={cfg.rank.episodes} --paired_real={cfg.paired_real} "
                         f"--ground_truth_episodes={cfg.ground_truth_episodes} --trust_episodes={cfg.trust_episodes} "
                         f"--run={cfg.run} --output_dir={cfg.output_dir}"}
    lines = markdown(cfg, result)
    write_result(Path(cfg.results_dir) / f"ppi_{cfg.run}.json", result, lines)
    write_report(out / "report.html", cfg, result, lines)
    write_eval_info(out, result)
    return result


def main() -> None:
    import draccus

    ppi(draccus.parse(PPIConfig))


if __name__ == "__main__":
    main()
