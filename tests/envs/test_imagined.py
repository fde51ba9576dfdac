"""The imagined env looks exactly like the real one to a policy, and steps at the control rate."""

import numpy as np
import pytest
import torch

from worldmodel.envs.imagined import ImaginedVectorEnv, make_env
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


@pytest.fixture(scope="module")
def real_env():
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=["corner", "gripperPOV"], image_size=32))
    yield env
    env.close()


def imagined(path, n=2, judge=None, steps=8):
    world = WorldModel.from_pretrained(path, batch_size=n, device="cpu", sampler_config=SamplerConfig(steps=2, window=2))
    return make_env(world, n_envs=n, judge=judge, max_episode_steps=steps, task="push-v3")


def initial(real_env, n=2):
    obs = [real_env.reset(seed=s)[0] for s in range(n)]
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


def test_same_spaces_as_the_real_env(real_env, tiny_world_model_dir):
    env = imagined(tiny_world_model_dir)
    assert env.single_observation_space == real_env.observation_space
    assert env.single_action_space == real_env.action_space
    obs, info = env.reset(options={"observations": initial(real_env)})
    assert env.observation_space.contains(obs)
    assert set(obs) == set(real_env.observation_space.spaces) and "is_success" in info


def test_steps_at_the_control_rate_and_truncates(real_env, tiny_world_model_dir):
    calls = []

    def judge(frames, states, task):
        calls.append((frames.shape, states.shape, task))
        return torch.tensor([0.9, 0.1])

    judge.frames = 2  # the judge says how many last frames it reads
    env = imagined(tiny_world_model_dir, judge=judge, steps=8)
    obs0, _ = env.reset(options={"observations": initial(real_env)})
    for t in range(1, 9):
        obs, reward, terminated, truncated, info = env.step(np.full((2, 4), 0.5, np.float32))
        new_frame = t % 4 == 0  # frame_stride 4: a new frame every 4 actions
        if not new_frame:  # between frames the observation is held, exactly
            assert all(np.array_equal(obs[k], obs0[k]) for k in obs)
        assert len(calls) == t // 4  # the world model (and the judge) ran once per completed frame
        obs0 = obs
        assert truncated.all() == (t == 8)
    assert calls[0][0] == (2, 2, 2, 3, 32, 32) and calls[0][1] == (2, 2, 39) and calls[0][2] == "push-v3"
    assert info["is_success"].tolist() == [True, False] and reward.tolist() == [1.0, 0.0]


def test_bad_use_is_refused(real_env, tiny_world_model_dir):
    env = imagined(tiny_world_model_dir)
    with pytest.raises(ValueError, match="observations"):
        env.reset()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((2, 4), np.float32))
    env.reset(options={"observations": initial(real_env)})
    with pytest.raises(ValueError, match=r"actions: expected \(2, 4\)"):
        env.step(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="n_envs"):
        make_env(WorldModel.from_pretrained(tiny_world_model_dir, batch_size=2, device="cpu"), n_envs=3)


def test_single_env_form_matches_the_real_env(real_env, tiny_world_model_dir):
    from worldmodel.envs.imagined import ImaginedEnv

    world = WorldModel.from_pretrained(tiny_world_model_dir, batch_size=1, device="cpu",
                                       sampler_config=SamplerConfig(steps=2, window=2))
    env = ImaginedEnv(world, max_episode_steps=4)
    assert env.observation_space == real_env.observation_space and env.action_space == real_env.action_space
    real_obs, _ = real_env.reset(seed=0)
    obs, info = env.reset(options={"observations": real_obs})
    assert env.observation_space.contains(obs) and info["is_success"] == False  # noqa: E712
    for t in range(4):
        obs, reward, terminated, truncated, info = env.step(real_env.action_space.sample())
    assert env.observation_space.contains(obs) and truncated and isinstance(reward, float)
    with pytest.raises(ValueError, match="batch_size"):
        ImaginedEnv(WorldModel.from_pretrained(tiny_world_model_dir, batch_size=2, device="cpu"))


def test_the_judge_window_travels_with_the_judge(real_env, tiny_world_model_dir):
    """A SuccessJudge trained on 3 frames gets 3 frames from the env with no setting anywhere (right after a
    reset the oldest frame is repeated); its forward refuses any other number."""
    from worldmodel.judge import JudgeNetConfig, StateDistanceJudge, SuccessJudge, judge_window

    from dataclasses import asdict

    judge = SuccessJudge(config=asdict(JudgeNetConfig(frames=3, num_views=2, image_size=32))).eval()
    assert judge_window(judge.probability) == 3 and judge_window(StateDistanceJudge.for_task("push-v3")) == 1
    env = imagined(tiny_world_model_dir, judge=judge.probability, steps=8)
    env.reset(options={"observations": initial(real_env)})
    for _ in range(8):
        _, _, _, _, info = env.step(np.zeros((2, 4), np.float32))
    assert info["success_probability"].shape == (2,) and env.judge_frames == 3
