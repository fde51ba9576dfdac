import json

import numpy as np

from eval.expert_trace import (GOAL, ExpertTraceConfig, command, expert_trace, imagined_traces, real_traces,
                                trace_summary)
from eval.fidelity import HAND, OBJECT


def test_the_summary_reads_the_lowest_hand_the_travel_the_goal_distance_and_the_object_height_in_cm():
    states = np.zeros((1, 4, 39))
    states[0, :, HAND[2]] = [0.20, 0.12, 0.055, 0.06]  # the hand comes down to 5.5 cm at frame 2
    states[0, :, HAND[0]] = [0.0, 0.0, 0.004, 0.1]
    states[0, :, OBJECT[0]] = [0.0, 0.0, 0.0, 0.03]  # the object then moves 3 cm in x and 4 cm in y
    states[0, :, OBJECT[1]] = [0.0, 0.0, 0.0, 0.04]
    states[0, :, OBJECT[2]] = [0.02, 0.02, 0.025, 0.03]  # 2.5 cm high when the hand is lowest
    states[0, :, GOAL[0]] = 0.03
    states[0, :, GOAL[1]] = 0.10
    summary = trace_summary(states)
    assert np.allclose(summary["lowest_hand_z_cm"], [5.5])
    assert np.allclose(summary["object_travel_cm"], [5.0])
    assert np.allclose(summary["final_object_to_goal_cm"], [6.0])
    assert np.allclose(summary["final_object_to_goal_3d_cm"], [np.hypot(6.0, 3.0)])  # the object ends 3 cm up
    assert np.allclose(summary["hand_object_xy_at_lowest_cm"], [0.4])
    assert np.allclose(summary["object_z_at_lowest_cm"], [2.5])


def test_the_twins_start_from_one_state_and_the_report_holds_both_traces(tiny_world_model_dir, tmp_path):
    import torch

    from worldmodel.model import VideoDiT

    cfg = ExpertTraceConfig(model=str(tiny_world_model_dir), episodes=2, max_episode_steps=8, run="toy",
                            results_dir=str(tmp_path))
    model = VideoDiT.from_pretrained(cfg.model).float().eval()
    initials, real = real_traces(cfg, model)
    with torch.no_grad():
        imagined = imagined_traces(cfg, model, initials)
    assert real.shape == imagined.shape == (2, 3, 39)  # 8 steps at stride 4: the first frame and 2 more
    assert np.allclose(imagined[:, 0], real[:, 0], atol=1e-6)  # imagination starts from the real first state
    assert not np.allclose(imagined[:, -1], real[:, -1], atol=1e-3)  # an untrained model does not follow it

    result = expert_trace(cfg)
    saved = json.loads((tmp_path / "expert_trace_toy.json").read_text())
    assert saved["real"] == result["real"] and saved["imagined"] == result["imagined"]
    assert np.allclose(result["real"]["lowest_hand_z_cm"], trace_summary(real)["lowest_hand_z_cm"])
    assert "| 1 |" in (tmp_path / "expert_trace_toy.md").read_text()


def test_the_command_names_the_sampler_settings_that_differ_from_the_default():
    from worldmodel.memory import MemoryConfig
    from worldmodel.sampler import SamplerConfig

    cfg = ExpertTraceConfig(sampler=SamplerConfig(steps=16, memory=MemoryConfig(k=0)), run="s16")
    assert command(cfg).endswith("--seed=1000 --sampler.steps=16 --sampler.memory.k=0 --run=s16")
    assert "--sampler" not in command(ExpertTraceConfig())


def test_the_traced_policy_is_the_one_named_in_both_worlds_and_in_the_command(tiny_world_model_dir):
    import torch

    from worldmodel.model import VideoDiT

    model = VideoDiT.from_pretrained(str(tiny_world_model_dir)).float().eval()
    traces = {}
    for policy in ("expert", "random"):
        cfg = ExpertTraceConfig(model=str(tiny_world_model_dir), episodes=1, max_episode_steps=8, policy=policy)
        initials, real = real_traces(cfg, model)
        with torch.no_grad():
            traces[policy] = real, imagined_traces(cfg, model, initials)
    # the first frames are the same env seed; the random policy moves the hand elsewhere in both worlds
    assert np.allclose(traces["expert"][0][:, 0], traces["random"][0][:, 0])
    assert not np.allclose(traces["expert"][0][:, -1, HAND], traces["random"][0][:, -1, HAND], atol=1e-4)
    assert not np.allclose(traces["expert"][1][:, -1], traces["random"][1][:, -1], atol=1e-4)
    assert "--policy=goal_bias_7cm" in command(ExpertTraceConfig(policy="goal_bias_7cm"))
    assert "--policy" not in command(ExpertTraceConfig())
