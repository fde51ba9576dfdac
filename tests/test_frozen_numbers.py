"""Frozen numbers: a seeded tiny model's loss and streaming rollout equal what was stored when they were last
meant to change (tests/artifacts/make_frozen.py regenerates them). Tolerances allow other CPUs' float
rounding, not a changed computation."""

import importlib.util
from pathlib import Path

import torch

ARTIFACTS = Path(__file__).parent / "artifacts"


def load_maker():
    spec = importlib.util.spec_from_file_location("make_frozen", ARTIFACTS / "make_frozen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_and_rollout_match_the_stored_numbers():
    maker = load_maker()
    stored = torch.load(maker.PATH)
    now = maker.compute()
    assert set(now) == set(stored)
    for key in ("loss", "latent_loss", "state_loss"):
        torch.testing.assert_close(now[key], stored[key], rtol=1e-4, atol=1e-6, msg=key)
    for key in ("rollout_frames", "rollout_states"):
        torch.testing.assert_close(now[key], stored[key], rtol=1e-3, atol=1e-4, msg=key)
    assert now["rollout_frames"].shape == (2, 8, 2, 3, 32, 32)
