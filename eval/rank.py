"""Rank policies inside the world model and check the ranking against the real simulator.

    python -m eval.rank --model=outputs/train/tiny_cpu/model --judge=outputs/judge/metaworld_push

For each policy of the MetaWorld family (policies/metaworld.py): `episodes` real episodes in the
simulator and `episodes` imagined ones from the same initial observations (same env seeds), all
policies' imagined rollouts batched together. Success in imagination is the judge's verdict on the
last frames; the judge is also run on the real episodes' last frames (its accuracy on real episodes).

Writes
    <results_dir>/rank_<run>.json, .md   policies (real vs imagined success), Pearson, Spearman, MMRV
                                         with bootstrap intervals, judge accuracy, model/judge/sampler
    <output_dir>/report.html             scatter plot, table, side-by-side real | imagined videos
    <output_dir>/eval_info.json          lerobot-eval's multi-task shape, one group per policy (imagined)
    <output_dir>/episodes.jsonl          every finished (policy, episode): `--resume=true` skips them
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.report import write_result
from policies.metaworld import FAMILY, make_family
from worldmodel.atomic import write_json_atomic, write_text_atomic
from worldmodel.envs.imagined import ImaginedVectorEnv
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.judge import StateDistanceJudge, SuccessJudge, judge_window
from worldmodel.metrics import SuccessRule, bootstrap_ranking_metrics
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


@dataclass
class RankConfig:
    model: str = "outputs/train/tiny_cpu/model"
    judge: str | None = "outputs/judge/metaworld_push"  # a SuccessJudge folder; None: the state rule
    task: str = "push-v3"
    policies: list[str] | None = None  # names from policies.metaworld.FAMILY; None: all
    episodes: int = 20
    max_episode_steps: int = 120
    seed: int = 1000  # episode e of every policy starts from env seed `seed + e`
    # Imagination's noise is drawn from seed + the batch's offset + NOISE_STRIDE x noise_seed: another value draws
    # another imagined sample of the same episodes (eval.ppi's trust signal compares two).
    noise_seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    batch_size: int = 64  # imagined rollouts per WorldModel batch (pairs of all policies mixed)
    videos_per_policy: int = 2
    n_boot: int = 1000
    run: str = "cpu"
    output_dir: str = "outputs/rank"
    results_dir: str = "eval/results"
    resume: bool = False
    device: str | None = None
    # When an episode is a success, from its per-frame flags: the same rule for real and imagined episodes.
    success: SuccessRule = field(default_factory=SuccessRule)


NOISE_STRIDE = 1_000_003


def camera_names(camera_keys: list[str]) -> list[str]:
    return [k.removeprefix("observation.images.") for k in camera_keys]


def load_judge(cfg: RankConfig):
    if cfg.judge is None:
        rule = StateDistanceJudge.for_task(cfg.task)
        return rule, rule.describe()
    judge = SuccessJudge.from_pretrained(cfg.judge).eval()
    return judge.probability, f"SuccessJudge {cfg.judge}"


def judge_frames(observations: list[dict], keys: list[str], k: int):
    """The last k observations -> (1, k, V, 3, H, W) uint8 and (1, k, S)."""
    last = observations[-k:]
    frames = torch.stack([torch.stack([torch.as_tensor(o[key]) for key in keys]) for o in last])
    states = torch.stack([torch.as_tensor(o["observation.state"]) for o in last])
    return frames.permute(0, 1, 4, 2, 3)[None], states[None]


def real_episode(env, policy, seed: int, steps: int, stride: int, keep_frames: bool, render: bool = True,
                 hold_steps: int = 1):
    """One real episode; observations kept every `stride` steps (what the world model would draw). The
    family's policies read the state, so the cameras are rendered only for the kept steps (and never with
    render=False: only the outcome is wanted). The policy reads a fresh observation every `hold_steps` steps and
    the last one in between (`stride`: the loop imagination runs). -> initial observation, kept observations, the
    simulator's success flag at every kept frame, reward sum and max."""
    obs, _ = env.reset(seed=seed)
    policy.reset(seed=seed)
    initial, kept, flags, seen = obs, [obs], [], obs
    reward_sum, reward_max = 0.0, -np.inf
    for t in range(steps):
        if t % hold_steps == 0:
            seen = obs
        step = env.step if render and (t + 1) % stride == 0 else env.step_state_only
        obs, reward, _, _, info = step(policy.select_action(seen)[0])
        reward_sum, reward_max = reward_sum + reward, max(reward_max, reward)
        if (t + 1) % stride == 0:
            kept.append(obs)
            flags.append(bool(info["is_success"]))
    return initial, kept if keep_frames else kept[-2:], flags, reward_sum, reward_max


def side_by_side_gif(real: list[dict], imagined: list[dict], keys: list[str]) -> str:
    """Animated GIF (base64) with every view: real on top, imagined below."""
    from PIL import Image

    frames = []
    for r, i in zip(real, imagined):
        top = np.concatenate([r[k] for k in keys], axis=1)
        bottom = np.concatenate([i[k] for k in keys], axis=1)
        frames.append(Image.fromarray(np.concatenate([top, bottom], axis=0)).resize(
            (top.shape[1] * 2, top.shape[0] * 4), Image.NEAREST))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    return base64.b64encode(buffer.getvalue()).decode()


def scatter_svg(rows: list[dict], size: int = 360) -> str:
    pad = 40
    inner = size - 2 * pad
    parts = [f'<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#888"/>',
             f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#ccc" stroke-dasharray="4"/>',
             f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle">real success</text>',
             f'<text x="12" y="{size / 2}" transform="rotate(-90 12 {size / 2})" text-anchor="middle">imagined success</text>']
    for r in rows:
        x = pad + r["real_success"] * inner
        y = pad + (1 - r["imagined_success"]) * inner
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#c0392b"><title>{r["name"]}</title></circle>')
        parts.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}">{r["name"]}</text>')
    return "".join(parts) + "</svg>"


def load_finished(episodes_file: Path, resume: bool) -> dict:
    """(policy, episode) -> record of every pair a resumed run already finished."""
    if not resume and episodes_file.exists():
        episodes_file.unlink()
    if not episodes_file.exists():
        return {}
    lines = [line for line in episodes_file.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{episodes_file}: line {i + 1} is not JSON; delete the file to start over") from None
            # A hard kill cut the last line short: that pair is rolled out again.
            write_text_atomic(episodes_file, "".join(json.dumps(r) + "\n" for r in records))
    return {(r["policy"], r["episode"]): r for r in records}


def run_real_episodes(cfg: RankConfig, model: VideoDiT, judge, pairs: list, videos: dict) -> dict:
    """Every pending (policy, episode) in the simulator: outcome, rewards, the judge's verdict on its last
    frames, and the initial observation imagination starts from."""
    keys, stride = list(model.cfg.camera_keys), model.cfg.frame_stride
    env = MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=camera_names(model.cfg.camera_keys),
                                                image_size=model.cfg.image_size,
                                                max_episode_steps=cfg.max_episode_steps))
    real = {}
    for name, e in tqdm(pairs, desc="real episodes", unit="episode"):
        policy = make_family(cfg.task, names=[name])[0]
        initial, kept, flags, rsum, rmax = real_episode(env, policy, cfg.seed + e, cfg.max_episode_steps, stride,
                                                        keep_frames=e < cfg.videos_per_policy)
        frames, states = judge_frames(kept, keys, judge_window(judge))
        # The same episode with the policy reading an observation once per world-model frame, as in imagination:
        # the reference that leaves out what the frame rate alone changes (eval.observation_rate).
        _, _, held_flags, _, _ = real_episode(env, policy, cfg.seed + e, cfg.max_episode_steps, stride,
                                              keep_frames=False, render=False, hold_steps=stride)
        real[(name, e)] = {"initial": initial, "success": bool(cfg.success(flags)), "success_frames": flags,
                           "success_same_loop": bool(cfg.success(held_flags)),
                           "reward_sum": rsum, "reward_max": rmax,
                           "judge_on_real": bool(torch.as_tensor(judge(frames, states, cfg.task))[0] >= 0.5)}
        if e < cfg.videos_per_policy:
            videos[(name, e)] = [kept]
    env.close()
    return real


def run_imagined_batch(cfg: RankConfig, model: VideoDiT, judge, batch: list, real: dict, seed: int,
                       keep_video: set) -> tuple[dict, dict, np.ndarray, dict]:
    """One batch of (policy, episode) pairs rolled out together in the world model from their real twins'
    initial observations. -> per-frame success flags (B, frames) of the judge and of the simulator's rule on the
    predicted state, the last info, summed rewards, kept frames per pair."""
    keys, stride, B = list(model.cfg.camera_keys), model.cfg.frame_stride, len(batch)
    world = WorldModel(model, cfg.sampler, batch_size=B, device=cfg.device, seed=seed)
    imagined_env = ImaginedVectorEnv(world, judge, cfg.max_episode_steps, task=cfg.task)
    initial = {k: np.stack([real[p]["initial"][k] for p in batch]) for k in keys + ["observation.state"]}
    obs, _ = imagined_env.reset(options={"observations": initial})
    groups = {}  # policy name -> rows of the batch
    for row, (name, e) in enumerate(batch):
        groups.setdefault(name, []).append(row)
    policies = {name: make_family(cfg.task, names=[name])[0] for name in groups}
    for policy in policies.values():
        policy.reset(seed=seed)
    recorded = {pair: [{k: obs[k][row] for k in obs}] for row, pair in enumerate(batch) if pair in keep_video}
    rewards = np.zeros(B)
    judged, state_rule = [], []  # per frame: the judge's verdict, the simulator's rule on the predicted state
    rule_on_state = StateDistanceJudge.for_task(cfg.task)
    for t in range(cfg.max_episode_steps):
        actions = np.zeros((B, model.cfg.action_dim), np.float32)
        for name, rows in groups.items():
            actions[rows] = policies[name].select_action({k: v[rows] for k, v in obs.items()})
        obs, reward, _, _, info = imagined_env.step(actions)
        rewards += reward
        if (t + 1) % stride == 0:
            judged.append(np.asarray(info["is_success"], bool))
            state_rule.append(np.asarray(rule_on_state(None, obs["observation.state"][:, None])) >= 0.5)
            for row, pair in enumerate(batch):
                if pair in recorded:
                    recorded[pair].append({k: obs[k][row] for k in obs})
    return np.stack(judged, 1), np.stack(state_rule, 1), info, rewards, recorded


def run_imagined_episodes(cfg: RankConfig, model: VideoDiT, judge, pairs: list, real: dict, videos: dict,
                          done: dict, episodes_file: Path) -> None:
    """All pending pairs in imagination, batched across policies; each finished batch is appended to
    `episodes_file` (what `--resume=true` keeps)."""
    for lo in tqdm(range(0, len(pairs), cfg.batch_size), desc="imagined batches", unit="batch"):
        batch = pairs[lo:lo + cfg.batch_size]
        judged, state_rule, info, rewards, recorded = run_imagined_batch(
            cfg, model, judge, batch, real, cfg.seed + lo + NOISE_STRIDE * cfg.noise_seed, set(videos))
        # A second opinion on every imagined episode: the simulator's own success rule applied to the state the
        # model predicted (agreement with the judge says whether frames and state tell the same story). Both go
        # through cfg.success, like the real twin's flags.
        lines = []
        for row, (name, e) in enumerate(batch):
            r = real[(name, e)]
            record = {"policy": name, "episode": e, "seed": cfg.seed + e, "real_success": r["success"],
                      "real_success_same_loop": r["success_same_loop"],
                      "imagined_success": bool(cfg.success(judged[row])),
                      "imagined_success_probability": float(info["success_probability"][row]),
                      "state_rule_on_imagined": bool(cfg.success(state_rule[row])),
                      "real_success_frames": r["success_frames"], "imagined_success_frames": judged[row].tolist(),
                      "state_rule_frames": state_rule[row].tolist(),
                      "judge_on_real": r["judge_on_real"], "real_reward_sum": r["reward_sum"],
                      "imagined_reward_sum": float(rewards[row])}
            lines.append(json.dumps(record) + "\n")
            done[(name, e)] = record
            if (name, e) in recorded:
                videos[(name, e)].append(recorded[(name, e)])
        with open(episodes_file, "a") as f:
            f.write("".join(lines))


def summarize(cfg: RankConfig, names: list, done: dict) -> tuple[list, dict]:
    """Per-policy rows and the ranking metrics (judge, and the success rule on the predicted state)."""
    outcomes = {key: [[done[(n, e)][key] for e in range(cfg.episodes)] for n in names]
                for key in ("real_success", "imagined_success", "state_rule_on_imagined")}
    rows = []
    for i, name in enumerate(names):
        records = [done[(name, e)] for e in range(cfg.episodes)]
        rows.append({"name": name, "n_episodes": len(records),
                     "real_success": float(np.mean(outcomes["real_success"][i])),
                     "imagined_success": float(np.mean(outcomes["imagined_success"][i])),
                     "imagined_success_state_rule": float(np.mean(outcomes["state_rule_on_imagined"][i])),
                     "judge_agreement": float(np.mean([r["judge_on_real"] == r["real_success"] for r in records]))})
    metrics = bootstrap_ranking_metrics(outcomes["real_success"], outcomes["imagined_success"], n_boot=cfg.n_boot)
    state_rule = bootstrap_ranking_metrics(outcomes["real_success"], outcomes["state_rule_on_imagined"],
                                           n_boot=cfg.n_boot)
    records = [done[(n, e)] for n in names for e in range(cfg.episodes)]
    summary = {
        "pearson": metrics["pearson"], "spearman": metrics["spearman"], "mmrv": metrics["mmrv"],
        "judge_accuracy": float(np.mean([r["judge_on_real"] == r["real_success"] for r in records])),
        # On imagined episodes there is no ground truth; agreement with the state rule on the predicted state,
        # and how often an imagined episode ends like its real twin (same start, same policy).
        "judge_agreement_imagined": float(np.mean([r["imagined_success"] == r["state_rule_on_imagined"]
                                                   for r in records])),
        "episode_agreement": float(np.mean([r["imagined_success"] == r["real_success"] for r in records])),
        "state_rule": {"pearson": state_rule["pearson"], "spearman": state_rule["spearman"], "mmrv": state_rule["mmrv"],
                       "episode_agreement": float(np.mean([r["state_rule_on_imagined"] == r["real_success"]
                                                           for r in records]))},
        "same_loop": same_loop_summary(cfg, names, done),
    }
    for row in rows:
        row["real_success_same_loop"] = (float(np.mean([done[(row["name"], e)]["real_success_same_loop"]
                                                        for e in range(cfg.episodes)]))
                                         if summary["same_loop"] else None)
    return rows, summary


def same_loop_summary(cfg: RankConfig, names: list, done: dict) -> dict | None:
    """The imagined outcomes scored against real episodes run in imagination's loop (an observation per frame):
    the world model's own part of the gap. None when some records come from a run before this reference."""
    records = [done[(n, e)] for n in names for e in range(cfg.episodes)]
    if not all("real_success_same_loop" in r for r in records):
        return None
    real = [[done[(n, e)]["real_success_same_loop"] for e in range(cfg.episodes)] for n in names]
    summary = {}
    for key, name in (("imagined_success", "judge"), ("state_rule_on_imagined", "state_rule")):
        imagined = [[done[(n, e)][key] for e in range(cfg.episodes)] for n in names]
        metrics = bootstrap_ranking_metrics(real, imagined, n_boot=cfg.n_boot)
        summary[name] = {"pearson": metrics["pearson"], "spearman": metrics["spearman"], "mmrv": metrics["mmrv"],
                         "episode_agreement": float(np.mean([r[key] == r["real_success_same_loop"] for r in records]))}
    return summary


def markdown(cfg: RankConfig, judge_name: str, rows: list, result: dict) -> tuple[list[str], list[str]]:
    """The results table and the summary sentences (judge, state rule, and the same-loop reference if measured)."""
    def fmt(m):
        return f"{m['value']:.3f} [{m['interval'][0]:.3f}, {m['interval'][1]:.3f}]" if m["interval"] else f"{m['value']}"

    sr, same = result["state_rule"], result["same_loop"]
    columns = [("real success", "real_success")] + ([("real, imagination's loop", "real_success_same_loop")] if same
                                                     else [])
    columns += [("imagined success (judge)", "imagined_success"),
                ("imagined success (state rule)", "imagined_success_state_rule"),
                ("judge agreement (real)", "judge_agreement")]
    table = ["| policy | " + " | ".join(title for title, _ in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    table += ["| " + " | ".join([r["name"]] + [f"{r[key]:.2f}" for _, key in columns]) + " |" for r in rows]
    summary = [f"Pearson r {fmt(result['pearson'])}, Spearman rho {fmt(result['spearman'])}, "
               f"MMRV {fmt(result['mmrv'])} (95% bootstrap intervals over episodes); judge accuracy on real "
               f"episodes {result['judge_accuracy']:.2f}; on imagined episodes the judge agrees with the success "
               f"rule on the predicted state {result['judge_agreement_imagined']:.2f} of the time; imagined and "
               f"real twin episodes end alike {result['episode_agreement']:.2f} of the time. "
               f"{cfg.episodes} episodes per policy.",
               f"With the success rule on the predicted state instead of the judge: Pearson r {fmt(sr['pearson'])}, "
               f"Spearman rho {fmt(sr['spearman'])}, MMRV {fmt(sr['mmrv'])}; imagined and real twins end alike "
               f"{sr['episode_agreement']:.2f} of the time."]
    if same:
        summary.append(
            "Against real episodes in imagination's loop (the policy reads an observation once per world-model frame, "
            "eval.observation_rate): by the judge Pearson r " + fmt(same["judge"]["pearson"]) + ", Spearman rho "
            + fmt(same["judge"]["spearman"]) + ", MMRV " + fmt(same["judge"]["mmrv"]) + f", twins end alike "
            f"{same['judge']['episode_agreement']:.2f}; by the state rule Pearson r {fmt(same['state_rule']['pearson'])}"
            f", Spearman rho {fmt(same['state_rule']['spearman'])}, MMRV {fmt(same['state_rule']['mmrv'])}, twins "
            f"end alike {same['state_rule']['episode_agreement']:.2f}.")
    page = ([f"# Policy ranking in imagination: {cfg.run}", "", f"Model `{cfg.model}`, judge: {judge_name}. "
             f"Success rule, for real and imagined episodes alike: {cfg.success.describe()} (one flag per "
             "world-model frame: the simulator's for real episodes, the judge's or the state rule's for imagined ones).",
             ""]
            + table + [""] + [line for sentence in summary for line in (sentence, "")] + [f"`{result['command']}`"])
    return page, summary


def write_eval_info(path: Path, names: list, done: dict, episodes: int, seconds: float) -> None:
    """lerobot-eval's multi-task shape, one group per policy (imagined episodes)."""
    per_task, per_group = [], {}
    for name in names:
        records = [done[(name, e)] for e in range(episodes)]
        per_episode = [{"episode_ix": r["episode"], "sum_reward": r["imagined_reward_sum"],
                        "max_reward": float(r["imagined_success"]), "success": r["imagined_success"],
                        "seed": r["seed"]} for r in records]
        aggregated = {"avg_sum_reward": float(np.mean([p["sum_reward"] for p in per_episode])),
                      "avg_max_reward": float(np.mean([p["max_reward"] for p in per_episode])),
                      "pc_success": 100 * float(np.mean([p["success"] for p in per_episode])),
                      "n_episodes": len(per_episode), "video_paths": []}
        per_task.append({"task_group": name, "task_id": 0, "metrics": {"per_episode": per_episode,
                                                                        "aggregated": aggregated}})
        per_group[name] = aggregated
    n = len(names) * episodes
    overall = {"avg_sum_reward": float(np.mean([g["avg_sum_reward"] for g in per_group.values()])),
               "avg_max_reward": float(np.mean([g["avg_max_reward"] for g in per_group.values()])),
               "pc_success": float(np.mean([g["pc_success"] for g in per_group.values()])),
               "n_episodes": n, "eval_s": seconds, "eval_ep_s": seconds / max(1, n), "video_paths": []}
    write_json_atomic(path, {"per_task": per_task, "per_group": per_group, "overall": overall})


def write_report(path: Path, cfg: RankConfig, judge_name: str, keys: list, rows: list, summary: list,
                 videos: dict, done: dict) -> None:
    """The HTML page: scatter plot, table, side-by-side real | imagined videos."""
    clips = []
    for (name, e), (real_frames, *imagined) in sorted(videos.items()):
        if imagined:
            gif = side_by_side_gif(real_frames, imagined[0], keys)
            r = done[(name, e)]
            clips.append(f'<figure><img src="data:image/gif;base64,{gif}"/><figcaption>{name}, episode {e}: '
                         f'real {"success" if r["real_success"] else "failure"}, imagined '
                         f'{"success" if r["imagined_success"] else "failure"} (top real, bottom imagined)'
                         f'</figcaption></figure>')
    html_table = "".join(f"<tr><td>{r['name']}</td><td>{r['real_success']:.2f}</td><td>{r['imagined_success']:.2f}"
                         f"</td><td>{r['judge_agreement']:.2f}</td></tr>" for r in rows)
    write_text_atomic(path, f"""<!doctype html><html><head><meta charset="utf-8"><title>worldmodel ranking
{cfg.run}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:right}}
figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>Policy ranking in imagination ({cfg.run})</h1><p>Model <code>{cfg.model}</code>; judge: {judge_name};
success rule (real and imagined alike): {cfg.success.describe()};
{cfg.episodes} episodes per policy of {cfg.max_episode_steps} steps.</p>{''.join(f'<p>{sentence}</p>' for sentence in summary)}
{scatter_svg(rows)}<table><tr><th>policy</th><th>real</th><th>imagined</th><th>judge agreement</th></tr>{html_table}
</table><h2>Real vs imagined</h2>{''.join(clips)}</body></html>""")


def rank(cfg: RankConfig) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    episodes_file = out / "episodes.jsonl"
    done = load_finished(episodes_file, cfg.resume)
    model = VideoDiT.from_pretrained(cfg.model)
    judge, judge_name = load_judge(cfg)
    names = cfg.policies or list(FAMILY)
    pairs = [(p, e) for p in names for e in range(cfg.episodes) if (p, e) not in done]
    videos: dict[tuple[str, int], list] = {}  # (policy, episode) -> [real frames, imagined frames]

    real = run_real_episodes(cfg, model, judge, pairs, videos)
    run_imagined_episodes(cfg, model, judge, pairs, real, videos, done, episodes_file)
    rows, summary = summarize(cfg, names, done)
    result = {
        "run": cfg.run, "policies": rows, **summary,
        "model": {"path": cfg.model, "preset": model.cfg.preset, "image_size": model.cfg.image_size,
                  "camera_keys": list(model.cfg.camera_keys), "frame_stride": model.cfg.frame_stride},
        "judge": judge_name, "sampler": asdict(cfg.sampler), "episodes_per_policy": cfg.episodes,
        "max_episode_steps": cfg.max_episode_steps, "seed": cfg.seed, "seconds": time.time() - started,
        "success_rule": {"last_frames": cfg.success.last_frames, "description": cfg.success.describe()},
        "command": "python -m eval.rank " + " ".join(f"--{k}={v}" for k, v in asdict(cfg).items()
                                                     if k not in ("sampler", "success") and v is not None)
                   + f" --success.last_frames={cfg.success.last_frames}",
    }
    page, sentences = markdown(cfg, judge_name, rows, result)
    write_result(Path(cfg.results_dir) / f"rank_{cfg.run}.json", result, page)
    write_eval_info(out / "eval_info.json", names, done, cfg.episodes, result["seconds"])
    write_report(out / "report.html", cfg, judge_name, list(model.cfg.camera_keys), rows, sentences, videos, done)
    return result


def main() -> None:
    import draccus

    rank(draccus.parse(RankConfig))


if __name__ == "__main__":
    main()
