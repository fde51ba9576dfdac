"""`wm`: one console command, one subcommand per job. Each subcommand parses its own dataclass config
with draccus (`wm train --model.preset=small --train.steps=2000`)."""

from __future__ import annotations

import sys


def _dataset(argv: list[str]) -> None:
    """Open a LeRobotDataset, build (or reuse) the decoded training cache, print a summary."""
    import draccus

    from worldmodel.dataset import ClipDataset, DatasetConfig

    cfg = draccus.parse(DatasetConfig, args=argv)
    clips = ClipDataset(cfg)
    meta = clips.lerobot_dataset.meta
    print(f"dataset      {cfg.root or cfg.repo_id}: {meta.total_episodes} episodes, {meta.total_frames} frames, "
          f"{meta.fps} fps")
    print(f"views        {clips.camera_keys} at {cfg.image_size}x{cfg.image_size}")
    print(f"clips        {len(clips)} of {cfg.clip_frames} frames, stride {cfg.frame_stride} env steps")
    print(f"action/state {clips.action_dim} / {clips.state_dim} dims")
    print(f"cache        {clips.cache_directory}")


def _train(argv: list[str]) -> None:
    """Train a world model on a LeRobotDataset (accelerate; see worldmodel/train.py)."""
    from worldmodel.train import main

    main(argv)


def _judge(argv: list[str]) -> None:
    """Train the success judge on a dataset's success flags and report held-out accuracy."""
    from worldmodel.judge import main

    main(argv)


def _eval(argv: list[str]) -> None:
    """Rank your LeRobot policies inside a world model from a dataset's episodes (imagined success)."""
    from worldmodel.evaluate import main

    main(argv)


def _imagine(argv: list[str]) -> None:
    """Roll policies in a world model; write the judged successes as a LeRobotDataset."""
    from worldmodel.imagine import main

    main(argv)


def _teleop(argv: list[str]) -> None:
    """Drive the robot inside the imagined world from a browser (web server on 127.0.0.1)."""
    from worldmodel.teleop import main

    main(argv)


SUBCOMMANDS = {
    "teleop": _teleop,
    "imagine": _imagine,
    "eval": _eval,
    "judge": _judge,
    "train": _train,
    "dataset": _dataset,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:10s} {fn.__doc__.strip().splitlines()[0]}" for name, fn in SUBCOMMANDS.items()]
        print("usage: wm <subcommand> [--field=value ...]\n\nsubcommands:\n" + "\n".join(lines))
        sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    SUBCOMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
