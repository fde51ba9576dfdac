"""Regenerate tests/artifacts/frozen_tiny.pt: what a seeded tiny VideoDiT computes today (one forward pass,
the training loss and a short streaming rollout). tests/test_frozen_numbers.py compares against it, so a
refactor cannot change the numbers silently; after an intended change, rerun

    python tests/artifacts/make_frozen.py

and commit the new file with the change that explains it."""

from __future__ import annotations

from pathlib import Path

import torch

from worldmodel.diffusion import DiffusionConfig, FlowMatching
from worldmodel.memory import MemoryConfig
from worldmodel.model import build_config, make_model
from worldmodel.sampler import SamplerConfig, StreamingSampler

PATH = Path(__file__).with_name("frozen_tiny.pt")
B, T, V, SIZE, STRIDE, A, S = 2, 4, 2, 32, 3, 4, 39


def seeded_model():
    """The tiny preset's design at test size, every weight drawn from a fixed seed (nothing zero)."""
    torch.manual_seed(0)
    cfg = build_config("tiny", dict(hidden_size=64, depth=2, num_heads=2, patch_size=16), num_views=V,
                       latent_size=SIZE, image_size=SIZE, frame_stride=STRIDE, camera_keys=["a", "b"],
                       command_gain=(0.05 * torch.eye(A)).tolist())  # the commanded pose moves with the actions
    model = make_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs():
    g = torch.Generator().manual_seed(1)
    return {"latents": torch.rand(B, T, V, 3, SIZE, SIZE, generator=g) * 2 - 1,
            "state": torch.randn(B, T, S, generator=g), "actions": torch.rand(B, T, STRIDE, A, generator=g) * 2 - 1,
            "memory_latents": torch.rand(B, 2, V, 3, SIZE, SIZE, generator=g) * 2 - 1,
            "command": torch.randn(B, T, 4, generator=g)}


@torch.no_grad()
def compute() -> dict[str, torch.Tensor]:
    model, x = seeded_model(), inputs()
    memory = {"latents": x["memory_latents"], "state": torch.zeros(B, 2, S), "frame_pos": -torch.ones(B, 2) * 3,
              "valid": torch.ones(B, 2, dtype=torch.bool)}
    loss, parts = FlowMatching(DiffusionConfig()).loss(model, x["latents"], x["state"], x["actions"],
                                                       generator=torch.Generator().manual_seed(2), memory=memory,
                                                       command=x["command"])
    sampler = StreamingSampler(model, SamplerConfig(steps=2, window=2, recent_frames=3,
                                                    memory=MemoryConfig(k=1, capacity=8)), B)
    sampler.reset(x["latents"][:, :1], x["state"][:, :1])
    frames, states = sampler.rollout(x["actions"].repeat(1, 2, 1, 1), torch.Generator().manual_seed(3))
    return {"loss": loss, "latent_loss": parts["latent_loss"], "state_loss": parts["state_loss"],
            "rollout_frames": frames, "rollout_states": states}


if __name__ == "__main__":
    torch.save(compute(), PATH)
    print(f"wrote {PATH}")
