"""`wm train` end to end: a usable checkpoint, actions that matter, exact resume after a kill, two processes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worldmodel.dataset import ClipDataset, DatasetConfig
from worldmodel.diffusion import sample_full_sequence
from worldmodel.model import VideoDiT
from worldmodel.train import main as train_main


def train_args(dataset_root, output_dir, steps, **extra) -> list[str]:
    args = {
        "dataset.root": dataset_root, "dataset.repo_id": "test/tiny", "dataset.camera_keys": "[corner,gripperPOV]",
        "dataset.image_size": 32, "dataset.frame_stride": 3, "dataset.clip_frames": 4, "dataset.memory_frames": 2,
        "model.preset": "tiny", "model.hidden_size": 96, "model.depth": 3,
        "train.steps": steps, "train.batch_size": 16, "train.lr": 2e-3, "train.warmup_steps": 10,
        "train.schedule": "constant_with_warmup", "train.num_workers": 0, "train.val_episodes": 1,
        "train.val_clips": 4, "train.val_sampling_steps": 4, "train.log_every": 5,
        "output_dir": output_dir, **extra,
    }
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="module")
def trained(tiny_dataset_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    train_main(train_args(tiny_dataset_root, out, 300, **{"train.val_every": 150, "train.checkpoint_every": 150}))
    return out


def test_train_writes_a_self_contained_checkpoint(trained):
    config = json.loads((trained / "train_config.json").read_text())
    assert config["train"]["model"]["preset"] == "tiny" and config["episodes"]["val"] == [2]
    assert (trained / "checkpoints" / "latest").read_text() == "step_000300"
    assert (trained / "checkpoints" / "step_000150" / "model" / "train_config.json").exists()
    assert list((trained / "samples").glob("step_000300.png"))
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert "val/psnr_one_step" in metrics[-1] and "val/psnr_open_loop" in metrics[-1]

    model = VideoDiT.from_pretrained(trained / "model")  # the folder alone is enough
    cfg = model.cfg
    assert cfg.camera_keys == ["observation.images.corner", "observation.images.gripperPOV"]
    assert (cfg.image_size, cfg.frame_stride, cfg.num_views, cfg.fps) == (32, 3, 2, 80)
    assert cfg.codec == {"type": "pixel", "image_size": 32}
    assert len(cfg.action_mean) == 4 and len(cfg.state_std) == 39


@torch.no_grad()
def test_the_trained_residual_model_predicts_change_better_than_copying(trained, tiny_dataset_root):
    """The default design starts as "copy the last frame" (zeroed output layers); training must beat that
    on the training loss, with the same clips, noise levels and noise for both."""
    from worldmodel.diffusion import FlowMatching

    model = VideoDiT.from_pretrained(trained / "model").eval()
    assert model.cfg.predict_residual
    copy = VideoDiT.from_pretrained(trained / "model").eval()
    # every output path at zero (the commanded pose's too): the model that copies its anchor
    for layer in (copy.out_latent, copy.out_state, copy.actions_to_state, copy.command_to_state):
        layer.weight.zero_()
        layer.bias.zero_()
    clips = ClipDataset(DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny",
                                      camera_keys=["corner", "gripperPOV"], image_size=32, frame_stride=3,
                                      clip_frames=4, memory_frames=2, episodes=[0, 1]))
    clips.attach_commands(*model.command_parameters())
    batch = torch.utils.data.default_collate([clips[i] for i in range(0, len(clips), 3)])

    def loss(m):
        generator = torch.Generator().manual_seed(0)
        memory = {"latents": batch["memory_images"], "state": m.normalize_state(batch["memory_state"]),
                  "frame_pos": batch["memory_offset"], "valid": batch["memory_valid"]}
        return sum(FlowMatching().loss(m, batch["images"], m.normalize_state(batch["state"]), batch["actions"],
                                       batch["actions_is_pad"], generator, memory, batch["command"])[0].item()
                   for _ in range(4))

    assert loss(model) < 0.8 * loss(copy), (loss(model), loss(copy))


@torch.no_grad()
def test_actions_change_the_prediction_and_dropped_actions_are_unconditional(trained, tiny_dataset_root):
    model = VideoDiT.from_pretrained(trained / "model").eval()
    seen = ClipDataset(DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny",
                                         camera_keys=["corner", "gripperPOV"], image_size=32, frame_stride=3,
                                         clip_frames=4, episodes=[0, 1]))
    batch = torch.utils.data.default_collate([seen[i] for i in range(0, len(seen), 6)])
    flipped = batch["actions"].clone()
    flipped[..., :3] = -flipped[..., :3]  # move the other way

    def rollout(actions, **kwargs):
        return sample_full_sequence(model, batch["images"][:, :1], batch["state"][:, :1], actions, num_steps=4,
                                    actions_is_pad=batch["actions_is_pad"],
                                    generator=torch.Generator().manual_seed(0), **kwargs)

    frames, state = rollout(batch["actions"])
    frames_flipped, state_flipped = rollout(flipped)
    hand_true = batch["state"][:, 1:, :3]
    err_true = (state[..., :3] - hand_true).abs().mean()
    err_flipped = (state_flipped[..., :3] - hand_true).abs().mean()
    # The recorded actions explain the motion (a model that ignored them would score a ratio near 1; the
    # residual design measured 0.72 after these 300 steps, where whole-frame prediction had more margin).
    assert err_true < 0.8 * err_flipped, (err_true, err_flipped)
    assert (frames - frames_flipped).abs().mean() > 1e-3  # and the pictures differ

    # Guidance scale 0 = actions dropped: the same prediction whatever the actions are.
    uncond, _ = rollout(batch["actions"], guidance_scale=0.0)
    uncond_flipped, _ = rollout(flipped, guidance_scale=0.0)
    torch.testing.assert_close(uncond, uncond_flipped)
    assert (uncond - frames).abs().mean() > 1e-4


def _run_until_checkpoint_then_kill(args: list[str], latest: Path, timeout=240) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "worldmodel.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not latest.exists():
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, children included
    proc.wait()
    return int(latest.read_text().split("_")[1])


def test_killed_training_resumes_exactly(tiny_dataset_root, tmp_path):
    common = {"train.checkpoint_every": 5, "train.val_every": 10**6}
    killed = tmp_path / "killed"
    saved_step = _run_until_checkpoint_then_kill(train_args(tiny_dataset_root, killed, 10**6, **common),
                                                 killed / "checkpoints" / "latest")
    target = saved_step + 7
    train_main(train_args(tiny_dataset_root, killed, target, **common, resume="true"))
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == saved_step and summary["steps"] == target

    straight = tmp_path / "straight"
    train_main(train_args(tiny_dataset_root, straight, target, **common))
    name = f"step_{target:06d}"
    resumed_weights = load_file(killed / "checkpoints" / name / "model.safetensors")
    straight_weights = load_file(straight / "checkpoints" / name / "model.safetensors")
    for key, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=0, atol=0, msg=key)
    # The EMA weights (a separate state) also continue exactly.
    resumed_ema = load_file(killed / "model" / "diffusion_pytorch_model.safetensors")
    straight_ema = load_file(straight / "model" / "diffusion_pytorch_model.safetensors")
    for key, value in straight_ema.items():
        torch.testing.assert_close(resumed_ema[key], value, rtol=0, atol=0, msg=key)


def test_existing_run_is_not_overwritten_without_resume(trained, tiny_dataset_root):
    with pytest.raises(FileExistsError, match="--resume=true"):
        train_main(train_args(tiny_dataset_root, trained, 10))


def test_two_processes_train_and_agree(tiny_dataset_root, tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.x: `--cpu --num_processes 2` starts a single process unless MPI is set up; torchrun with
    # gloo on CPU is `--multi_gpu` plus ACCELERATE_USE_CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "worldmodel.train",
           *train_args(tiny_dataset_root, out, 6, **{"train.batch_size": 4, "train.checkpoint_every": 3,
                                                      "train.val_every": 6})]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 6
    first, second = summary["param_checksums_per_process"]
    assert first == second
    assert (out / "checkpoints" / "step_000006" / "random_states_1.pkl").exists()


def test_a_time_budget_stops_training_and_counts_over_resumes(tiny_dataset_root, tmp_path):
    out = tmp_path / "budget"
    budget = {"train.max_minutes": 0.05, "train.checkpoint_every": 10**6, "train.val_every": 10**6,
              "train.batch_size": 4}
    train_main(train_args(tiny_dataset_root, out, 10**6, **budget))
    summary = json.loads((out / "train_summary.json").read_text())
    assert 0 < summary["steps"] < 10**6 and 3.0 <= summary["wall_seconds"] < 60
    assert summary["device"].startswith("cpu")
    latest = (out / "checkpoints" / "latest").read_text()  # the stop wrote a checkpoint and the model
    assert latest == f"step_{summary['steps']:06d}" and (out / "model" / "config.json").exists()
    state = json.loads((out / "checkpoints" / latest / "trainer_state.json").read_text())
    assert state["step"] == summary["steps"] and state["wall_seconds"] >= 3.0
    # Resumed with a larger budget, it trains only for what is left of it.
    train_main(train_args(tiny_dataset_root, out, 10**6, **{**budget, "train.max_minutes": 0.1}, resume="true"))
    resumed = json.loads((out / "train_summary.json").read_text())
    assert resumed["resumed_from_step"] == summary["steps"] and resumed["steps"] > summary["steps"]
    assert 6.0 <= resumed["wall_seconds"] < resumed["seconds"] + state["wall_seconds"] + 1


def test_a_time_annealed_cosine_follows_whichever_runs_out_first_and_ends_at_zero(tiny_dataset_root, tmp_path):
    from worldmodel.train import LoopConfig, TrainingClock, cosine_over_steps_or_time

    clock = TrainingClock(before=0.0, started=time.time())
    factor = cosine_over_steps_or_time(LoopConfig(steps=1000, warmup_steps=10, max_minutes=1.0), clock)
    assert factor(5) == pytest.approx(0.5)  # warmup is by steps
    assert factor(505) == pytest.approx(0.5, abs=0.01)  # early in the time: the steps lead, half-way
    clock.before = 45.0  # three quarters of the minute gone at step 100: the clock leads
    assert factor(100) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)), abs=0.01)
    clock.before = 120.0  # past the cap: zero, not a second cosine period
    assert factor(100) == 0.0
    # End to end: a run the clock stops anneals to (nearly) zero; its learning rate never rises after warmup.
    out = tmp_path / "annealed"
    train_main(train_args(tiny_dataset_root, out, 10**6, **{
        "train.max_minutes": 0.05, "train.anneal_by_time": "true", "train.schedule": "cosine", "train.warmup_steps": 2,
        "train.batch_size": 4, "train.log_every": 1, "train.checkpoint_every": 10**6, "train.val_every": 10**6}))
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    after_warmup = lrs[2:]
    assert len(after_warmup) >= 3 and all(b <= a + 1e-12 for a, b in zip(after_warmup, after_warmup[1:]))
    assert lrs[-1] < 0.1 * 2e-3 < after_warmup[0]


def test_revisit_repeat_without_pose_retrieved_memory_frames_is_refused():
    import draccus

    from worldmodel.train import TrainConfig, check_config

    for args in (["--train.revisit_repeat=0"], ["--train.revisit_repeat=2", "--dataset.memory_frames=1"]):
        cfg = draccus.parse(TrainConfig, args=[*args, "--dataset.root=/nonexistent"])
        with pytest.raises(ValueError, match="train.revisit_repeat"):
            check_config(cfg)


def test_anneal_by_time_without_a_time_cap_or_with_another_schedule_is_refused():
    import draccus

    from worldmodel.train import TrainConfig, check_config

    for extra in (["--train.schedule=cosine"], ["--train.max_minutes=5", "--train.schedule=constant_with_warmup"]):
        cfg = draccus.parse(TrainConfig, args=["--train.anneal_by_time=true", "--dataset.root=/nonexistent", *extra])
        with pytest.raises(ValueError, match="train.anneal_by_time"):
            check_config(cfg)


def test_every_documented_mixed_precision_value_parses_and_bad_values_name_the_field():
    import draccus

    from worldmodel.train import TrainConfig, check_config, mixed_precision_mode

    for flag, mode in (("no", "no"), ("bf16", "bf16"), ("fp16", "fp16")):
        cfg = draccus.parse(TrainConfig, args=[f"--train.mixed_precision={flag}"])
        assert mixed_precision_mode(cfg.train.mixed_precision) == mode  # `no` arrives as YAML false
    assert mixed_precision_mode(None) in ("no", "bf16")
    cfg = draccus.parse(TrainConfig, args=["--train.mixed_precision=fp8"])
    with pytest.raises(ValueError, match="train.mixed_precision"):
        check_config(cfg)


def test_designs_the_data_cannot_support_are_refused_before_any_decoding():
    import draccus

    from worldmodel.train import TrainConfig, check_config

    cfg = draccus.parse(TrainConfig, args=["--dataset.memory_frames=0", "--dataset.root=/nonexistent"])
    with pytest.raises(ValueError, match="dataset.memory_frames"):
        check_config(cfg)
    for size in (0, -8, 40):  # 40 is not a multiple of tiny's 16-pixel patches
        cfg = draccus.parse(TrainConfig, args=[f"--dataset.image_size={size}", "--dataset.root=/nonexistent"])
        with pytest.raises(ValueError, match="dataset.image_size"):
            check_config(cfg)


def test_a_truncated_checkpoint_is_named_and_skipped_and_resumed_steps_are_logged_once(tiny_dataset_root, tmp_path,
                                                                                       capsys):
    out = tmp_path / "cut"
    common = {"train.checkpoint_every": 5, "train.val_every": 10**6, "train.log_every": 1}
    train_main(train_args(tiny_dataset_root, out, 10, **common))
    weights = out / "checkpoints" / "step_000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a crash or a full disk cut the newest checkpoint short
    capsys.readouterr()
    train_main(train_args(tiny_dataset_root, out, 12, **common, resume="true"))
    printed = capsys.readouterr().out
    assert "step_000010" in printed and "unreadable" in printed
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 5 and summary["steps"] == 12
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == list(range(1, 13))  # steps 6-10 ran twice; each is logged once


def test_init_from_fine_tunes_a_trained_model_and_refuses_one_that_does_not_fit(trained, tiny_dataset_root, tmp_path):
    """--init_from starts from a trained model's weights: with a learning rate of 0 the fine-tuned model is that
    model exactly, not a fresh one. A folder whose network differs is refused by name before training."""
    out = tmp_path / "tuned"
    train_main(train_args(tiny_dataset_root, out, 2, **{"init_from": trained / "model", "train.lr": 0.0,
                                                        "train.warmup_steps": 0, "train.val_every": 100}))
    source, tuned = load_file(trained / "model" / "diffusion_pytorch_model.safetensors"), \
        load_file(out / "model" / "diffusion_pytorch_model.safetensors")
    assert source.keys() == tuned.keys()
    for key in source:
        torch.testing.assert_close(tuned[key], source[key], rtol=0, atol=0)
    # Its summary counts the training behind the weights it started from.
    earlier, summary = (json.loads((d / "train_summary.json").read_text()) for d in (trained, out))
    assert summary["init_from"] == {"path": str(trained / "model"), "steps": earlier["steps"],
                                    "wall_seconds": earlier["wall_seconds"]}
    assert summary["wall_seconds_in_all"] == pytest.approx(summary["wall_seconds"] + earlier["wall_seconds"])
    assert earlier["init_from"] is None and earlier["wall_seconds_in_all"] == earlier["wall_seconds"]
    # --resume=true with no checkpoint yet (a first run of a resumable script) starts from the given weights too.
    train_main(train_args(tiny_dataset_root, tmp_path / "first", 2, **{"init_from": trained / "model", "train.lr": 0.0,
                                                                       "train.warmup_steps": 0, "resume": "true"}))
    first = load_file(tmp_path / "first" / "model" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(first["out_state.weight"], source["out_state.weight"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_from: .* does not fit"):
        train_main(train_args(tiny_dataset_root, tmp_path / "misfit", 2,
                              **{"init_from": trained / "model", "model.depth": 2}))
    # A design's zero-initialised additions (the memory gate) are the one thing the loaded model may lack: they stay
    # at zero, everything else is the loaded model's. The other way round (a gated model into a network without the
    # gate) drops weights, and is refused.
    gated = tmp_path / "gated"
    train_main(train_args(tiny_dataset_root, gated, 2, **{"init_from": trained / "model", "train.lr": 0.0,
                                                          "train.warmup_steps": 0, "model.pixel_gate_from_memory": "true"}))
    tuned = load_file(gated / "model" / "diffusion_pytorch_model.safetensors")
    added = sorted(tuned.keys() - source.keys())
    assert added == ["out_view_gate.bias", "out_view_gate.weight", "view_patch_embed.bias", "view_patch_embed.weight"]
    assert all(not tuned[key].any() for key in added)
    for key in source:
        torch.testing.assert_close(tuned[key], source[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_from: .* does not fit.*out_view_gate"):
        train_main(train_args(tiny_dataset_root, tmp_path / "ungated", 2, **{"init_from": gated / "model"}))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        train_main(train_args(tiny_dataset_root, tmp_path / "missing", 2, **{"init_from": tmp_path / "nothing"}))
