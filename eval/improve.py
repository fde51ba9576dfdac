"""The policy-improvement loop, measured in the real simulator (Ctrl-World's second result, as a command).

    python -m eval.improve --model=pretrained/metaworld_reach/tiny --judge=null --state_dims='[0,1,2,36,37,38]' \\
        --dataset_root=outputs/recipe_cpu_reach/datasets/metaworld_reach --repo_id=local/metaworld_reach \\
        --task=reach-v3 --starts=144 --run=cpu_reach_hand_goal

1. A weak policy: a state-only LeRobot ACT (`policies.state_policy`, `lerobot-train`) trained on only
   `weak_demos` real demonstrations for `weak_steps` steps: minutes on a CPU.
2. Imagine `starts x seeds_per_start` rollouts of it in the world model, from the first frames of the
   dataset's episodes (optionally after `warmup_random_steps` random actions: a perturbed start; optionally with
   Gaussian `action_noise` on its actions: exploration); `wm imagine` writes every rollout with its judged score
   as a LeRobotDataset (with `hard_starts_only`, only the successes from starts where the policy's own noise-free
   rollout is judged a failure count: what exploration changed). Each rollout's actions are then replayed open
   loop in MetaWorld from the same start, which says how often imagination's verdict (world model and judge
   together) is the simulator's.
3. Fine-tune the weak policy (`--policy.path=weak`) for `finetune_steps` steps, each arm on the same number of
   episodes: a. the imagined successes, b. real demonstrations the weak policy never saw, c. unfiltered
   imagined rollouts (the judge ignored); with `finetune_with_demos`, each together with the weak policy's own
   demonstrations, and d. those demonstrations alone (the control for training longer).
   With `candidate_every`, each arm's policy is chosen without a real trial, as a user of the toolkit would:
   its checkpoints every `candidate_every` steps are rolled out in the world model from first frames none of
   them trained from (`selection_root`) and judged, and the one with the most imagined successes is the arm's.
4. Real success in MetaWorld before and after, every arm on the same `eval_episodes` env seeds, with Wilson
   95% intervals, and the difference after - before with Newcombe's interval (the hybrid score interval for
   a difference of two proportions).
Results: eval/results/improve_<run>.json and .md. Every step's output is kept under `output_dir`, so a rerun
after an interruption reuses what is finished.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.report import write_result
from policies.state_policy import (EpisodeSource, StatePolicyConfig, checkpoint_folder, checkpoint_steps,
                                   load_state_policy, train_state_policy)
from worldmodel.dataset import DatasetConfig
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.imagine import ImagineConfig, Imaginer
from worldmodel.judge import StateDistanceJudge, SuccessJudge
from worldmodel.metrics import pearson
from worldmodel.sampler import SamplerConfig


@dataclass
class ImproveConfig:
    model: str = "pretrained/metaworld_reach/tiny"
    judge: str | None = "pretrained/metaworld_reach/judge"  # a SuccessJudge folder; None: the task's state rule
    dataset_root: str = "outputs/recipe_cpu_reach/datasets/metaworld_reach"
    repo_id: str = "local/metaworld_reach"
    task: str = "reach-v3"
    dataset_seed: int = 0  # the env seed of the dataset's episode 0 (data.metaworld.record: episode i uses seed + i)
    weak_demos: int = 10  # the first episodes that end in success
    state_dims: list[int] | None = None  # the state dimensions the policy reads (None: all; see policies.state_policy)
    weak_steps: int = 1500
    finetune_steps: int = 300
    starts: int = 50
    seeds_per_start: int = 1  # the regressed state makes seeds of one start nearly alike
    # Random actions before the policy starts. 0: start exactly as real episodes do (uniform random actions also
    # half-close the gripper, a start no real episode has).
    warmup_random_steps: int = 0
    # Exploration in imagination: Gaussian noise (std, action units) on every action of the weak policy, so its
    # rollouts try what it would not do and the judge can keep the ones that work.
    action_noise: float = 0.0
    action_noise_correlation: float = 0.0  # from one env step to the next (see worldmodel.imagine)
    # Keep only the judged successes from hard starts: those where the weak policy's own rollout (no exploration
    # noise, one per start, also in imagination) is judged a failure. What exploration changed, not what the policy
    # already does.
    hard_starts_only: bool = False
    # Each arm fine-tunes on its episodes plus the weak policy's own demonstrations (which it must keep), and a
    # `demos_only` arm fine-tunes on those demonstrations alone: the control for the extra training steps.
    finetune_with_demos: bool = True
    # Cosine decay of each arm's learning rate from 1e-4 to this (None: constant, ACT's preset). At a constant rate
    # the real success of one arm swings by 20-50 points from one 250-step checkpoint to the next.
    finetune_final_lr: float | None = None
    # Each arm's checkpoint, chosen without a real trial: a candidate every `candidate_every` fine-tuning steps, each
    # rolled out in the world model (no exploration noise) from the first frames of `selection_starts` episodes of
    # `selection_root` and judged; the arm's policy is the candidate with the most imagined successes (ties: the
    # later). None: the last checkpoint.
    candidate_every: int | None = None
    selection_root: str | None = None  # first frames the policies never trained from (None: the dataset's own)
    selection_repo_id: str = "local/selection_starts"
    selection_starts: int = 48
    # Where the real-demonstrations arm's episodes come from. None: the dataset's demonstrations the weak policy
    # never saw (the arms are then capped at their number); or another recording of the task, whose episodes that
    # end in success are all unseen, so the arms can be compared at more episodes than the dataset has.
    real_demos_root: str | None = None
    real_demos_repo_id: str = "local/real_demos"
    # Also measure every candidate in MetaWorld: how good imagination's choice was (never used to choose).
    real_success_of_candidates: bool = False
    threshold: float = 0.5  # judge probability above which an imagined rollout counts as a success
    eval_episodes: int = 50
    eval_seed: int = 2000
    max_episode_steps: int = 120
    batch_size: int = 50
    finetune_workers: int = 1  # arms fine-tuned at once, each a lerobot-train process with its share of the cores
    device: str = "cpu"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    run: str = "cpu_reach"
    output_dir: str = "outputs/improve"
    results_dir: str = "eval/results"


# -- statistics ------------------------------------------------------------------------------------------------
def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]  # clamped: float error gave -0.00


def difference_interval(k_after: int, n_after: int, k_before: int, n_before: int) -> list[float]:
    """95% interval of p_after - p_before (Newcombe 1998, method 10: from the two Wilson intervals)."""
    p1, p0 = k_after / n_after, k_before / n_before
    (l1, u1), (l0, u0) = wilson(k_after, n_after), wilson(k_before, n_before)
    d = p1 - p0
    return [d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)]


# -- the steps -------------------------------------------------------------------------------------------------
def state_only_simulator(cfg: ImproveConfig) -> MetaWorldMultiViewEnv:
    """The task in MetaWorld, stepped with `step_state_only` (one small camera: nothing is rendered after reset)."""
    return MetaWorldMultiViewEnv(MetaWorldConfig(task=cfg.task, cameras=["corner"], image_size=32,
                                                 max_episode_steps=cfg.max_episode_steps))


def real_success(checkpoint: Path, cfg: ImproveConfig) -> dict:
    """The policy's success in MetaWorld on env seeds eval_seed.. (state only: nothing is rendered after reset)."""
    policy = load_state_policy(str(checkpoint), task=cfg.task)
    env = state_only_simulator(cfg)
    outcomes = []
    for e in tqdm(range(cfg.eval_episodes), desc=f"real episodes of {checkpoint.parent.parent.parent.name}",
                  unit="episode"):
        obs, _ = env.reset(seed=cfg.eval_seed + e)
        policy.reset()
        for _ in range(cfg.max_episode_steps):
            action = np.clip(policy.select_action({"observation.state": obs["observation.state"][None]})[0], -1, 1)
            obs, _, _, _, info = env.step_state_only(action)
        outcomes.append(bool(info["is_success"]))
    env.close()
    k = int(sum(outcomes))
    return {"success": k / len(outcomes), "successes": k, "n": len(outcomes), "interval": wilson(k, len(outcomes)),
            "per_episode": outcomes}


def load_judge(cfg: ImproveConfig):
    if cfg.judge is None:
        rule = StateDistanceJudge.for_task(cfg.task)
        return rule, rule.describe()
    return SuccessJudge.from_pretrained(cfg.judge).eval().probability, cfg.judge


def imagine_config(cfg: ImproveConfig, judge_name: str, **job) -> ImagineConfig:
    """`wm imagine`'s settings for one of the loop's imagination jobs (`job`: what differs from one to another)."""
    return ImagineConfig(model=cfg.model, judge=judge_name, max_episode_steps=cfg.max_episode_steps,
                         threshold=cfg.threshold, batch_size=cfg.batch_size, sampler=cfg.sampler, seed=cfg.seed,
                         device=cfg.device, **job)


def imagine(cfg: ImproveConfig, weak: Path, out: Path, judge, judge_name: str
            ) -> tuple[Path, list[dict], list[int], list[int] | None]:
    """Rollouts of the weak policy in the world model, every one written by `wm imagine`'s Imaginer with the judge's
    score (it resumes from its ledger); -> the dataset, its jobs in episode order, the episodes kept as judged
    successes, and (with `hard_starts_only`) the hard starts they were kept from."""
    policy = load_state_policy(str(weak), task=cfg.task)
    root = out / "imagined"
    ledger = Imaginer(imagine_config(
        cfg, judge_name, policies=["weak"], dataset=DatasetConfig(root=cfg.dataset_root, repo_id=cfg.repo_id),
        output_root=str(root), repo_id="local/imagined", starts=cfg.starts, seeds_per_start=cfg.seeds_per_start,
        warmup_random_steps=cfg.warmup_random_steps, action_noise=cfg.action_noise,
        action_noise_correlation=cfg.action_noise_correlation, keep_failures=True), {"weak": policy}, judge).run()
    jobs = sorted(ledger["jobs"].values(), key=lambda j: j["episode_index"])
    hard = sorted(starts_the_policy_fails(cfg, policy, judge, judge_name, out)) if cfg.hard_starts_only else None
    return root, jobs, kept_successes(jobs, cfg.threshold, hard), hard


def starts_the_policy_fails(cfg: ImproveConfig, policy, judge, judge_name: str, out: Path) -> set[int]:
    """The starts where the policy's own rollout (no exploration noise, one per start) is judged a failure in the
    world model, written by the Imaginer to `out/imagined_noise_free` (its successes only; a rerun resumes)."""
    ledger = Imaginer(imagine_config(
        cfg, judge_name, policies=["weak"], dataset=DatasetConfig(root=cfg.dataset_root, repo_id=cfg.repo_id),
        output_root=str(out / "imagined_noise_free"), repo_id="local/imagined_noise_free", starts=cfg.starts,
        warmup_random_steps=cfg.warmup_random_steps), {"weak": policy}, judge).run()
    return {j["start"] for j in ledger["jobs"].values() if j["score"] < cfg.threshold}


def kept_successes(jobs: list[dict], threshold: float, hard_starts: list[int] | None = None) -> list[int]:
    """The judged successes (of the hard starts, when given), as episode indices in round-robin order over starts
    (every start's first success, then every start's second, ...): an arm capped at n episodes covers as many starts
    as it can, not the first few starts' seeds."""
    kept = [j for j in sorted(jobs, key=lambda j: j["episode_index"]) if j["score"] >= threshold
            and (hard_starts is None or j["start"] in hard_starts)]
    earlier_successes, rank = Counter(), {}
    for j in kept:  # in episode order
        rank[j["episode_index"]] = earlier_successes[j["start"]]
        earlier_successes[j["start"]] += 1
    kept.sort(key=lambda j: (rank[j["episode_index"]], j["start"], j["episode_index"]))
    return [j["episode_index"] for j in kept]


def replay_in_the_simulator(cfg: ImproveConfig, root: Path, repo_id: str, jobs: list[dict]) -> list[bool | None]:
    """Each rollout's actions replayed open loop in MetaWorld from its start: did it really succeed? Start s is the
    dataset's episode s, recorded with env seed `dataset_seed + s` (data.metaworld.record); a rollout whose first
    state is not that reset's state cannot be replayed (None)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rollouts = LeRobotDataset(repo_id, root=root).hf_dataset.with_format("numpy")
    episode, actions = np.asarray(rollouts["episode_index"]), np.asarray(rollouts["action"])
    states = np.asarray(rollouts["observation.state"])
    env = state_only_simulator(cfg)
    outcomes = []
    for job in tqdm(jobs, desc="replaying imagined rollouts in MetaWorld", unit="rollout"):
        obs, _ = env.reset(seed=cfg.dataset_seed + job["start"])
        rows = episode == job["episode_index"]
        if np.abs(obs["observation.state"] - states[rows][0]).max() > 1e-3:
            outcomes.append(None)
            continue
        for action in actions[rows]:
            obs, _, _, _, info = env.step_state_only(action)
        outcomes.append(bool(info["is_success"]))
    env.close()
    return outcomes


def replay_summary(cfg: ImproveConfig, jobs: list[dict], outcomes: list[bool | None]) -> dict:
    """How often imagination's verdict is the simulator's: the judge and the world model together."""
    judged = [(j["score"] >= cfg.threshold, real) for j, real in zip(jobs, outcomes) if real is not None]
    return {"replayed": len(judged), "not_replayable": len(outcomes) - len(judged),
            "imagined_successes": sum(1 for ok, _ in judged if ok),
            "imagined_successes_real": sum(1 for ok, real in judged if ok and real),
            "imagined_failures": sum(1 for ok, _ in judged if not ok),
            "imagined_failures_real_successes": sum(1 for ok, real in judged if not ok and real)}


def demonstrations(root: str, repo_id: str, notes: list) -> list[int]:
    """A dataset's episodes that end in success (its `next.success` flag on the last row), in order: the real
    demonstrations. Noisy expert episodes that fail and play tours are not demonstrations of the task."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    table = LeRobotDataset(repo_id, root=root).hf_dataset.with_format("numpy")
    episode = np.asarray(table["episode_index"])
    if "next.success" not in table.column_names:
        notes.append(f"{root} has no next.success flag: every episode counts as a demonstration")
        return sorted(set(episode.tolist()))
    success = np.asarray(table["next.success"]).reshape(-1).astype(bool)
    last_rows = np.flatnonzero(np.r_[episode[1:] != episode[:-1], True])
    return [int(episode[r]) for r in last_rows if success[r]]


def unseen_demonstrations(cfg: ImproveConfig, demos: list[int], notes: list) -> tuple[str, str, list[int]]:
    """The real demonstrations the weak policy never saw: (root, repo_id, episodes)."""
    if cfg.real_demos_root is None:
        return cfg.dataset_root, cfg.repo_id, list(demos[cfg.weak_demos:])
    return cfg.real_demos_root, cfg.real_demos_repo_id, demonstrations(cfg.real_demos_root, cfg.real_demos_repo_id,
                                                                        notes)


def finetune_sources(cfg: ImproveConfig, imagined: Path, episodes: list[int], successes: list[int], demos: list[int],
                     notes: list):
    """Each arm's (root, repo_id, episodes), all with the same number of episodes."""
    real_root, real_repo_id, unseen_real = unseen_demonstrations(cfg, demos, notes)
    n = min(len(successes), len(unseen_real))
    if n < len(successes):
        notes.append(f"every arm is capped at {n} episodes: only {len(unseen_real)} real demonstrations are unseen")
    random.Random(cfg.seed).shuffle(unseen_real)
    unfiltered = list(episodes)
    random.Random(cfg.seed + 1).shuffle(unfiltered)  # a random draw of rollouts, successes and failures alike
    return n, {
        "imagined_successes": (imagined, "local/imagined", sorted(successes[:n])),
        "real_demos": (real_root, real_repo_id, sorted(unseen_real[:n])),
        "imagined_unfiltered": (imagined, "local/imagined", sorted(unfiltered[:n])),
    }


def arm_configs(cfg: ImproveConfig, policy_cfg: StatePolicyConfig, weak: Path, weak_episodes: list[int],
                sources: dict, out: Path) -> dict[str, StatePolicyConfig]:
    """Each arm's fine-tuning: the weak policy trained further on the arm's episodes (plus its own demonstrations
    with `finetune_with_demos`), with its share of the cores when `finetune_workers` arms train at once."""
    weak_source = [EpisodeSource(cfg.dataset_root, cfg.repo_id, weak_episodes)]
    threads = None if cfg.finetune_workers == 1 else max(1, (os.cpu_count() or 1) // cfg.finetune_workers)
    return {name: replace(policy_cfg, dataset_root=str(root), repo_id=repo_id, episodes=episodes,
                          steps=cfg.finetune_steps, final_lr=cfg.finetune_final_lr, save_every=cfg.candidate_every,
                          output_dir=str(out / f"finetuned_{name}"), init_from=str(weak),
                          extra_sources=weak_source if cfg.finetune_with_demos and name != "demos_only" else [],
                          threads=threads)
            for name, (root, repo_id, episodes) in sources.items()}


def finetune_arms(cfg: ImproveConfig, arms: dict[str, StatePolicyConfig]) -> None:
    with ThreadPoolExecutor(max_workers=cfg.finetune_workers) as pool:
        list(pool.map(train_state_policy, arms.values()))


def most_imagined_successes(imagined_success: dict[int, float]) -> int:
    """The candidate step with the highest imagined success; of equals, the later (more training, same evidence)."""
    return max(imagined_success, key=lambda step: (imagined_success[step], step))


def imagined_success_of_candidates(cfg: ImproveConfig, arm: StatePolicyConfig, name: str, out: Path, judge,
                                   judge_name: str) -> dict[int, float]:
    """Each of the arm's checkpoints rolled out in the world model from the selection starts and judged (as `wm
    imagine` does; the judged successes are written to `out/selection_<arm>`, and a rerun resumes): -> {step: rate}."""
    root, repo_id = ((cfg.selection_root, cfg.selection_repo_id) if cfg.selection_root
                     else (cfg.dataset_root, cfg.repo_id))
    candidates = {str(step): load_state_policy(str(checkpoint_folder(arm, step)), task=cfg.task)
                  for step in checkpoint_steps(arm)}
    ledger = Imaginer(imagine_config(
        cfg, judge_name, policies=list(candidates), dataset=DatasetConfig(root=root, repo_id=repo_id),
        output_root=str(out / f"selection_{name}"), repo_id="local/selection", starts=cfg.selection_starts),
        candidates, judge).run()
    jobs = list(ledger["jobs"].values())
    return {int(step): float(np.mean([j["score"] >= cfg.threshold for j in jobs if j["policy"] == step]))
            for step in candidates}


def after_finetuning(cfg: ImproveConfig, arm: StatePolicyConfig, name: str, out: Path, before: dict, judge,
                     judge_name: str) -> dict:
    """The arm's policy (its last checkpoint, or the candidate with the most imagined successes) and its real
    success, as a change from before."""
    steps = checkpoint_steps(arm)
    imagined = (imagined_success_of_candidates(cfg, arm, name, out, judge, judge_name) if len(steps) > 1
                else {})
    chosen = most_imagined_successes(imagined) if imagined else arm.steps
    real_of_candidates = ({step: real_success(checkpoint_folder(arm, step), cfg) for step in steps}
                          if imagined and cfg.real_success_of_candidates else {})
    r = real_of_candidates.get(chosen) or real_success(checkpoint_folder(arm, chosen), cfg)
    return {**r, "finetune_episodes": len(arm.episodes), "episodes": arm.episodes, "checkpoint_step": chosen,
            "imagined_success_of_candidates": imagined,
            "real_success_of_candidates": {step: c["success"] for step, c in real_of_candidates.items()},
            "change": r["success"] - before["success"],
            "change_interval": difference_interval(r["successes"], r["n"], before["successes"], before["n"])}


def setup_text(cfg: ImproveConfig, n_rollouts: int, n_kept: int, n: int) -> str:
    judge = cfg.judge or "the task's state rule"
    inputs = "the whole state" if cfg.state_dims is None else f"state dimensions {cfg.state_dims}"
    correlation = (f"correlated {cfg.action_noise_correlation} from step to step" if cfg.action_noise_correlation
                   else "white")
    noise = f", action noise {cfg.action_noise} {correlation}" if cfg.action_noise else ""
    extra = f" plus its {cfg.weak_demos} demonstrations" if cfg.finetune_with_demos else ""
    schedule = ("learning rate 1e-4 constant" if cfg.finetune_final_lr is None
                else f"learning rate 1e-4 decayed to {cfg.finetune_final_lr:g} (cosine)")
    starts = (f"{cfg.selection_starts} episodes of `{cfg.selection_root}`" if cfg.selection_root
              else f"{cfg.selection_starts} of the dataset's episodes")
    choice = ("Each arm's policy is its last checkpoint." if cfg.candidate_every is None else
              f"Each arm's policy is chosen without a real trial: of its checkpoints every {cfg.candidate_every} "
              f"steps, the one with the most judged successes in imagination, from the first frames of {starts}.")
    return " ".join([
        f"World model `{cfg.model}`, judge `{judge}`, task `{cfg.task}`.",
        f"Weak policy: state-only ACT (`policies.state_policy`, reading {inputs}) trained on {cfg.weak_demos} real "
        f"demonstrations for {cfg.weak_steps} steps.",
        f"{n_rollouts} imagined rollouts of it ({cfg.starts} dataset starts x {cfg.seeds_per_start} seeds, "
        f"{cfg.warmup_random_steps} random steps first{noise}), {n_kept} judged successful.",
        f"Each arm fine-tunes the weak policy for {cfg.finetune_steps} steps on {n} episodes{extra}, {schedule}.",
        "The real demonstrations are the dataset's episodes that end in success and the weak policy never saw."
        if cfg.real_demos_root is None else
        f"The real demonstrations are episodes that end in success of another recording, `{cfg.real_demos_root}`.",
        choice,
        f"Real success on the same {cfg.eval_episodes} MetaWorld episodes (env seeds {cfg.eval_seed}+) for every row; "
        "Wilson 95% intervals, and Newcombe's interval for the difference from before."])


def replay_text(replay: dict | None) -> str:
    if replay is None:
        return ""
    return (f"Imagination against the simulator (each rollout's actions replayed open loop in MetaWorld from its "
            f"start): {replay['imagined_successes_real']} of {replay['imagined_successes']} imagined successes are "
            f"real successes, and {replay['imagined_failures_real_successes']} of {replay['imagined_failures']} "
            f"imagined failures ({replay['not_replayable']} of the rollouts could not be replayed).")


def report_lines(cfg: ImproveConfig, results: dict, n_rollouts: int, n_kept: int, n: int, replay: dict | None,
                 notes: list) -> list[str]:
    lines = [f"# Policy improvement from imagined data: {cfg.run}", "", setup_text(cfg, n_rollouts, n_kept, n), "",
             replay_text(replay), "",
             "| policy | fine-tuning steps | real success | 95% interval | change vs before (points) | "
             "95% interval of the change |",
             "| --- | ---: | ---: | --- | ---: | --- |"]
    for name, r in results.items():
        if name == "before":
            change = "", ""
        else:
            lo, hi = r["change_interval"]
            change = f"{100 * r['change']:+.0f}", f"[{100 * lo:+.0f}, {100 * hi:+.0f}]"
        lines.append(f"| {name} | {r.get('checkpoint_step', 0)} | {r['success']:.2f} | "
                     f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}] | {change[0]} | {change[1]} |")
    return (lines + [""] + candidate_lines(results) + [f"Note: {n}" for n in notes]
            + ["", "Command:", "", f"    {command(cfg)}"])


def choice_check(results: dict) -> dict | None:
    """How good imagination's choice was, where every candidate's real success was measured: the correlation of
    imagined and real success over all candidates, and how far each chosen one falls below its arm's best."""
    arms = [r for r in results.values() if r.get("real_success_of_candidates")]
    if not arms:
        return None
    pairs = [(r["imagined_success_of_candidates"][step], real) for r in arms
             for step, real in r["real_success_of_candidates"].items()]
    imagined, real = np.array(pairs).T
    regret = [max(r["real_success_of_candidates"].values()) - r["success"] for r in arms]
    return {"candidates": len(pairs), "pearson": pearson(real, imagined), "mean_regret": float(np.mean(regret)),
            "max_regret": float(np.max(regret))}


def candidate_lines(results: dict) -> list[str]:
    """Each arm's candidates: success in imagination (what chose) and, when measured, in MetaWorld (what it missed)."""
    arms = {name: r for name, r in results.items() if r.get("imagined_success_of_candidates")}
    if not arms:
        return []
    steps = sorted({step for r in arms.values() for step in r["imagined_success_of_candidates"]})
    lines = ["Candidates of each arm: imagined success (real success, when measured); the chosen one in bold.", "",
             "| arm | " + " | ".join(f"step {step}" for step in steps) + " |",
             "| --- |" + " ---: |" * len(steps)]
    for name, r in arms.items():
        cells = []
        for step in steps:
            real = r["real_success_of_candidates"].get(step)
            cell = f"{r['imagined_success_of_candidates'][step]:.2f}" + ("" if real is None else f" ({real:.2f})")
            cells.append(f"**{cell}**" if step == r["checkpoint_step"] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    check = choice_check(results)
    if check:
        lines += ["", f"Imagination as the judge of checkpoints: over the {check['candidates']} candidates, Pearson "
                      f"r = {check['pearson']:.2f} between imagined and real success; each arm's chosen checkpoint "
                      f"is {100 * check['mean_regret']:.1f} points below the arm's best in MetaWorld on average "
                      f"(at most {100 * check['max_regret']:.0f})."]
    return lines + [""]


def command(cfg: ImproveConfig) -> str:
    def flag(value) -> str:
        if value is None:
            return "null"  # draccus reads null, not None, as None
        if isinstance(value, list):
            return "'[" + ",".join(str(v) for v in value) + "]'"  # one shell word
        return str(value)

    return "python -m eval.improve " + " ".join(f"--{k}={flag(v)}" for k, v in asdict(cfg).items() if k != "sampler")


def check_config(cfg: ImproveConfig) -> None:
    """What would otherwise fail after the weak policy and the arms have trained."""
    if cfg.finetune_workers < 1:
        raise ValueError(f"finetune_workers: expected at least 1, got {cfg.finetune_workers}")
    if cfg.candidate_every is not None and not 1 <= cfg.candidate_every <= cfg.finetune_steps:
        raise ValueError(f"candidate_every: {cfg.candidate_every} must lie in [1, finetune_steps={cfg.finetune_steps}]")
    for name in ("selection_root", "real_demos_root"):
        root = getattr(cfg, name)
        if root is not None and not (Path(root) / "meta" / "info.json").exists():
            raise ValueError(f"{name}: {root} is not a LeRobotDataset (no meta/info.json)")


def improve(cfg: ImproveConfig) -> dict:
    started, out, notes = time.time(), Path(cfg.output_dir), []
    check_config(cfg)
    demos = demonstrations(cfg.dataset_root, cfg.repo_id, notes)
    if len(demos) < cfg.weak_demos:
        raise ValueError(f"weak_demos: {cfg.weak_demos} asked for, but {cfg.dataset_root} has {len(demos)} "
                         "episodes that end in success")
    policy_cfg = StatePolicyConfig(dataset_root=cfg.dataset_root, repo_id=cfg.repo_id, device=cfg.device, seed=cfg.seed,
                                   state_dims=cfg.state_dims)

    # 1. The weak policy, and where it starts.
    weak_episodes = demos[:cfg.weak_demos]
    weak = train_state_policy(replace(policy_cfg, episodes=weak_episodes, steps=cfg.weak_steps,
                                      output_dir=str(out / "weak")))
    results = {"before": real_success(weak, cfg)}

    # 2. Imagined rollouts of it, each with the judge's score, and the same actions replayed in the simulator.
    judge, judge_name = load_judge(cfg)  # one judge for every imagination job of the run
    imagined, jobs, successes, hard_starts = imagine(cfg, weak, out, judge, judge_name)
    episodes, n_kept = [j["episode_index"] for j in jobs], sum(j["score"] >= cfg.threshold for j in jobs)
    if hard_starts is not None:
        notes.append(f"only the {len(successes)} judged successes from the {len(hard_starts)} hard starts are kept "
                     f"(of {cfg.starts} starts, those where the weak policy's own rollout without noise is judged a "
                     "failure in imagination)")
    if cfg.warmup_random_steps == 0:
        replay = replay_summary(cfg, jobs, replay_in_the_simulator(cfg, imagined, "local/imagined", jobs))
    else:  # the random warm-up actions are not written, so a rollout cannot be replayed from its start
        replay = None
        notes.append("no replay check: the random warm-up actions before each rollout are not recorded")

    # 3. Fine-tune on the same number of episodes from each source, 4. measured on the same real seeds.
    n, sources = finetune_sources(cfg, imagined, episodes, successes, demos, notes)
    if n == 0:
        notes.append("no imagined rollout was kept as a success: nothing to fine-tune on")
        sources = {}
    if cfg.finetune_with_demos and sources:
        sources = {"demos_only": (cfg.dataset_root, cfg.repo_id, weak_episodes), **sources}
    arms = arm_configs(cfg, policy_cfg, weak, weak_episodes, sources, out)
    finetune_arms(cfg, arms)
    for name, arm in arms.items():
        results[f"after_{name}"] = after_finetuning(cfg, arm, name, out, results["before"], judge, judge_name)
    n_rollouts = cfg.starts * cfg.seeds_per_start
    report = {"run": cfg.run, "results": results, "demonstrations": demos, "weak_episodes": weak_episodes,
              "imagined_rollouts": n_rollouts, "imagined_kept": n_kept, "hard_starts": hard_starts, "replay": replay,
              "finetune_episodes": n, "choice_check": choice_check(results), "notes": notes, "config": asdict(cfg),
              "seconds": time.time() - started,
              "command": command(cfg)}
    write_result(Path(cfg.results_dir) / f"improve_{cfg.run}.json", report,
                 report_lines(cfg, results, n_rollouts, n_kept, n, replay, notes))
    return report


def main() -> None:
    import draccus

    improve(draccus.parse(ImproveConfig))


if __name__ == "__main__":
    main()
