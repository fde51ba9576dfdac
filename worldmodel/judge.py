"""Success judges: did this (imagined) episode succeed?

A judge is any callable `(frames, states, task) -> probability`, with frames (B, K, V, 3, H, W) uint8
of the last K world-model frames of every view, states (B, K, S) and the task string; a VLM or a file
of human labels fits behind the same signature. K travels with the judge: its `frames` attribute (for a
bound method such as `SuccessJudge.probability`, its owner's), 1 when it has none; every caller asks
`judge_window(judge)`.

    SuccessJudge         a small CNN over the last K frames of every view (+ the state), trained on a
                         LeRobotDataset's per-frame success flags (`wm judge`); its callable is
                         `judge.probability`
    StateDistanceJudge   a rule on the (predicted) state: a point (object, hand) within `threshold` of
                         the goal; `StateDistanceJudge.for_task` takes the simulator's own rule for a
                         MetaWorld task, so it is a second opinion on the state the model predicts
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm import tqdm

from worldmodel.dataset import ClipDataset, DatasetConfig, check_local_root
from worldmodel.envs.metaworld import StateSuccessRule, state_success_rule
from worldmodel.model import check_folder_kind


@dataclass
class JudgeNetConfig:
    frames: int = 2  # K: last world-model frames looked at
    width: int = 32
    use_state: bool = True
    # filled from the dataset
    num_views: int = 3
    image_size: int = 64
    state_dim: int = 39
    camera_keys: list[str] = field(default_factory=list)
    state_mean: list[float] | None = None
    state_std: list[float] | None = None


class SuccessJudge(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, config: dict):
        super().__init__()
        cfg = self.cfg = JudgeNetConfig(**config)
        w = cfg.width
        # One small CNN shared by all views and frames; its features are concatenated.
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.GELU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = cfg.frames * cfg.num_views * 2 * w + (cfg.state_dim if cfg.use_state else 0)
        self.head = nn.Sequential(nn.Linear(features, 4 * w), nn.GELU(), nn.Linear(4 * w, 1))
        mean = cfg.state_mean or [0.0] * cfg.state_dim
        std = cfg.state_std or [1.0] * cfg.state_dim
        self.register_buffer("state_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("state_std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        # frames: (B, K, V, 3, H, W) uint8 or float in [-1, 1]; states (B, K, S) raw -> logits (B,)
        cfg = self.cfg
        B, K, V = frames.shape[:3]
        if K != cfg.frames or V != cfg.num_views:
            raise ValueError(f"frames: expected (B, K={cfg.frames}, V={cfg.num_views}, 3, H, W), got {tuple(frames.shape)}")
        x = frames.float().div(127.5).sub(1) if frames.dtype == torch.uint8 else frames.float()
        feats = self.encoder(x.reshape(B * K * V, *x.shape[3:])).reshape(B, -1)
        if cfg.use_state:
            feats = torch.cat([feats, (states[:, -1].float() - self.state_mean) / self.state_std], dim=1)
        return self.head(feats).squeeze(1)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SuccessJudge":
        check_folder_kind(path, "SuccessJudge")
        return super().from_pretrained(path, **kwargs)

    @property
    def frames(self) -> int:  # K: the judge contract (judge_window)
        return self.cfg.frames

    @torch.no_grad()
    def probability(self, frames, states, task: str = "") -> torch.Tensor:
        """The judge protocol: (frames, states, task) -> success probability (B,). Pass
        `judge.probability` wherever a judge callable is expected."""
        param = next(self.parameters())
        return torch.sigmoid(self.forward(torch.as_tensor(frames).to(param.device),
                                          torch.as_tensor(states).to(param.device)))


def judge_window(judge) -> int:
    """K, the number of last frames `judge` reads (see the module docstring)."""
    owner = getattr(judge, "__self__", judge)
    return int(getattr(owner, "frames", 1))


class StateDistanceJudge:
    """Success when a point of the last frame's state (object, fingertips) is within a threshold of the goal:
    a `StateSuccessRule` from the env, e.g. `StateDistanceJudge.for_task("reach-v3")`."""

    frames = 1

    def __init__(self, rule: StateSuccessRule):
        self.rule = rule
        self.offset = torch.tensor(rule.offset, dtype=torch.float32)  # e.g. the hand's body -> its fingertips

    @classmethod
    def for_task(cls, task: str) -> "StateDistanceJudge":
        """The simulator's own rule for a MetaWorld `task`."""
        return cls(state_success_rule(task))

    def describe(self) -> str:
        r = self.rule
        offset = f" + {list(r.offset)}" if any(r.offset) else ""
        return f"state rule: |state{list(r.point)}{offset} - state{list(r.goal)}| < {r.threshold * 100:g} cm"

    def __call__(self, frames, states, task: str = "") -> torch.Tensor:
        last = torch.as_tensor(states)[:, -1].float()
        point, goal = last[:, list(self.rule.point)] + self.offset, last[:, list(self.rule.goal)]
        return ((point - goal).norm(dim=1) < self.rule.threshold).float()


# ---------------------------------------------------------------------------------------------
@dataclass
class JudgeTrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    judge: JudgeNetConfig = field(default_factory=JudgeNetConfig)
    success_key: str = "next.success"
    val_episodes: int = 2  # the last episodes are held out to report accuracy
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    output_dir: str = "outputs/judge/metaworld_push"


def success_labels(clips: ClipDataset, key: str) -> np.ndarray:
    """Per cached frame success flag, in the cache's row order (episodes ascending, frames in order)."""
    hf = clips.lerobot_dataset.hf_dataset.with_format("numpy")
    if key not in hf.column_names:
        raise KeyError(f"success_key: {key!r} is not a feature of this dataset; it has {hf.column_names}")
    labels = np.asarray(hf[key]).reshape(-1).astype(bool)
    if len(labels) != len(clips.cache.actions):
        raise ValueError(f"success_key: {len(labels)} labels for {len(clips.cache.actions)} cached frames")
    return labels


def clip_label(clips: ClipDataset, labels: np.ndarray, index: int) -> float:
    """Success flag at the last frame of clip `index` (labels in cache row order)."""
    episode, first = clips.locate(index)
    last = first + clips.cfg.frame_stride * (clips.cfg.clip_frames - 1)
    return float(labels[int(clips.cache.episode_start[episode]) + last])


def _batch(clips: ClipDataset, labels: np.ndarray, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [clips[int(i)] for i in indices]
    return (torch.stack([item["images"] for item in items]), torch.stack([item["state"] for item in items]),
            torch.tensor([clip_label(clips, labels, int(i)) for i in indices]))


@torch.no_grad()
def judge_accuracy(judge, clips: ClipDataset, labels: np.ndarray, batch_size: int = 256) -> dict:
    correct, positives, total, tp, fp, fn = 0, 0, 0, 0, 0, 0
    for lo in range(0, len(clips), batch_size):
        frames, states, y = _batch(clips, labels, range(lo, min(lo + batch_size, len(clips))))
        pred = (judge(frames, states, "") >= 0.5).float().cpu()
        correct += int((pred == y).sum())
        tp += int(((pred == 1) & (y == 1)).sum())
        fp += int(((pred == 1) & (y == 0)).sum())
        fn += int(((pred == 0) & (y == 1)).sum())
        positives += int(y.sum())
        total += len(y)
    return {"accuracy": correct / total, "n": total, "positives": positives,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan")}


def train_judge(cfg: JudgeTrainConfig) -> Path:
    """Train a SuccessJudge on per-frame success flags; report held-out accuracy; save it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    torch.manual_seed(cfg.seed)
    check_local_root(cfg.dataset)
    meta = LeRobotDatasetMetadata(cfg.dataset.repo_id, root=cfg.dataset.root)
    episodes = cfg.dataset.episodes or list(range(meta.total_episodes))
    if cfg.val_episodes >= len(episodes):
        raise ValueError(f"val_episodes: {cfg.val_episodes} leaves no training episode out of {len(episodes)}")
    split = {"train": episodes[:len(episodes) - cfg.val_episodes], "val": episodes[len(episodes) - cfg.val_episodes:]}
    base = {**asdict(cfg.dataset), "clip_frames": cfg.judge.frames, "memory_frames": 0}
    clips = {name: ClipDataset(DatasetConfig(**{**base, "episodes": eps})) for name, eps in split.items() if eps}
    labels = {name: success_labels(c, cfg.success_key) for name, c in clips.items()}
    train = clips["train"]
    judge_cfg = JudgeNetConfig(**{**asdict(cfg.judge), "num_views": train.num_views,
                                  "image_size": cfg.dataset.image_size, "state_dim": train.state_dim,
                                  "camera_keys": train.camera_keys, "state_mean": train.stats["state_mean"],
                                  "state_std": train.stats["state_std"]})
    judge = SuccessJudge(config=asdict(judge_cfg))
    # Clip-level labels (success at the clip's last frame), balanced by weighting the rarer class.
    clip_labels = np.array([clip_label(train, labels["train"], i) for i in range(len(train))])
    pos = clip_labels.mean()
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-3))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=1e-4)
    rng = np.random.default_rng(cfg.seed)
    judge.train()
    for _ in tqdm(range(cfg.steps), desc="training the success judge", unit="step"):
        frames, states, y = _batch(train, labels["train"], rng.integers(len(train), size=cfg.batch_size))
        loss = nn.functional.binary_cross_entropy_with_logits(judge.forward(frames, states), y, pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    judge.eval()
    report = {"train": judge_accuracy(judge.probability, train, labels["train"]), "positive_fraction_train": float(pos),
              "episodes": split, "config": asdict(cfg)}
    if "val" in clips:
        report["val"] = judge_accuracy(judge.probability, clips["val"], labels["val"])
    out = Path(cfg.output_dir)
    judge.save_pretrained(out)
    (out / "judge_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("train", "val") if k in report}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    import draccus

    train_judge(draccus.parse(JudgeTrainConfig, args=argv))


if __name__ == "__main__":
    main()
