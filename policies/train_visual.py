"""Recipe: train a small image-based LeRobot policy (ACT) on the recorded demonstrations with LeRobot's
own trainer (`lerobot-train`), keeping checkpoints at several training budgets. Undertrained and
well-trained checkpoints of the same policy are a second, realistic policy family to rank.

    python -m policies.train_visual --dataset_root=outputs/datasets/metaworld_push \\
        --budgets='[500,2000,8000]' --output_dir=outputs/policies/act_push

Checkpoints land in `<output_dir>/checkpoints/<step>/pretrained_model` (LeRobot's layout) and load with
`worldmodel.policy.LeRobotPolicy.from_pretrained`. The vision backbone starts from random weights
(`pretrained_backbone_weights=null`): nothing is downloaded.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path


@dataclass
class TrainVisualConfig:
    dataset_root: str = "outputs/datasets/metaworld_push"
    repo_id: str = "local/metaworld_push"
    budgets: list[int] = field(default_factory=lambda: [500, 2000, 8000])  # training steps to keep
    output_dir: str = "outputs/policies/act_push"
    batch_size: int = 32
    dim_model: int = 128
    chunk_size: int = 16
    device: str = "cuda"
    init_from: str | None = None  # a pretrained_model folder to fine-tune (its architecture is kept)
    extra_args: list[str] = field(default_factory=list)  # passed through to lerobot-train


def lerobot_train_command(cfg: TrainVisualConfig) -> list[str]:
    save_freq = reduce(math.gcd, cfg.budgets)  # every budget is a multiple: each one gets a checkpoint
    if cfg.init_from is not None:  # fine-tuning: lerobot takes type and shape from the checkpoint
        policy = [f"--policy.path={cfg.init_from}"]
    else:
        policy = ["--policy.type=act", "--policy.pretrained_backbone_weights=null",
                  f"--policy.dim_model={cfg.dim_model}", f"--policy.dim_feedforward={4 * cfg.dim_model}",
                  f"--policy.chunk_size={cfg.chunk_size}", f"--policy.n_action_steps={cfg.chunk_size}"]
    return [sys.executable, "-m", "lerobot.scripts.lerobot_train",
            f"--dataset.repo_id={cfg.repo_id}", f"--dataset.root={cfg.dataset_root}", *policy,
            "--policy.push_to_hub=false", f"--policy.device={cfg.device}", f"--steps={max(cfg.budgets)}",
            f"--save_freq={save_freq}", f"--batch_size={cfg.batch_size}", f"--output_dir={cfg.output_dir}",
            "--wandb.enable=false", "--eval_freq=0", *cfg.extra_args]


def train_visual(cfg: TrainVisualConfig) -> list[Path]:
    """Runs lerobot-train; returns the checkpoint folders at the requested budgets."""
    subprocess.run(lerobot_train_command(cfg), check=True)
    checkpoints = [Path(cfg.output_dir) / "checkpoints" / f"{b:06d}" / "pretrained_model" for b in cfg.budgets]
    missing = [str(c) for c in checkpoints if not c.exists()]
    if missing:
        raise RuntimeError(f"lerobot-train finished without the checkpoints {missing}")
    for c in checkpoints:
        print(c)
    return checkpoints


def main() -> None:
    import draccus

    train_visual(draccus.parse(TrainVisualConfig))


if __name__ == "__main__":
    main()
