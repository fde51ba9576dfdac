"""Policies: the degraded-expert family and the LeRobot adapter, in the real and the imagined env."""

import numpy as np
import pytest
import torch

from policies.metaworld import FAMILY, Degradation, DegradedExpert, make_family
from worldmodel.envs.imagined import make_env
from worldmodel.envs.metaworld import MetaWorldConfig, MetaWorldMultiViewEnv
from worldmodel.policy import CallablePolicy, LeRobotPolicy
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


def test_family_has_eight_or_more_distinct_policies():
    family = make_family()
    assert len(family) >= 8 and len({p.name for p in family}) == len(family)
    with pytest.raises(ValueError, match="unknown"):
        make_family(names=["expert", "nope"])


def test_degradations_do_what_they_say():
    env = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=[]))
    obs, _ = env.reset(seed=0)
    state_only = {"observation.state": np.stack([obs["observation.state"]] * 3)}  # acts on state alone
    expert = DegradedExpert("expert", Degradation()).select_action(state_only)
    assert expert.shape == (3, 4) and np.allclose(expert[0], expert[1])
    late = DegradedExpert("late", Degradation(latency=2))
    assert np.allclose(late.select_action(state_only), 0) and np.allclose(late.select_action(state_only), 0)
    np.testing.assert_allclose(late.select_action(state_only), expert)  # the action from 2 steps ago
    weak = DegradedExpert("weak", Degradation(action_scale=0.5)).select_action(state_only)
    np.testing.assert_allclose(weak, expert * 0.5, atol=1e-6)
    biased = DegradedExpert("bias", Degradation(goal_bias=[0.3, 0, 0])).select_action(state_only)
    assert biased.shape == (3, 4)
    noisy = DegradedExpert("noisy", Degradation(noise_std=0.5))
    noisy.reset(seed=1)
    a = noisy.select_action(state_only)
    noisy.reset(seed=1)
    np.testing.assert_array_equal(a, noisy.select_action(state_only))  # seeded
    assert not np.allclose(a, expert)
    env.close()


def tiny_act_policy():
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(0)
    cfg = ACTConfig(
        input_features={"observation.images.corner": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (39,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        chunk_size=4, n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1,
        n_decoder_layers=1, use_vae=False, pretrained_backbone_weights=None, device="cpu")
    stats = {"observation.state": {"mean": torch.zeros(39), "std": torch.ones(39)},
             "action": {"mean": torch.zeros(4), "std": torch.ones(4) * 0.5},
             "observation.images.corner": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    return LeRobotPolicy(ACTPolicy(cfg).eval(), pre, post, task="push", name="tiny_act")


def test_lerobot_adapter_and_experts_run_in_both_envs(tiny_world_model_dir):
    real = MetaWorldMultiViewEnv(MetaWorldConfig(cameras=["corner", "gripperPOV"], image_size=32))
    world = WorldModel.from_pretrained(tiny_world_model_dir, batch_size=2, device="cpu",
                                       sampler_config=SamplerConfig(steps=2, window=2))
    imagined = make_env(world, n_envs=2, max_episode_steps=8)
    first = [real.reset(seed=s)[0] for s in range(2)]
    start = {k: np.stack([o[k] for o in first]) for k in first[0]}
    for policy in (tiny_act_policy(), make_family(names=["noise_0.5"])[0],
                   CallablePolicy(lambda obs: np.zeros((len(obs["observation.state"]), 4)), "still")):
        policy.reset()
        obs, _ = real.reset(seed=0)
        for _ in range(5):
            batch = {k: v[None] for k, v in obs.items()}
            action = policy.select_action(batch)
            assert action.shape == (1, 4) and np.isfinite(action).all()
            obs, *_ = real.step(action[0])
        policy.reset()
        obs, _ = imagined.reset(options={"observations": start})
        for _ in range(8):
            action = policy.select_action(obs)
            assert action.shape == (2, 4) and np.isfinite(action).all()
            obs, _, _, truncated, info = imagined.step(np.clip(action, -1, 1))
        assert truncated.all()
    with pytest.raises(KeyError, match="observation.images.corner"):
        tiny_act_policy().select_action({"observation.state": np.zeros((1, 39), np.float32)})
    real.close()


def test_wm_eval_ranks_saved_lerobot_policies(tiny_world_model_dir, tiny_dataset_root, tmp_path):
    """LeRobot policies saved the LeRobot way load through LeRobotPolicy.from_pretrained and run in imagination."""
    import json

    from worldmodel.dataset import DatasetConfig
    from worldmodel.evaluate import EvalConfig, evaluate
    from worldmodel.judge import JudgeNetConfig, SuccessJudge

    paths = []
    for i in range(2):
        policy = tiny_act_policy()
        path = tmp_path / f"act_{i}"
        policy.policy.save_pretrained(path)
        policy.preprocessor.save_pretrained(path)
        policy.postprocessor.save_pretrained(path)
        paths.append(str(path))
    judge = SuccessJudge(config={**JudgeNetConfig(frames=2, width=8, num_views=2, image_size=32).__dict__})
    judge.save_pretrained(tmp_path / "judge")
    real_outcomes = tmp_path / "real.json"  # one real trial of each policy, from episode 0's initial state
    real_outcomes.write_text(json.dumps({paths[0]: [1], paths[1]: [0]}))
    report = evaluate(EvalConfig(
        model=str(tiny_world_model_dir), judge=str(tmp_path / "judge"), policies=paths,
        dataset=DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny"), episodes=2, max_episode_steps=8,
        sampler=SamplerConfig(steps=2, window=2), device="cpu", output=str(tmp_path / "eval.json"),
        real_outcomes=str(real_outcomes)))
    for r, real in zip(report["policies"], (1, 0)):  # estimated from the real trial and both imagined episodes
        estimate = r["real_success_estimate"]
        assert estimate["n_real"] == 1 and estimate["n_imagined"] == 2 and estimate["real_only"]["value"] == real
        assert estimate["estimate"]["low"] <= estimate["estimate"]["value"] <= estimate["estimate"]["high"]
    assert {row["name"] for row in report["comparison"]["ranking"]} == set(paths)
    assert [r["policy"] for r in report["policies"]] == paths and sorted(report["ranking"]) == sorted(paths)
    for r in report["policies"]:  # success is the judge's verdict on each episode's last frames, averaged
        assert r["n_episodes"] == 2
        assert r["per_episode_success"] == [p >= 0.5 for p in r["per_episode_probability"]]
        assert r["imagined_success"] == pytest.approx(np.mean(r["per_episode_success"]))
    rates = {r["policy"]: r["imagined_success"] for r in report["policies"]}
    assert [rates[p] for p in report["ranking"]] == sorted(rates.values(), reverse=True)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["task"].startswith("Push the puck") and "final frame" in saved["success_rule"]


def test_wm_eval_checks_real_outcomes_before_any_rollout(tmp_path):
    from worldmodel.evaluate import EvalConfig, evaluate

    path = tmp_path / "real.json"
    path.write_text('{"a": [1, 0.5]}')
    cfg = EvalConfig(model="nowhere", policies=["a"], episodes=4, real_outcomes=str(path))
    with pytest.raises(ValueError, match=r"real_outcomes: .*real.json\['a'\] must be a list of 1 to episodes - 1 = 3"):
        evaluate(cfg)
    path.write_text('{"b": [1]}')
    with pytest.raises(ValueError, match=r"names policies \['b'\]"):
        evaluate(cfg)
    with pytest.raises(FileNotFoundError, match="real_outcomes: .*missing.json"):
        evaluate(EvalConfig(model="nowhere", policies=["a"], real_outcomes=str(tmp_path / "missing.json")))


@torch.no_grad()
def test_the_lerobot_adapter_converts_images_unnormalises_actions_and_resets_the_queue():
    """Behind the batched protocol ACT gets LeRobot's float CHW images in [0, 1], its action comes back in env
    units (the stats' action std is 0.5), it reads the pictures, and reset() empties its action queue."""
    adapter = tiny_act_policy()
    rng = np.random.default_rng(0)
    obs = {"observation.images.corner": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
           "observation.state": rng.normal(size=(2, 39)).astype(np.float32)}
    adapter.reset()
    first = adapter.select_action(obs)
    adapter.reset()
    lerobot_batch = {"observation.images.corner": torch.from_numpy(obs["observation.images.corner"]).permute(0, 3, 1, 2)
                     .float() / 255.0, "observation.state": torch.from_numpy(obs["observation.state"]),
                     "task": ["push", "push"]}
    normalised = adapter.policy.select_action(adapter.preprocessor(lerobot_batch)).numpy()
    np.testing.assert_allclose(first, normalised * 0.5, rtol=1e-5, atol=1e-6)  # mean 0, std 0.5
    adapter.reset()
    assert np.allclose(adapter.select_action(obs), first)  # reset: the queue starts again from this observation
    second = adapter.select_action(obs)  # the next action of the same chunk, not a recomputation
    assert not np.allclose(second, first)
    adapter.reset()
    other = {**obs, "observation.images.corner": 255 - obs["observation.images.corner"]}
    assert not np.allclose(adapter.select_action(other), first)  # it reads the picture
