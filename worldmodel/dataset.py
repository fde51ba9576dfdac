"""Training clips from any LeRobotDataset.

A world-model frame is one env step out of every `frame_stride`; a clip is `clip_frames` such frames
from one episode (never across an episode boundary). Frame t is conditioned on its own action chunk:
the `frame_stride` env actions taken between frame t-1 and frame t (Ctrl-World's frame-level action
conditioning).

    images          (T, V, 3, H, W) float in [-1, 1]
    actions         (T, frame_stride, A) raw env actions; actions[t, j] is taken at env step s_t - stride + j
    actions_is_pad  (T, frame_stride) True where that env step lies before the episode's start
    state           (T, S) raw observation.state
    pose            (T, P) the state components memory retrieval indexes on
    command         (T, P) after attach_commands: the commanded pose (worldmodel.command) from the episode's start
    step_index      (T,) env step of each frame inside its episode
    episode_index   ()
    with memory_frames = M > 0, also memory_images (M, V, 3, H, W), memory_state (M, S),
    memory_offset (M,) position in frames relative to the clip's first frame (negative), memory_valid (M,)

Decoding video per sample is far too slow to train on, so every selected frame is decoded once at
training resolution into a uint8 memory-mapped cache (rebuilt automatically when the dataset, the
views or the size change). Actions and states are cached beside it as float32 arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from worldmodel.command import fit_command_gain, integrate_commands, one_step_gain
from worldmodel.metrics import revisit_frames

CACHE_FORMAT_VERSION = 1


@dataclass
class DatasetConfig:
    root: str | None = "outputs/datasets/metaworld_push"  # local dataset folder (None: hub cache of repo_id)
    repo_id: str = "local/metaworld_push"
    # Camera keys in view order; a bare camera name means `observation.images.<name>`.
    camera_keys: list[str] = field(default_factory=lambda: ["corner", "corner2", "gripperPOV"])
    image_size: int = 64
    # Resize every view to image_size (square). False: every view must already be image_size.
    resize: bool = True
    # A non-square view (e.g. 640x360) is centre-cropped to a square before resizing, so nothing is stretched;
    # True: padded with black instead (the whole view is kept, smaller).
    pad_to_square: bool = False
    frame_stride: int = 4
    clip_frames: int = 8
    action_key: str = "action"
    state_key: str = "observation.state"
    # Indices into the state vector that make the robot pose (MetaWorld: hand xyz + gripper).
    pose_indices: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # Indices of the manipulated object's position in the state (MetaWorld: the first object's xyz); read only by
    # training's near-object oversampling (train.near_object_repeat).
    object_indices: list[int] = field(default_factory=lambda: [4, 5, 6])
    episodes: list[int] | None = None  # None: all episodes
    # Memory frames per clip (0: none). Slot 0 is the episode's first frame (the attention sink); the
    # others are earlier frames of the same episode chosen by pose proximity to a frame of the clip, so
    # the model learns to use what the streaming sampler's pose memory will retrieve.
    memory_frames: int = 0
    # The pose-retrieved memory frames (slots 1..) come from at least this many frames (of frame_stride steps) before
    # the clip. 1: any earlier frame, and the nearest in pose is then nearly always one just before the clip (63 per
    # cent of them at most 2 frames back on the push set). The streaming sampler retrieves only from before its recent
    # window (recent_frames + 1 frames back and more), so a larger gap trains memory on what it is used for: a view of
    # the place seen long ago (eval/results/memory_probe_cpu_tiny.md).
    memory_min_gap_frames: int = 1
    cache_dir: str | None = None  # None: $WORLDMODEL_CACHE or ~/.cache/worldmodel
    video_backend: str | None = None  # None: lerobot's default (torchcodec, else pyav)


def feature_names(feature: dict, size: int) -> list[str] | None:
    """A feature's per-dimension names (lerobot stores a list, or a dict of one list), if it has them."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def resolve_camera_keys(camera_keys: list[str], available: list[str]) -> list[str]:
    resolved = []
    for key in camera_keys:
        if key in available:
            resolved.append(key)
        elif f"observation.images.{key}" in available:
            resolved.append(f"observation.images.{key}")
        else:
            raise KeyError(f"camera_keys: {key!r} is not a camera of this dataset; expected one of {available}")
    return resolved


def normalization_stats(meta, action_key: str, state_key: str) -> dict[str, list[float]]:
    """Mean/std of actions and states from the dataset's own stats.json (std floored to avoid /0), and the
    state's range (min/max per dimension: where the hand and the objects can physically be)."""
    stats = {}
    for name, key in (("action", action_key), ("state", state_key)):
        mean = np.asarray(meta.stats[key]["mean"], dtype=np.float64).reshape(-1)
        std = np.asarray(meta.stats[key]["std"], dtype=np.float64).reshape(-1)
        stats[f"{name}_mean"] = mean.tolist()
        stats[f"{name}_std"] = np.maximum(std, 1e-3).tolist()
    for bound in ("min", "max"):
        if bound in meta.stats[state_key]:
            stats[f"state_{bound}"] = np.asarray(meta.stats[state_key][bound], dtype=np.float64).reshape(-1).tolist()
    return stats


def check_local_root(cfg: DatasetConfig) -> None:
    """A local `root` must hold a LeRobotDataset before lerobot sees it: given a missing folder, lerobot reaches
    for the hub (a ConnectionError offline) and creates the folder. root=None asks for the hub on purpose."""
    if cfg.root is None:
        return
    root = Path(cfg.root)
    if not (root / "meta" / "info.json").is_file():
        found = "does not exist" if not root.exists() else "holds no LeRobotDataset (no meta/info.json)"
        raise FileNotFoundError(f"dataset.root: {root} {found}; pass the folder of a local LeRobotDataset, or "
                                f"--dataset.root=null --dataset.repo_id=user/name to read one from the hub")


def open_lerobot_dataset(cfg: DatasetConfig):
    """LeRobotDataset(repo_id, root); a dataset in the older v2.1 format gets the exact local conversion
    command instead of lerobot's, which points at the hub."""
    from lerobot.datasets.backward_compatibility import BackwardCompatibilityError
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    check_local_root(cfg)
    try:
        return LeRobotDataset(cfg.repo_id, root=cfg.root, episodes=cfg.episodes, video_backend=cfg.video_backend)
    except BackwardCompatibilityError as error:
        if cfg.root is None:
            raise
        path = Path(cfg.root).resolve()
        # The converter works in place on <root>/<repo-id>: split the folder's path that way.
        raise ValueError(
            f"dataset.root: {path} is a LeRobotDataset v2.1; this toolkit reads v3.0. Convert it in place, "
            f"offline, with:\n  python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 "
            f"--repo-id={path.parent.name}/{path.name} --root={path.parent.parent} --push-to-hub=false"
        ) from error


def write_episode(dataset, frames, task: str) -> None:
    """One whole episode into a lerobot dataset: every frame (a dict of features), then `save_episode`. On any
    failure, Ctrl-C included, the half-built episode buffer is dropped: the dataset never holds part of one."""
    try:
        for frame in frames:
            dataset.add_frame({**frame, "task": task})
        with calling_thread_scheduling_kept():
            dataset.save_episode()
    except BaseException:
        dataset.clear_episode_buffer()
        raise


@contextmanager
def calling_thread_scheduling_kept():
    """Undo what the video encoder does to the calling thread's scheduling policy. Run as root, SVT-AV1 (lerobot's
    default codec) switches the thread that opens it to SCHED_FIFO priority 99 and leaves it so: that thread and
    every process it starts afterwards then run at real-time priority, and a child with busy OpenMP threads
    starves the whole machine (seen as minutes-long freezes of the test suite)."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def start_frames(dataset: DatasetConfig, model_config) -> "ClipDataset":
    """A dataset's episodes as starting points for a model: every frame at the model's views and image size
    (`first_observations` gives an episode's first frame as a real env's reset would)."""
    return ClipDataset(replace(dataset, camera_keys=list(model_config.camera_keys), image_size=model_config.image_size,
                               frame_stride=1, clip_frames=1, memory_frames=0))


def _cache_root(cfg: DatasetConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("WORLDMODEL_CACHE", Path.home() / ".cache" / "worldmodel"))


def square_frame(frame: np.ndarray, image_size: int, pad: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (image_size, image_size, 3): centre-crop to a square (or pad with black), then resize
    (area interpolation). Use it on a real camera's frames before `WorldModel.reset` / `step` too."""
    h, w = frame.shape[:2]
    if h != w:
        if pad:
            side = max(h, w)
            square = np.zeros((side, side, frame.shape[2]), dtype=frame.dtype)
            top, left = (side - h) // 2, (side - w) // 2
            square[top:top + h, left:left + w] = frame
            frame = square
        else:
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            frame = frame[top:top + side, left:left + side]
    if frame.shape[0] != image_size:
        frame = cv2.resize(frame, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return frame


class DecodedCache:
    """Every selected frame of every camera, decoded once, as uint8 (N, V, H, W, 3) on disk."""

    def __init__(self, directory: Path):
        self.directory = directory
        meta = json.loads((directory / "cache.json").read_text())
        self.episode_index = np.asarray(meta["episode_index"], dtype=np.int64)
        self.episode_start = np.asarray(meta["episode_start"], dtype=np.int64)  # rows into the arrays below
        self.episode_length = np.asarray(meta["episode_length"], dtype=np.int64)
        self.images = np.load(directory / "images.npy", mmap_mode="r")
        self.actions = np.load(directory / "actions.npy")
        self.states = np.load(directory / "states.npy")

    @staticmethod
    def build(dataset, camera_keys: list[str], image_size: int, episodes: list[int],
              action_key: str, state_key: str, directory: Path, pad_to_square: bool = False) -> None:
        from lerobot.datasets.video_utils import decode_video_frames

        hf = dataset.hf_dataset.with_format("numpy")
        ep_meta = {int(dataset.meta.episodes[i]["episode_index"]): dataset.meta.episodes[i]
                   for i in range(len(dataset.meta.episodes))}
        lengths = [int(ep_meta[e]["length"]) for e in episodes]
        total = int(sum(lengths))
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
        try:
            images = np.lib.format.open_memmap(
                tmp / "images.npy", mode="w+", dtype=np.uint8,
                shape=(total, len(camera_keys), image_size, image_size, 3),
            )
            actions = np.zeros((total, len(hf[0][action_key])), dtype=np.float32)
            states = np.zeros((total, len(hf[0][state_key])), dtype=np.float32)
            # Map absolute dataset indices to rows of the loaded hf_dataset (a subset when episodes are chosen).
            absolute = np.asarray(hf["index"])
            row_of = {int(a): r for r, a in enumerate(absolute)}
            starts, row = [], 0
            for ep, length in zip(tqdm(episodes, desc="decoding video into the training cache", unit="episode"),
                                  lengths):
                meta = ep_meta[ep]
                rows = [row_of[i] for i in range(int(meta["dataset_from_index"]), int(meta["dataset_to_index"]))]
                block = hf[rows]
                actions[row:row + length] = block[action_key]
                states[row:row + length] = block[state_key]
                timestamps = [float(t) for t in block["timestamp"]]
                for v, key in enumerate(camera_keys):
                    video_path = dataset.root / dataset.meta.get_video_file_path(ep, key)
                    offset = float(meta[f"videos/{key}/from_timestamp"])
                    for lo in range(0, length, 256):  # bounded memory for long episodes
                        ts = [offset + t for t in timestamps[lo:lo + 256]]
                        frames = decode_video_frames(video_path, ts, dataset.tolerance_s, dataset.video_backend)
                        frames = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                        if frames.shape[1:3] != (image_size, image_size):
                            frames = np.stack([square_frame(f, image_size, pad_to_square) for f in frames])
                        images[row + lo:row + lo + len(frames), v] = frames
                starts.append(row)
                row += length
            images.flush()
            del images
            np.save(tmp / "actions.npy", actions)
            np.save(tmp / "states.npy", states)
            (tmp / "cache.json").write_text(json.dumps({
                "episode_index": list(map(int, episodes)), "episode_start": starts, "episode_length": lengths,
                "camera_keys": camera_keys, "image_size": image_size,
            }))
            if directory.exists():  # a stale copy from an identical fingerprint that lost a race
                shutil.rmtree(directory)
            os.replace(tmp, directory)  # atomic: a crash never leaves a half-written cache in place
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `clip_frames` world-model frames, `frame_stride` env steps apart, inside one episode."""

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        if cfg.frame_stride < 1:
            raise ValueError(f"frame_stride: expected >= 1, got {cfg.frame_stride}")
        if cfg.clip_frames < 1:
            raise ValueError(f"clip_frames: expected >= 1, got {cfg.clip_frames}")
        if cfg.image_size < 1:
            raise ValueError(f"image_size: expected a positive number of pixels, got {cfg.image_size}")
        if cfg.memory_min_gap_frames < 1:
            raise ValueError(f"memory_min_gap_frames: expected >= 1 (memory frames come before the clip), got "
                             f"{cfg.memory_min_gap_frames}")
        self.lerobot_dataset = open_lerobot_dataset(cfg)
        meta = self.lerobot_dataset.meta
        features = meta.features
        self.camera_keys = resolve_camera_keys(cfg.camera_keys, meta.camera_keys)
        for field_name, key in (("action_key", cfg.action_key), ("state_key", cfg.state_key)):
            if key not in features:
                raise KeyError(f"{field_name}: {key!r} is not a feature of this dataset; it has {sorted(features)}")
        if not cfg.resize:
            for key in self.camera_keys:
                h, w = features[key]["shape"][:2]
                if (h, w) != (cfg.image_size, cfg.image_size):
                    raise ValueError(
                        f"camera_keys: {key!r} is {h}x{w} but image_size={cfg.image_size} and resize=False; "
                        "set resize=True or image_size to the views' size"
                    )
        self.state_dim = int(features[cfg.state_key]["shape"][0])
        self.action_dim = int(features[cfg.action_key]["shape"][0])
        self.action_names = feature_names(features[cfg.action_key], self.action_dim)
        for i in cfg.pose_indices:
            if not 0 <= i < self.state_dim:
                raise ValueError(f"pose_indices: {i} is outside the state of size {self.state_dim}")
        self.stats = normalization_stats(meta, cfg.action_key, cfg.state_key)
        self.fps = meta.fps

        episodes = sorted(cfg.episodes) if cfg.episodes is not None else list(range(meta.total_episodes))
        self.cache = self._load_or_build_cache(episodes)
        self.latents = None  # see attach_latents
        self.commands = None  # see attach_commands

        # A clip starting at row s spans rows s, s + stride, ..., s + (T - 1) * stride.
        span = (cfg.clip_frames - 1) * cfg.frame_stride
        self._starts_per_episode = np.maximum(self.cache.episode_length - span, 0)
        if self._starts_per_episode.sum() == 0:
            raise ValueError(
                f"clip_frames: {cfg.clip_frames} frames x frame_stride {cfg.frame_stride} needs episodes of at "
                f"least {span + 1} steps; the longest here has {int(self.cache.episode_length.max())}"
            )
        self._cumulative = np.cumsum(self._starts_per_episode)

    def attach_latents(self, codec, batch_size: int = 64, device="cpu") -> Path:
        """Encode every cached frame with `codec` once (float16, memory-mapped, beside the decoded cache,
        keyed by the codec's description) so training reads latents instead of running the encoder.
        Afterwards samples also hold `latents` (T, V, c, h, w) (and `memory_latents`)."""
        key = hashlib.sha256(json.dumps(codec.description(), sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_directory / f"latents_{key}.npy"
        if not path.exists():
            images = self.cache.images
            N, V = images.shape[:2]
            shape = (codec.latent_channels, codec.latent_size, codec.latent_size)
            tmp = path.with_name(path.name + ".tmp.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(N, V, *shape))
            for lo in tqdm(range(0, N, batch_size), desc="encoding latents into the training cache", unit="batch"):
                x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + batch_size])).to(device)
                x = x.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)
                out[lo:lo + len(x)] = codec.encode(x).cpu().numpy().astype(np.float16)
            out.flush()
            del out
            os.replace(tmp, path)  # atomic: a half-encoded file is never mistaken for a finished one
        self.latents = np.load(path, mmap_mode="r")
        return path

    def _fingerprint(self, episodes: list[int]) -> str:
        ds = self.lerobot_dataset
        info = (ds.root / "meta" / "info.json").read_bytes()
        key = json.dumps({
            "version": CACHE_FORMAT_VERSION, "root": str(Path(ds.root).resolve()), "repo_id": ds.repo_id,
            "info": hashlib.sha256(info).hexdigest(), "episodes": episodes, "cameras": self.camera_keys,
            "image_size": self.cfg.image_size, "action_key": self.cfg.action_key, "state_key": self.cfg.state_key,
            # Non-square views only (square ones are never cropped or padded, and their caches stay valid):
            # how they were made square. Caches from before this key stretched them, and are not reused.
            **({"square": "pad" if self.cfg.pad_to_square else "crop"} if self._has_non_square_views() else {}),
        }, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _has_non_square_views(self) -> bool:
        features = self.lerobot_dataset.meta.features
        return any(features[key]["shape"][0] != features[key]["shape"][1] for key in self.camera_keys)

    def _load_or_build_cache(self, episodes: list[int]) -> DecodedCache:
        directory = _cache_root(self.cfg) / "decoded" / self._fingerprint(episodes)
        if not (directory / "cache.json").exists():
            DecodedCache.build(self.lerobot_dataset, self.camera_keys, self.cfg.image_size, episodes,
                               self.cfg.action_key, self.cfg.state_key, directory, self.cfg.pad_to_square)
        self.cache_directory = directory
        return DecodedCache(directory)

    @property
    def num_views(self) -> int:
        return len(self.camera_keys)

    def __len__(self) -> int:
        return int(self._cumulative[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Clip index -> (position of its episode in the cache, first step inside the episode)."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range [0, {len(self)})")
        episode = int(np.searchsorted(self._cumulative, index, side="right"))
        before = int(self._cumulative[episode - 1]) if episode > 0 else 0
        return episode, index - before

    def clip(self, episode: int, first_step: int) -> dict[str, torch.Tensor]:
        cfg, cache = self.cfg, self.cache
        start = int(cache.episode_start[episode])
        length = int(cache.episode_length[episode])
        steps = first_step + cfg.frame_stride * np.arange(cfg.clip_frames)
        if steps[-1] >= length:
            raise IndexError(f"clip from step {first_step} runs past the episode's {length} steps")
        images = torch.from_numpy(np.ascontiguousarray(cache.images[start + steps]))  # (T, V, H, W, 3) uint8
        images = images.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)  # (T, V, 3, H, W)

        # actions[t, j] is the action taken at env step steps[t] - stride + j, i.e. between frame t-1 and t.
        action_steps = steps[:, None] - cfg.frame_stride + np.arange(cfg.frame_stride)[None, :]
        is_pad = action_steps < 0
        actions = cache.actions[start + np.clip(action_steps, 0, None)]
        actions[is_pad] = 0.0
        state = cache.states[start + steps]
        sample = {
            "images": images,
            "actions": torch.from_numpy(actions),
            "actions_is_pad": torch.from_numpy(is_pad),
            "state": torch.from_numpy(state),
            "pose": torch.from_numpy(state[:, cfg.pose_indices]),
            "step_index": torch.from_numpy(steps),
            "episode_index": torch.tensor(int(cache.episode_index[episode])),
        }
        if self.latents is not None:
            sample["latents"] = torch.from_numpy(self.latents[start + steps].astype(np.float32))
        if self.commands is not None:
            sample["command"] = torch.from_numpy(self.commands[start + steps])
        if cfg.memory_frames > 0:
            sample.update(self.memory_for(start, first_step, state, seed=start + first_step))
        return sample

    def memory_for(self, start: int, first_step: int, clip_state: np.ndarray, seed: int) -> dict:
        """Slot 0: the episode's first frame; the rest: frames at least `memory_min_gap_frames` strides before the
        clip whose pose is nearest to the pose at a random frame of the clip (a random pick among the 2(M-1) nearest).
        Seeded by the clip, so a resumed run sees the same memory as an uninterrupted one."""
        cfg, cache = self.cfg, self.cache
        M = cfg.memory_frames
        rng = np.random.default_rng(seed)
        steps = np.zeros(M, dtype=np.int64)
        valid = np.zeros(M, dtype=bool)
        if first_step > 0:
            valid[0] = True  # the sink
        candidates = np.arange(1, max(first_step - cfg.memory_min_gap_frames * cfg.frame_stride + 1, 1))
        if len(candidates) and M > 1:
            target = clip_state[rng.integers(len(clip_state)), cfg.pose_indices]
            poses = cache.states[start + candidates][:, cfg.pose_indices]
            nearest = candidates[np.argsort(((poses - target) ** 2).sum(1))[:2 * (M - 1)]]
            chosen = np.sort(rng.choice(nearest, size=min(M - 1, len(nearest)), replace=False))
            steps[1:1 + len(chosen)] = chosen
            valid[1:1 + len(chosen)] = True
        images = torch.from_numpy(np.ascontiguousarray(cache.images[start + steps]))
        memory = {}
        if self.latents is not None:
            memory["memory_latents"] = torch.from_numpy(self.latents[start + steps].astype(np.float32))
        return {
            **memory,
            "memory_images": images.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0),
            "memory_state": torch.from_numpy(cache.states[start + steps]),
            "memory_offset": torch.from_numpy((steps - first_step) / cfg.frame_stride).float(),
            "memory_valid": torch.from_numpy(valid),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.clip(*self.locate(index))

    def clips_near_object(self, radius_m: float) -> np.ndarray:
        """(len(self),) bool: clips in which at some frame the hand (the first 3 pose indices) is within
        `radius_m` of the object (object_indices), in clip index order."""
        cfg, cache = self.cfg, self.cache
        for name, indices in (("pose_indices", cfg.pose_indices[:3]), ("object_indices", cfg.object_indices)):
            if len(indices) != 3 or not all(0 <= i < self.state_dim for i in indices):
                raise ValueError(f"{name}: expected 3 indices of a position inside the state of size "
                                 f"{self.state_dim}, got {list(indices)}")
        gap = cache.states[:, cfg.pose_indices[:3]] - cache.states[:, cfg.object_indices]
        return self._clips_with_any(np.linalg.norm(gap, axis=1) < radius_m)

    def _clips_with_any(self, row_flag: np.ndarray) -> np.ndarray:
        """(len(self),) bool: clips with at least one frame whose cached row is flagged in `row_flag` (rows,)."""
        frame_offsets = self.cfg.frame_stride * np.arange(self.cfg.clip_frames)
        per_episode = []
        for start, n_clips in zip(self.cache.episode_start, self._starts_per_episode):
            rows = int(start) + np.arange(n_clips)[:, None] + frame_offsets  # (clips, T) each clip's rows
            per_episode.append(row_flag[rows].any(1))
        return np.concatenate(per_episode)

    def clips_revisiting(self, near_m: float, away_m: float) -> np.ndarray:
        """(len(self),) bool: clips with a frame at which the hand is back within `near_m` of where it was at least
        `memory_min_gap_frames` frames earlier, having been farther than `away_m` from there in between
        (metrics.revisit_frames on the episode's frames, at the clip's phase of frame_stride): the clips whose
        pose-retrieved memory frame can show the place as it was seen long ago. In clip index order."""
        cfg, cache = self.cfg, self.cache
        hand, stride = cache.states[:, cfg.pose_indices[:3]], cfg.frame_stride
        revisit_row = np.zeros(len(hand), dtype=bool)
        for start, length in zip(cache.episode_start, cache.episode_length):
            for phase in range(min(stride, int(length))):
                rows = int(start) + np.arange(phase, int(length), stride)
                revisit_row[rows[revisit_frames(hand[rows], near_m, away_m, cfg.memory_min_gap_frames)]] = True
        return self._clips_with_any(revisit_row)

    def action_to_pose(self) -> list[list[float]]:
        """(A, P) pose change per env action, least squares over every step of every cached episode (the
        robot's own control gain, e.g. MetaWorld's hand moves action[:3] / 100 per step). The sampler's
        memory asks "where will the arm be" with it."""
        poses = self._episodes(self.cache.states[:, list(self.cfg.pose_indices)])
        return one_step_gain(poses, self._episodes(self.cache.actions)).round(6).tolist()

    def pose_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(P,) lowest and highest pose in the training set (stats.json; else the cached episodes)."""
        pose = list(self.cfg.pose_indices)
        if "state_min" in self.stats:
            return np.asarray(self.stats["state_min"])[pose], np.asarray(self.stats["state_max"])[pose]
        return self.cache.states[:, pose].min(0), self.cache.states[:, pose].max(0)

    def _episodes(self, array: np.ndarray) -> list[np.ndarray]:
        return [array[s:s + n] for s, n in zip(self.cache.episode_start, self.cache.episode_length)]

    def state_change_std(self) -> np.ndarray:
        """(S,) standard deviation of each state dimension's change over one world-model frame (frame_stride env
        steps), over every cached episode."""
        stride = self.cfg.frame_stride
        changes = [s[stride:] - s[:-stride] for s in self._episodes(self.cache.states) if len(s) > stride]
        return np.concatenate(changes).std(axis=0)

    def command_gain(self) -> list[list[float]]:
        """(A, P) gain of the commanded pose (worldmodel.command), fitted on every cached episode."""
        poses = self._episodes(self.cache.states[:, list(self.cfg.pose_indices)])
        return fit_command_gain(poses, self._episodes(self.cache.actions), *self.pose_range())

    def attach_commands(self, gain, low=None, high=None) -> None:
        """Every cached frame's commanded pose, integrated from its episode's first frame with `gain` (A, P),
        clipped to [low, high] (P,) at every step (a model's own: VideoDiT.command_parameters; None: unclipped).
        Afterwards samples also hold `command` (T, P)."""
        gain = torch.as_tensor(gain, dtype=torch.float32).cpu()
        if low is not None:
            low, high = torch.as_tensor(low, dtype=torch.float32).cpu(), torch.as_tensor(high, dtype=torch.float32).cpu()
        commands = np.zeros((len(self.cache.states), len(self.cfg.pose_indices)), dtype=np.float32)
        pose = list(self.cfg.pose_indices)
        for start, length in zip(self.cache.episode_start, self.cache.episode_length):
            first = torch.from_numpy(self.cache.states[start, pose])[None]
            # frame t's command has taken the actions of steps 0 .. t-1
            taken = torch.from_numpy(self.cache.actions[start:start + length - 1])[None]
            commands[start] = first[0].numpy()
            commands[start + 1:start + length] = integrate_commands(first, taken, gain, low, high)[0].numpy()
        self.commands = commands

    def first_observations(self, positions) -> dict[str, np.ndarray]:
        """The first frame of the episodes at cache `positions`, in LeRobot keys:
        {camera_key: (n, H, W, 3) uint8, "observation.state": (n, S)} (a real env's reset, batched)."""
        return self.observations(self.cache.episode_start[np.asarray(positions) % len(self.cache.episode_start)])

    def observations(self, rows) -> dict[str, np.ndarray]:
        """Cache rows (n,) -> their frames in LeRobot keys: {camera_key: (n, H, W, 3) uint8, "observation.state": (n, S)}."""
        observations = {key: np.asarray(self.cache.images[rows, v]) for v, key in enumerate(self.camera_keys)}
        observations["observation.state"] = self.cache.states[rows]
        return observations
