"""`wm imagine`: roll policies inside the world model and write the (judged) successes as a LeRobotDataset.

    wm imagine --model=outputs/train/small/model --judge=outputs/judge/metaworld_push \\
        --policies='[outputs/policies/act_push/checkpoints/002000/pretrained_model]' \\
        --dataset.root=outputs/datasets/metaworld_push --starts=50 --seeds_per_start=4 \\
        --output_root=outputs/datasets/imagined_push

Every job is (policy, start episode, seed, task): the rollout starts from the first frame of that source
episode, optionally after `warmup_random_steps` random actions (a random perturbation of the initial
pose), and runs `max_episode_steps` env steps, optionally with Gaussian `action_noise` on every action,
white or correlated in time (exploration: a deterministic policy then tries something else on each seed).
The judge scores its last frames; with `keep_failures` off only rollouts scoring >= `threshold` are written.

The output is a LeRobotDataset v3 written through lerobot's API with the source's features, so
`lerobot-train` and `wm train` read it directly. Rows are env steps at the source fps: each row holds
the observation the policy saw when it acted (the newest imagined frame and state, renewed every
`frame_stride` steps) and the action it took; `next.success`/`next.reward` (when the source has
them) are the judge's verdict after that step. With `keep_failures` every rollout is kept and an extra
per-episode feature `imagined.success_probability` holds the judge's final score. `meta/imagined.json` records the world model, judge, threshold,
policies, seeds and every job's outcome; it is also the ledger a restarted run resumes from: a job
is marked done only after its episode is saved (or rejected), so a crash never duplicates an episode
and never leaves half of one (the episode being written is dropped and redone). Episodes and ledger are
written into a working copy that is finalised and swapped in every `commit_every` kept episodes
(`worldmodel.recording`): after a hard kill (kill -9) `output_root` still opens in lerobot, and a rerun
redoes only the jobs after the last commit.
"""

from __future__ import annotations

import json
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.atomic import write_json_atomic
from worldmodel.dataset import DatasetConfig, start_frames
from worldmodel.envs.imagined import ImaginedVectorEnv
from worldmodel.model import VideoDiT
from worldmodel.recording import CommittedDataset
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


@dataclass
class ImagineConfig:
    model: str = "outputs/train/tiny_cpu/model"
    judge: str = "outputs/judge/metaworld_push"
    policies: list[str] = field(default_factory=list)  # LeRobot pretrained policy folders
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the source of starts and features
    output_root: str = "outputs/datasets/imagined"
    repo_id: str = "local/imagined"
    starts: int = 10  # first frames of this many source episodes
    seeds_per_start: int = 1
    tasks: list[str] | None = None  # task strings to imagine with (None: the source's first task)
    warmup_random_steps: int = 0  # random actions before the policy starts (initial-pose diversity)
    # Exploration: the std of Gaussian noise added to every policy action (in action units, before clipping). The
    # action written is the one executed, and seeds of one start then differ. 0: the policy's own actions.
    action_noise: float = 0.0
    # The noise's correlation from one env step to the next (an AR(1) process of the same std): 0 is white noise,
    # which a closed-loop policy averages away; near 1 it is a slowly drifting offset, which moves where the policy
    # ends up (temporally correlated noise explores further).
    action_noise_correlation: float = 0.0
    max_episode_steps: int = 120
    threshold: float = 0.5
    keep_failures: bool = False
    batch_size: int = 16
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    device: str | None = None
    vcodec: str = "libsvtav1"
    commit_every: int = 10  # kept episodes per commit: a hard kill loses at most this many (redone on rerun)


LEDGER = Path("meta") / "imagined.json"


class ExplorationNoise:
    """Gaussian noise of std `std` per action dimension, correlated `correlation` from one step to the next (AR(1),
    started from its stationary distribution, so every step has the same std)."""

    def __init__(self, std: float, correlation: float, shape: tuple, rng: np.random.Generator):
        self.std, self.correlation, self.shape, self.rng = std, correlation, shape, rng
        self.value = rng.normal(0.0, std, shape) if std > 0 else np.zeros(shape)

    def next(self) -> np.ndarray:
        current = self.value
        if self.std > 0:
            fresh = self.rng.normal(0.0, self.std, self.shape)
            self.value = self.correlation * current + math.sqrt(1 - self.correlation ** 2) * fresh
        return current


class Imaginer:
    """Generates the dataset; `policies` are objects with reset()/select_action() (any adapter)."""

    def __init__(self, cfg: ImagineConfig, policies: dict, judge):
        if cfg.action_noise < 0 or not 0.0 <= cfg.action_noise_correlation < 1.0:
            raise ValueError(f"action_noise: {cfg.action_noise} must be >= 0 and action_noise_correlation: "
                             f"{cfg.action_noise_correlation} in [0, 1)")
        self.cfg, self.policies, self.judge = cfg, policies, judge
        self.model = VideoDiT.from_pretrained(cfg.model)
        keys = list(self.model.cfg.camera_keys)
        self.source = start_frames(cfg.dataset, self.model.cfg)
        meta = self.source.lerobot_dataset.meta
        for key in keys:
            if tuple(meta.features[key]["shape"][:2]) != (self.model.cfg.image_size,) * 2:
                raise ValueError(f"dataset: {key} is {meta.features[key]['shape']} but the world model draws "
                                 f"{self.model.cfg.image_size}px frames; imagine from a source at the model's size")
        self.features = {k: v for k, v in meta.features.items()
                         if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
        if cfg.keep_failures:  # everything is kept: the judge's verdict travels with each episode
            self.features["imagined.success_probability"] = {"dtype": "float32", "shape": (1,), "names": None}
        self.fps, self.robot_type = meta.fps, meta.robot_type
        self.default_task = str(meta.tasks.index[0])
        root = Path(cfg.output_root)
        self.recording = CommittedDataset(root, self.open_output, cfg.commit_every)  # drops what a kill left
        info = root / "meta" / "info.json"
        if (root / LEDGER).exists():
            self.ledger = json.loads((root / LEDGER).read_text())
            self.check_resumable(root)
        elif info.exists():
            raise RuntimeError(f"output_root: {root} holds a dataset without {LEDGER}; it was not written by this "
                               "command (choose another --output_root)")
        else:
            self.ledger = {**self.settings(), "jobs": {}}
        # The ledger is committed with the episodes, so the two agree unless something else wrote here.
        recorded = sum(1 for j in self.ledger["jobs"].values() if j["episode_index"] is not None)
        committed = json.loads(info.read_text())["total_episodes"] if info.exists() else 0
        if recorded != committed:
            raise RuntimeError(f"output_root: {root} holds {committed} episodes but its ledger lists {recorded}; "
                               "it was not written by this command")

    def settings(self) -> dict:
        """What every rollout of the output was made with, as the ledger records it (`starts` and
        `seeds_per_start` are left out: a rerun with more of them extends the output)."""
        cfg = self.cfg
        return {"world_model": cfg.model, "judge": cfg.judge, "threshold": cfg.threshold,
                "keep_failures": cfg.keep_failures, "policies": list(self.policies), "seed": cfg.seed,
                "source": cfg.dataset.root or cfg.dataset.repo_id, "warmup_random_steps": cfg.warmup_random_steps,
                "action_noise": cfg.action_noise, "action_noise_correlation": cfg.action_noise_correlation}

    def check_resumable(self, root: Path) -> None:
        """A rerun resumes only what the same settings made: rollouts of another model, judge or noise would
        otherwise sit in one dataset, and the ledger would skip jobs it never ran with these settings."""
        differ = {k: (self.ledger.get(k), v) for k, v in self.settings().items() if self.ledger.get(k) != v}
        if differ:
            named = "; ".join(f"{k}: {new!r} asked, {old!r} recorded" for k, (old, new) in differ.items())
            raise ValueError(f"output_root: {root} was imagined with other settings ({named}); rerun with the "
                             "recorded ones to resume, or choose another --output_root")

    def open_output(self, path: Path):
        """The output dataset at `path` (the working copy): opened, or created with the source's features."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if (path / "meta" / "info.json").exists():
            return LeRobotDataset(self.cfg.repo_id, root=path, vcodec=self.cfg.vcodec)
        return LeRobotDataset.create(self.cfg.repo_id, fps=self.fps, features=self.features, root=path,
                                     robot_type=self.robot_type, vcodec=self.cfg.vcodec)

    def jobs(self) -> list[dict]:
        tasks = self.cfg.tasks or [self.default_task]
        return [{"id": f"{p}|{s}|{k}|{t}", "policy": p, "start": s, "seed": self.cfg.seed + k, "task": t}
                for p in self.policies for s in range(self.cfg.starts)
                for k in range(self.cfg.seeds_per_start) for t in tasks]

    def run(self) -> dict:
        cfg = self.cfg
        pending = [j for j in self.jobs() if j["id"] not in self.ledger["jobs"]]
        kept = sum(1 for j in self.ledger["jobs"].values() if j["episode_index"] is not None)
        progress = tqdm(total=len(self.jobs()), initial=len(self.jobs()) - len(pending), desc="imagining",
                        unit="rollout")
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            # Batches never mix policies or tasks: one policy instance acts for the whole batch.
            groups: dict[tuple, list] = {}
            for job in pending:
                groups.setdefault((job["policy"], job["task"]), []).append(job)
            for (policy_name, task), group in groups.items():
                for lo in range(0, len(group), cfg.batch_size):
                    batch = group[lo:lo + cfg.batch_size]
                    for job, episode, score in zip(batch, *self.rollout(policy_name, task, batch)):
                        keep = score >= cfg.threshold or cfg.keep_failures
                        index = self.save(episode, task, score) if keep else None
                        kept += keep
                        self.ledger["jobs"][job["id"]] = {**job, "episode_index": index, "score": float(score)}
                        write_json_atomic(self.recording.folder / LEDGER, self.ledger)
                        self.recording.commit_if_due()
                        progress.update(1)
                        progress.set_postfix(kept=kept)
        finally:
            signal.signal(signal.SIGTERM, previous)
            progress.close()
            self.recording.commit()
        return self.ledger

    def rollout(self, policy_name: str, task: str, batch: list[dict]):
        cfg, B = self.cfg, len(batch)
        first = self.source.first_observations([j["start"] for j in batch])
        world = WorldModel(self.model, cfg.sampler, batch_size=B, device=cfg.device, seed=batch[0]["seed"])
        env = ImaginedVectorEnv(world, self.judge, cfg.max_episode_steps + cfg.warmup_random_steps, task=task)
        obs, _ = env.reset(options={"observations": first})
        rng = np.random.default_rng([j["seed"] for j in batch] + [j["start"] for j in batch])
        low, high = env.single_action_space.low, env.single_action_space.high
        for _ in range(cfg.warmup_random_steps):
            obs, *_ = env.step(rng.uniform(low, high, (B, len(low))).astype(np.float32))
        policy = self.policies[policy_name]
        if hasattr(policy, "task"):
            policy.task = task
        policy.reset()
        rows, noise = [], ExplorationNoise(cfg.action_noise, cfg.action_noise_correlation, (B, len(low)), rng)
        for _ in range(cfg.max_episode_steps):
            action = np.clip(policy.select_action(obs) + noise.next(), low, high).astype(np.float32)
            seen = {k: v.copy() for k, v in obs.items()}
            obs, _, _, _, info = env.step(action)
            rows.append((seen, action, info["is_success"].copy()))
        scores = info["success_probability"]
        episodes = [[({k: v[b] for k, v in o.items()}, a[b], bool(ok[b])) for o, a, ok in rows] for b in range(B)]
        return episodes, scores

    def save(self, episode: list, task: str, score: float) -> int:
        """Write one whole episode; on any interruption the partial buffer is dropped. -> its index."""
        def frames():
            for obs, action, success in episode:
                frame = {k: obs[k] for k in self.features if k in obs}
                frame["action"] = action
                if "next.success" in self.features:  # the judge's verdict after this step
                    frame["next.success"] = np.array([success])
                if "next.reward" in self.features:
                    frame["next.reward"] = np.array([float(success)], np.float32)
                if "imagined.success_probability" in self.features:
                    frame["imagined.success_probability"] = np.array([score], np.float32)
                yield frame

        return self.recording.write(frames(), task)


def main(argv: list[str] | None = None) -> None:
    import draccus

    from worldmodel.judge import SuccessJudge
    from worldmodel.policy import LeRobotPolicy

    cfg = draccus.parse(ImagineConfig, args=argv)
    if not cfg.policies:
        raise ValueError("policies: give at least one LeRobot pretrained policy folder")
    judge = SuccessJudge.from_pretrained(cfg.judge).eval()  # a wrong folder fails before any policy loads
    policies = {p: LeRobotPolicy.from_pretrained(p, name=p) for p in cfg.policies}
    ledger = Imaginer(cfg, policies, judge.probability).run()
    kept = sum(1 for j in ledger["jobs"].values() if j["episode_index"] is not None)
    print(f"{kept} of {len(ledger['jobs'])} imagined rollouts kept in {cfg.output_root}")
