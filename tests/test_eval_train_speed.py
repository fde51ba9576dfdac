"""eval.train_speed measures a real training step of the shipped design (memory frames and commanded pose included)."""

import torch

from eval.train_speed import SpeedConfig, measure


def test_tiny_preset_takes_a_training_step_with_its_memory_and_command():
    # The shipped presets anchor pixels on the episode's first frame (memory slot 0) and read the commanded pose;
    # a step without them raises, which the recipe's training-speed step once did.
    result = measure("tiny", SpeedConfig(presets=["tiny"], batch_size=1, steps=1, warmup=0), torch.device("cpu"))
    assert result["clips_per_s"] > 0
    assert result["clip_frames"] == 6
