"""WorldModel: LeRobot keys in and out, batched and individually reset rollouts, clear errors."""

import numpy as np
import pytest
import torch

from worldmodel.memory import MemoryConfig
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel

KEYS = ["observation.images.corner", "observation.images.gripperPOV"]  # the conftest model's views


@pytest.fixture(scope="module")
def saved_model(tiny_world_model_dir):
    return tiny_world_model_dir  # 2 views at 32 px, frame_stride 4


def observations(B=3, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 255, (B, 32, 32, 3), dtype=np.uint8) for k in KEYS}
    obs["observation.state"] = rng.normal(size=(B, 39)).astype(np.float32)
    return obs


def world(path, B=3):
    return WorldModel.from_pretrained(path, batch_size=B, device="cpu",
                                      sampler_config=SamplerConfig(steps=2, window=2, memory=MemoryConfig(k=1)))


def test_reset_and_step_speak_the_env_keys(saved_model):
    w = world(saved_model)
    first = w.reset(observations())
    np.testing.assert_array_equal(first[KEYS[0]].numpy(), observations()[KEYS[0]])
    obs = w.step(np.zeros((3, 4, 4), np.float32))
    assert set(obs) == set(KEYS) | {"observation.state"}
    assert obs[KEYS[1]].shape == (3, 32, 32, 3) and obs[KEYS[1]].dtype == torch.uint8
    assert obs["observation.state"].shape == (3, 39)
    several = w.step(np.zeros((3, 12, 4), np.float32), return_all=True)  # three frames at once
    assert several[KEYS[0]].shape == (3, 3, 32, 32, 3)
    assert w.steps.tolist() == [16, 16, 16]


def test_actions_steer_the_imagined_frames(saved_model):
    a, b = world(saved_model), world(saved_model)
    a.reset(observations())
    b.reset(observations())
    left = a.step(np.full((3, 4, 4), -1.0, np.float32))
    right = b.step(np.full((3, 4, 4), 1.0, np.float32))
    assert (left[KEYS[0]].int() - right[KEYS[0]].int()).abs().max() > 0


def test_individual_resets_let_rollouts_run_at_different_steps(saved_model):
    w = world(saved_model)
    w.reset(observations())
    w.step(np.zeros((3, 8, 4), np.float32))
    w.reset(observations(seed=1), rollouts=[False, True, False])
    assert w.steps.tolist() == [8, 0, 8]
    assert w.sampler.frames_done.tolist() == [3, 1, 3]
    w.step(np.zeros((3, 4, 4), np.float32))
    assert w.steps.tolist() == [12, 4, 12]


def test_bad_input_names_what_is_wrong(saved_model):
    w = world(saved_model)
    obs = observations()
    with pytest.raises(ValueError, match="2 views expected"):
        w.reset({k: v for k, v in obs.items() if k != KEYS[1]})
    with pytest.raises(ValueError, match="32x32x3"):
        w.reset({**obs, KEYS[0]: np.zeros((3, 16, 16, 3), np.uint8)})
    with pytest.raises(ValueError, match="observation.state"):
        w.reset({**obs, "observation.state": np.zeros((3, 12), np.float32)})
    w.reset(obs)
    with pytest.raises(ValueError, match="action_dim=4"):
        w.step(np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError, match="frame_stride=4"):
        w.step(np.zeros((3, 3, 4), np.float32))
    nan = np.zeros((3, 4, 4), np.float32)
    nan[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.step(nan)


def test_encode_gives_the_latents_a_real_frame_is_held_as(saved_model):
    w = world(saved_model)
    latents = w.encode(observations())  # (B, K, V, C, h, w)
    assert latents.shape[:3] == (3, 1, len(KEYS))
    pixels = ((w.codec.decode(latents).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)
    for v, key in enumerate(KEYS):  # the embedded model's pixel codec round-trips exactly
        np.testing.assert_array_equal(pixels[:, 0, v].numpy(), observations()[key])
    with pytest.raises(ValueError, match="gripperPOV"):
        w.encode({k: v for k, v in observations().items() if k != KEYS[1]})
