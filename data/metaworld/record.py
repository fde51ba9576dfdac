"""Record MetaWorld scripted-expert demonstrations into a LeRobotDataset v3.

    python -m data.metaworld.record --root=outputs/datasets/metaworld_push --episodes=10

Episode i always uses env seed `seed + i` and its own action-noise level drawn from `seed + i`, so an
interrupted run continued with the same command gives exactly the dataset an uninterrupted run gives.
Workers roll out and render in parallel; the main process alone writes through lerobot's API
(`LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize`), one whole episode at a time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodel.envs.metaworld import ACTION_NAMES, CONTROL_FPS, GOAL_SLICE, STATE_DIM, STATE_NAMES, MetaWorldConfig
from worldmodel.recording import CommittedDataset


@dataclass
class RecordConfig:
    root: str = "outputs/datasets/metaworld_push"
    repo_id: str = "local/metaworld_push"
    episodes: int = 10
    env: MetaWorldConfig = field(default_factory=MetaWorldConfig)
    # Each episode adds Gaussian noise of std ~ U(0, action_noise) to the expert's actions, so the data
    # holds near-perfect pushes, recoveries from drift, and failures.
    action_noise: float = 0.6
    # With this probability an episode's expert also aims at a wrong, biased target for a while,
    # giving clear failures and large corrections (not only jitter).
    perturb_prob: float = 0.3
    seed: int = 0
    workers: int = 0  # 0: one per spare core
    vcodec: str = "libsvtav1"
    # Finalise and swap in the recording every this many episodes: a hard kill loses at most this many.
    finalize_every: int = 25
    # Waypoint tours: with probability `tour_prob`, the expert drives only the first `tour_after` steps
    # of an episode and a tour of random hand waypoints, often returning to ones it visited before,
    # drives the rest (up to env.max_episode_steps). Long tours give the fidelity benchmark its long
    # horizons and revisits; a share of short ones teaches the model free arm motion. None: no tours.
    tour_after: int | None = None
    tour_prob: float = 1.0
    # Aimed pushes: the expert aims at a point drawn uniformly within this many metres of the goal in the
    # table's plane, for the whole episode, so the object's path and resting place are not tied to the goal
    # (with the goal always the target, a model can learn "the puck stops at the goal" instead of "the puck
    # goes where the hand takes it"). 0: the expert aims at the goal.
    aim_offset_m: float = 0.0
    # Delayed pushes: the expert acts on the state from d steps before, d drawn per episode uniformly in
    # 1..delay_max_steps. Control delays are common on real robots, and a delayed expert lands the hand off the
    # object's centre, presses on it, drags it and lands again: contacts that prompt pushes rarely show, and that
    # a policy under evaluation may well make. 0: no delay.
    delay_max_steps: int = 0


def dataset_features(env_cfg: MetaWorldConfig) -> dict:
    size = env_cfg.image_size
    features = {
        f"observation.images.{cam}": {
            "dtype": "video",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in env_cfg.cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": STATE_NAMES}
    features["action"] = {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


# -- worker side -------------------------------------------------------------------------------
_worker_env = None


def _init_worker(env_cfg_dict: dict) -> None:
    global _worker_env
    from worldmodel.envs.metaworld import MetaWorldMultiViewEnv

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides how to stop
    _worker_env = MetaWorldMultiViewEnv(MetaWorldConfig(**env_cfg_dict))


# Where the tour's waypoints are drawn from: MetaWorld's hand workspace above the table (metres).
TOUR_LOW, TOUR_HIGH = np.array([-0.25, 0.45, 0.06]), np.array([0.25, 0.85, 0.30])


class WaypointTour:
    """Drive the hand through random waypoints, dwelling a few steps at each; with probability
    `revisit_prob` the next waypoint is one already visited, so the arm leaves places and comes back."""

    def __init__(self, rng: np.random.Generator, revisit_prob: float = 0.4, gain: float = 10.0):
        self.rng, self.revisit_prob, self.gain = rng, revisit_prob, gain
        self.visited: list[np.ndarray] = []
        self.target, self.grip, self.dwell = None, -1.0, 0

    def _next_target(self) -> None:
        if len(self.visited) >= 2 and self.rng.random() < self.revisit_prob:
            self.target = self.visited[int(self.rng.integers(len(self.visited) - 1))]  # not the current one
        else:
            self.target = self.rng.uniform(TOUR_LOW, TOUR_HIGH)
            self.visited.append(self.target)
        self.grip = float(self.rng.choice([-1.0, 1.0]))
        self.dwell = int(self.rng.integers(4, 16))

    def get_action(self, state: np.ndarray) -> np.ndarray:
        if self.target is None:
            self._next_target()
        delta = self.target - state[:3]
        if np.linalg.norm(delta) < 0.01:
            self.dwell -= 1
            if self.dwell <= 0:
                self._next_target()
                delta = self.target - state[:3]
        return np.concatenate([np.clip(self.gain * delta, -1, 1), [self.grip]]).astype(np.float32)


def aim_offset(rng: np.random.Generator, radius_m: float) -> np.ndarray:
    """A point uniform in the disc of `radius_m` in the table's plane (x, y), as an offset to the goal."""
    r, angle = radius_m * np.sqrt(rng.random()), rng.uniform(0.0, 2.0 * np.pi)
    return np.array([r * np.cos(angle), r * np.sin(angle), 0.0])


def rollout_episode(env, episode_seed: int, action_noise: float, perturb_prob: float,
                    tour_after: int | None = None, tour_prob: float = 1.0, aim_offset_m: float = 0.0,
                    delay_max_steps: int = 0) -> dict:
    """One scripted-expert episode (optionally ending in a waypoint tour) with this episode's own noise;
    returns stacked per-step arrays."""
    from worldmodel.envs.metaworld import expert_policy_for

    rng = np.random.default_rng(episode_seed)
    noise_std = rng.uniform(0.0, action_noise)
    perturb = rng.random() < perturb_prob
    bias = rng.normal(0.0, 0.6, size=3) if perturb else np.zeros(3)
    bias_steps = int(rng.integers(10, 60)) if perturb else 0
    # The tour draws from its own generator, so the expert part of an episode is the same with or without it.
    tour_rng = np.random.default_rng([episode_seed, 1])
    tour_start = tour_after if tour_after is not None and tour_rng.random() < tour_prob else None
    tour = WaypointTour(tour_rng)
    aim = aim_offset(np.random.default_rng([episode_seed, 2]), aim_offset_m)  # own generator, like the tour's
    delay = int(np.random.default_rng([episode_seed, 3]).integers(1, delay_max_steps + 1)) if delay_max_steps else 0
    expert = expert_policy_for(env.config.task)

    obs, _ = env.reset(seed=episode_seed)
    frames = {k: [] for k in obs}
    actions, rewards, successes, seen_states = [], [], [], []
    for step in range(env.config.max_episode_steps):
        state = obs["observation.state"].astype(np.float64)
        seen_states.append(state)
        if tour_start is not None and step >= tour_start:
            action = tour.get_action(state)
            # Tours are for motion, not for the task: lighter noise, no bias.
            action[:3] += rng.normal(0.0, 0.1 * noise_std, size=3).astype(np.float32)
        else:
            aimed_state = seen_states[max(0, step - delay)].copy()  # the state `delay` steps ago
            aimed_state[GOAL_SLICE] += aim
            action = expert.get_action(aimed_state).astype(np.float32)
            if step < bias_steps:
                action[:3] += bias
            action += rng.normal(0.0, noise_std, size=action.shape).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)
        for k, v in obs.items():
            frames[k].append(v)
        obs, reward, _, _, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        successes.append(info["is_success"])
    episode = {k: np.stack(v) for k, v in frames.items()}
    episode["action"] = np.stack(actions)
    episode["next.reward"] = np.asarray(rewards, dtype=np.float32)[:, None]
    episode["next.success"] = np.asarray(successes, dtype=bool)[:, None]
    return episode


# The language instruction stored with every frame (LeRobot's `task`), for the tasks this project has recorded.
TASK_SENTENCES = {
    "push-v3": "Push the puck to the goal",
    "reach-v3": "Reach the goal with the gripper",
}


def task_sentence(task: str) -> str:
    return f"{TASK_SENTENCES.get(task, 'Solve the MetaWorld task')} ({task})"


def _worker_rollout(args: tuple) -> dict:
    return rollout_episode(_worker_env, *args)


# -- main side ---------------------------------------------------------------------------------
# `root` only ever holds a finalised dataset: episodes go into a working copy that is finalised and swapped in
# every `finalize_every` episodes (worldmodel.recording), so a hard kill loses at most those.
def _open_dataset(cfg: RecordConfig, root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = dataset_features(cfg.env)
    if (root / "meta" / "info.json").exists():
        try:
            dataset = LeRobotDataset(cfg.repo_id, root=root, vcodec=cfg.vcodec)
        except Exception as err:
            raise RuntimeError(f"root={root}: lerobot cannot open this dataset ({err}); it was not written by a "
                               "finished recording (they are swapped in whole). Delete the folder and record again.") from err
        for key, ft in features.items():
            have = dataset.meta.features.get(key)
            if have is None or tuple(have["shape"]) != tuple(ft["shape"]) or have["dtype"] != ft["dtype"]:
                raise ValueError(
                    f"root={root}: existing dataset's feature {key!r} is {have}, expected {ft}; "
                    "use another --root or the same --env settings to continue it"
                )
        return dataset
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"root={root}: folder exists and is not a LeRobotDataset; choose an empty --root")
    if root.exists():
        root.rmdir()
    return LeRobotDataset.create(
        cfg.repo_id, fps=CONTROL_FPS, features=features, root=root, robot_type="sawyer", vcodec=cfg.vcodec
    )


def record(cfg: RecordConfig) -> Path:
    """Record until the dataset at `cfg.root` holds `cfg.episodes` episodes; returns the root."""
    from worldmodel.envs.metaworld import MetaWorldMultiViewEnv

    root = Path(cfg.root)
    recording = CommittedDataset(root, lambda path: _open_dataset(cfg, path), cfg.finalize_every)  # recovers a kill
    start = _open_dataset(cfg, root).meta.total_episodes if root.exists() else 0
    if start >= cfg.episodes:
        print(f"{cfg.root}: already holds {start} episodes, nothing to record")
        return root

    jobs = [(cfg.seed + i, cfg.action_noise, cfg.perturb_prob, cfg.tour_after, cfg.tour_prob, cfg.aim_offset_m,
             cfg.delay_max_steps) for i in range(start, cfg.episodes)]
    workers = cfg.workers or max(1, min(len(jobs), (os.cpu_count() or 1) - 1))
    task = task_sentence(cfg.env.task)

    # SIGTERM behaves like Ctrl-C: stop after the current episode is either fully written or dropped.
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    pool = None
    try:
        if workers > 1:
            # spawn: forked EGL contexts are not safe
            pool = mp.get_context("spawn").Pool(workers, _init_worker, (asdict(cfg.env),))
            episodes = pool.imap(_worker_rollout, jobs)
        else:
            env = MetaWorldMultiViewEnv(cfg.env)
            episodes = (rollout_episode(env, *job) for job in jobs)
        progress = tqdm(total=cfg.episodes, initial=start, desc=f"recording {cfg.root}", unit="episode")
        successes = 0
        for n, episode in enumerate(episodes, start=1):
            recording.write(({k: v[t] for k, v in episode.items()} for t in range(len(episode["action"]))), task)
            successes += bool(episode["next.success"][-1, 0])
            progress.update(1)
            progress.set_postfix(success_rate=f"{successes / n:.2f}")
            recording.commit_if_due()
        progress.close()
    finally:
        if pool is not None:
            pool.terminate()
        recording.commit()  # whole episodes only (write_episode), also after Ctrl-C / SIGTERM
        signal.signal(signal.SIGTERM, previous_sigterm)
    return root


def main() -> None:
    import draccus

    cfg = draccus.parse(RecordConfig)
    record(cfg)


if __name__ == "__main__":
    main()
