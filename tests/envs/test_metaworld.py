import numpy as np
import pytest

from worldmodel.envs.metaworld import POSE_SLICE, MetaWorldConfig, MetaWorldMultiViewEnv


@pytest.fixture(scope="module")
def env():
    env = MetaWorldMultiViewEnv(MetaWorldConfig(image_size=32, max_episode_steps=10))
    yield env
    env.close()


def test_observation_keys_and_spaces(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {"observation.images.corner", "observation.images.corner2",
                        "observation.images.gripperPOV", "observation.state"}
    assert env.observation_space.contains(obs)
    assert info["is_success"] is False
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(info["is_success"], bool) and np.isfinite(reward)


def test_seeded_reset_reproduces_the_scene(env):
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["observation.state"][4:7], c["observation.state"][4:7])  # the puck moved


def test_episode_truncates_at_max_steps(env):
    env.reset(seed=0)
    for _ in range(9):
        assert not env.step(np.zeros(4))[3]
    assert env.step(np.zeros(4))[3]


def test_camera_parameters_project_the_puck_onto_red_pixels():
    """Extrinsics/intrinsics agree with the (upright) rendered images: the puck is red in every view."""
    env = MetaWorldMultiViewEnv(MetaWorldConfig(image_size=128))
    obs, _ = env.reset(seed=3)
    puck = obs["observation.state"][4:7]
    for cam, p in env.camera_parameters().items():
        camera_point = p["extrinsics"][:3, :3] @ puck + p["extrinsics"][:3, 3]
        assert camera_point[2] > 0, f"{cam}: puck behind the camera"
        u, v, w = p["intrinsics"] @ camera_point
        pixel = obs[f"observation.images.{cam}"][int(v / w), int(u / w)].astype(int)
        assert pixel[0] > 60 and pixel[0] > 2 * pixel[1] and pixel[0] > 2 * pixel[2], (cam, pixel)
    np.testing.assert_allclose(env.end_effector_pose, obs["observation.state"][POSE_SLICE], atol=1e-6)
    env.close()


def test_image_sizes_128_and_256_render():
    for size in (128, 256):
        env = MetaWorldMultiViewEnv(MetaWorldConfig(image_size=size, cameras=["corner2"]))
        obs, _ = env.reset(seed=0)
        assert obs["observation.images.corner2"].shape == (size, size, 3)
        assert obs["observation.images.corner2"].std() > 10  # a real picture, not a blank buffer
        env.close()


def test_bad_input_errors(env):
    with pytest.raises(ValueError, match="cameras"):
        MetaWorldMultiViewEnv(MetaWorldConfig(cameras=["nope"]))
    with pytest.raises(ValueError, match="task"):
        MetaWorldMultiViewEnv(MetaWorldConfig(task="fly-v3"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, np.nan, 0, 0]))


def test_stepping_without_rendering_changes_nothing_but_the_pictures_returned(env):
    """eval.rank steps state policies without rendering between kept frames: the same physics, and the frame
    rendered after them is the one a fully rendered rollout shows."""
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    env.reset(seed=3)
    rendered = [env.step(a) for a in actions]
    env.reset(seed=3)
    quiet = [env.step_state_only(a) for a in actions[:-1]] + [env.step(actions[-1])]
    assert set(quiet[0][0]) == {"observation.state"}
    for (obs_a, reward_a, *_), (obs_b, reward_b, *_) in zip(rendered, quiet):
        np.testing.assert_array_equal(obs_a["observation.state"], obs_b["observation.state"])
        assert reward_a == reward_b
    for key in rendered[-1][0]:
        np.testing.assert_array_equal(rendered[-1][0][key], quiet[-1][0][key])
    assert not np.array_equal(rendered[0][0]["observation.state"], rendered[-1][0]["observation.state"])
