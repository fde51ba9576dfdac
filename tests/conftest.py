"""Shared fixtures: one tiny MetaWorld recording per test session (2 cameras, 32x32, short episodes)."""

import os

import pytest

from data.metaworld.record import RecordConfig, record
from worldmodel.envs.metaworld import MetaWorldConfig

TINY_CAMERAS = ["corner", "gripperPOV"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["WORLDMODEL_CACHE"] = str(tmp_path_factory.mktemp("wm_cache"))


def tiny_record_config(root, episodes=3, steps=40, seed=0) -> RecordConfig:
    return RecordConfig(
        root=str(root), repo_id="test/tiny", episodes=episodes, seed=seed, workers=1,
        env=MetaWorldConfig(cameras=list(TINY_CAMERAS), image_size=32, max_episode_steps=steps),
    )


@pytest.fixture(autouse=True)
def _normal_scheduling_priority():
    """No test may leave the test process at another scheduling policy: a real-time policy is inherited by every
    later test's children and lets busy threads starve the machine (the AV1 encoder did this as root)."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    yield
    after = os.sched_getscheduler(0), os.sched_getparam(0)
    if after != before:
        os.sched_setscheduler(0, *before)
        pytest.fail(f"the test left the process at scheduling policy {after[0]} priority {after[1].sched_priority}")


@pytest.fixture(scope="session")
def make_record_config():
    return tiny_record_config


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory):
    """3 episodes x 40 steps, cameras corner + gripperPOV at 32x32."""
    root = tmp_path_factory.mktemp("datasets") / "tiny"
    record(tiny_record_config(root))
    return root


@pytest.fixture(scope="session")
def tiny_world_model_dir(tmp_path_factory):
    """A small random VideoDiT shaped like the tiny recording (corner + gripperPOV, 32 px, stride 4)."""
    import torch

    from worldmodel.model import build_config, make_model

    torch.manual_seed(0)
    cfg = build_config("tiny", dict(hidden_size=64, depth=2, num_heads=2), num_views=2, latent_size=32,
                       image_size=32, frame_stride=4, codec={"type": "pixel", "image_size": 32},
                       camera_keys=[f"observation.images.{c}" for c in TINY_CAMERAS])
    model = make_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("models") / "tiny_world"
    model.save_pretrained(path)
    return path
