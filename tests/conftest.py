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


@pytest.fixture(scope="session")
def make_record_config():
    return tiny_record_config


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory):
    """3 episodes x 40 steps, cameras corner + gripperPOV at 32x32."""
    root = tmp_path_factory.mktemp("datasets") / "tiny"
    record(tiny_record_config(root))
    return root
