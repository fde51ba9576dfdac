"""Training with accelerate: one CPU, one GPU, many GPUs or nodes, all from the same code.

    wm train --dataset.root=outputs/datasets/metaworld_push --model.preset=tiny --train.steps=2000
    accelerate launch --num_processes 4 -m worldmodel.train --model.preset=small ...

Output folder:
    train_config.json            the resolved config
    checkpoints/step_XXXXXX/     accelerate state (model, optimizer, scheduler, EMA, RNG) + model/ (EMA
                                 weights, save_pretrained) + train_config.json; written to a temp
                                 folder and renamed, so a crash never leaves half a checkpoint
    checkpoints/latest           name of the newest complete checkpoint
    model/                       final EMA weights: `VideoDiT.from_pretrained(output_dir/model)`
    samples/step_XXXXXX.png      held-out clip: real (top) vs open-loop prediction (bottom), per view
    metrics.jsonl, logs/         losses and validation PSNR (also in tensorboard)
    train_summary.json           steps, throughput, and a parameter checksum from every process
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldmodel.codec import DiffusersAutoencoderCodec, PixelCodec
from worldmodel.dataset import ClipDataset, DatasetConfig, check_local_root
from worldmodel.diffusion import (DiffusionConfig, FlowMatching, GeneratorState, balanced_state_weight,
                                  sample_full_sequence)
from worldmodel.atomic import write_json_atomic, write_text_atomic
from worldmodel.metrics import psnr
from worldmodel.model import PRESETS, VideoDiT, build_config, check_folder_kind, make_model


@dataclass
class ModelSpec:
    preset: str = "tiny"  # tiny | small | base (worldmodel.model.PRESETS)
    hidden_size: int | None = None  # None: the preset's value
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    predict_residual: bool | None = None  # None: the preset's choice (see VideoDiTConfig)
    condition_on_state: bool | None = None
    residual_from_first_frame: bool | None = None
    linear_state_dynamics: bool | None = None
    deterministic_state: bool | None = None
    condition_on_command: bool | None = None
    state_reads_pictures: bool | None = None
    pixel_anchor_from_memory: bool | None = None
    pixel_gate_from_memory: bool | None = None


@dataclass
class CodecSpec:
    # A diffusers autoencoder folder (AutoencoderKL, AutoencoderTiny, ...); None: diffuse raw pixels.
    autoencoder: str | None = None
    subfolder: str | None = None
    # Encode every frame once into the dataset cache (autoencoder codecs only) instead of every step.
    precompute_latents: bool = True


@dataclass
class LoopConfig:
    steps: int = 2000
    # Stop after this much training wall time (summed over resumes), whichever of steps / time comes first;
    # the final checkpoint and model are written as usual. None: steps alone decide.
    max_minutes: float | None = None
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    schedule: str = "cosine"  # a diffusers.optimization scheduler name, e.g. cosine, constant_with_warmup
    warmup_steps: int = 100
    # With max_minutes and the cosine schedule: its progress is whichever is further along, the steps or the
    # training time, so a run the clock stops (a slower machine) still anneals to zero instead of being cut
    # mid-cosine. Off: the schedule follows the steps alone (and is the same on every machine).
    anneal_by_time: bool = False
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str | None = None  # None: bf16 on CUDA, none on CPU; or accelerate's no/bf16/fp16
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 500
    val_episodes: int = 1  # the last episodes of the dataset are held out for validation
    val_clips: int = 8
    val_sampling_steps: int = 10
    num_workers: int = 2
    seed: int = 0
    # Draw the clips in which the hand comes within near_object_m of the object this many times per epoch (1:
    # every clip once). The grasp is a small part of the data and decides a push: eval/results/expert_trace_*.
    near_object_repeat: int = 1
    near_object_m: float = 0.08
    # Draw the clips in which the hand revisits a place (back within 3 cm of where it was at least
    # dataset.memory_min_gap_frames frames before, having left it by 10 cm) this many times per epoch: the clips whose
    # pose-retrieved memory frame shows the place seen long ago, the only clips that ask the network to read it.
    revisit_repeat: int = 1


@dataclass
class TrainConfig:
    # 6-frame clips with the episode's first frame + 2 pose-retrieved frames as memory (the presets anchor
    # pictures on the first frame, memory slot 0): eval/results/ablation_cpu.md.
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(clip_frames=6, memory_frames=3))
    model: ModelSpec = field(default_factory=ModelSpec)
    codec: CodecSpec = field(default_factory=CodecSpec)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    output_dir: str = "outputs/train/metaworld_push"
    resume: bool = False
    # Fine-tune: start from this world model folder's weights instead of from scratch. The network is still built
    # from this run's data and flags, and the folder's weights must fit it exactly.
    init_from: str | None = None


# ---------------------------------------------------------------------------------------------
def load_initial_weights(model: VideoDiT, path: str) -> None:
    """--init_from: every parameter from a trained world model, which must have this network's exact shapes, except
    the zero-initialised additions it may lack (VideoDiT.zero_initialised_additions: they stay at zero, so the
    fine-tune starts as the loaded model). The normalisation statistics stay this run's (they come from its dataset)."""
    mine, theirs = model.state_dict(), VideoDiT.from_pretrained(path).state_dict()
    may_lack = set(model.zero_initialised_additions())
    misfits = sorted(k for k in mine.keys() | theirs.keys() if not (k in may_lack and k not in theirs)
                     and (k not in mine or k not in theirs or mine[k].shape != theirs[k].shape))
    if misfits:
        raise ValueError(f"init_from: {path} does not fit the network built here (its --model.* sizes and design, "
                         f"and the dataset's views, state and action sizes, must match); differs in {misfits[:4]}")
    model.load_state_dict({**mine, **theirs})


def initial_training(path: str | None) -> dict | None:
    """The training behind --init_from's weights (its train_summary.json: in the folder, or beside a `wm train`
    output's model/), so a fine-tuned model's summary counts every minute of training it took from scratch."""
    if path is None:
        return None
    for folder in (Path(path), Path(path).parent):
        if (folder / "train_summary.json").is_file():
            summary = json.loads((folder / "train_summary.json").read_text())
            return {"path": str(path), "steps": summary["steps"],
                    "wall_seconds": summary.get("wall_seconds_in_all", summary["wall_seconds"])}
    return None


def split_episodes(cfg: TrainConfig) -> tuple[list[int], list[int]]:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    check_local_root(cfg.dataset)
    meta = LeRobotDatasetMetadata(cfg.dataset.repo_id, root=cfg.dataset.root)
    episodes = cfg.dataset.episodes if cfg.dataset.episodes is not None else list(range(meta.total_episodes))
    n_val = cfg.train.val_episodes
    if n_val >= len(episodes):
        raise ValueError(f"train.val_episodes: {n_val} leaves no training episode out of {len(episodes)}")
    return (episodes[:-n_val], episodes[-n_val:]) if n_val > 0 else (episodes, [])


def make_codec(cfg: TrainConfig):
    if cfg.codec.autoencoder is None:
        return PixelCodec(cfg.dataset.image_size)
    return DiffusersAutoencoderCodec.from_pretrained(cfg.codec.autoencoder, cfg.dataset.image_size,
                                                     subfolder=cfg.codec.subfolder)


def resume_from_checkpoint(accelerator, ckpt_root: Path) -> tuple[int, float]:
    """Load the newest readable checkpoint: the one `latest` names, else the complete ones before it, newest
    first (a file cut short by a crash or a full disk is named and skipped). -> (step, training seconds)."""
    named = ckpt_root / (ckpt_root / "latest").read_text().strip()
    others = sorted((p for p in ckpt_root.glob("step_*") if not p.name.endswith(".tmp") and p != named), reverse=True)
    for path in [named, *others]:
        try:
            accelerator.load_state(str(path))
        except Exception as error:  # safetensors / torch errors name no path: say which checkpoint failed
            accelerator.print(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                              "falling back to the previous complete checkpoint")
            continue
        step = int(path.name.split("_")[1])
        trainer_state = path / "trainer_state.json"
        wall = json.loads(trainer_state.read_text())["wall_seconds"] if trainer_state.exists() else 0.0
        accelerator.print(f"resumed from {path} at step {step}")
        return step, wall
    raise RuntimeError(f"resume: no readable checkpoint in {ckpt_root} (tried {[named.name] + [p.name for p in others]})")


def drop_metrics_after(metrics_file: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: their old rows go, so every step is logged once."""
    if not metrics_file.exists():
        return
    rows = [line for line in metrics_file.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(rows):
        write_text_atomic(metrics_file, "".join(line + "\n" for line in kept))


def mixed_precision_mode(value) -> str:
    """accelerate's mode from `train.mixed_precision` (None: bf16 on CUDA, no on CPU). draccus reads the
    documented value `no` as the YAML boolean false, so false means "no" too."""
    if value is None:
        return "bf16" if torch.cuda.is_available() else "no"
    if value is False or str(value).lower() in ("no", "false"):  # `no` may arrive as False or "False"
        return "no"
    if value in ("bf16", "fp16"):
        return value
    raise ValueError(f"train.mixed_precision: expected no, bf16 or fp16 (or unset), got {value!r}")


def check_config(cfg: TrainConfig) -> None:
    """Flag values and design choices the data must support, checked before any video is decoded."""
    mixed_precision_mode(cfg.train.mixed_precision)
    spec = cfg.model
    if spec.preset not in PRESETS:
        raise ValueError(f"model.preset: {spec.preset!r} is not one of {sorted(PRESETS)}")
    preset = PRESETS[spec.preset]()
    from_first = spec.residual_from_first_frame
    if from_first is None:
        from_first = preset.get("residual_from_first_frame", False)
    patch = spec.patch_size or preset["patch_size"]
    size = cfg.dataset.image_size
    if size < 1 or (cfg.codec.autoencoder is None and size % patch):
        raise ValueError(f"dataset.image_size: {size} must be a positive multiple of the patch size {patch} "
                         f"(model.patch_size; pixel frames are cut into {patch}x{patch} patches)")
    if cfg.init_from is not None:
        check_folder_kind(cfg.init_from, "VideoDiT")
    for name in ("near_object_repeat", "revisit_repeat"):
        if getattr(cfg.train, name) < 1:
            raise ValueError(f"train.{name}: expected >= 1 (1 draws every clip once), got {getattr(cfg.train, name)}")
    if cfg.train.revisit_repeat > 1 and cfg.dataset.memory_frames < 2:
        raise ValueError("train.revisit_repeat: needs dataset.memory_frames >= 2 (slot 0 is the first frame; the "
                         f"pose-retrieved ones are what a revisit is for), got {cfg.dataset.memory_frames}")
    if cfg.train.anneal_by_time and (cfg.train.max_minutes is None or cfg.train.schedule != "cosine"):
        raise ValueError("train.anneal_by_time: needs train.max_minutes and train.schedule=cosine (it anneals the "
                         f"cosine over the time budget), got max_minutes={cfg.train.max_minutes}, "
                         f"schedule={cfg.train.schedule!r}")
    if from_first and cfg.dataset.memory_frames < 1:
        raise ValueError("dataset.memory_frames: model.residual_from_first_frame needs at least 1 (memory slot 0 is "
                         f"the episode's first frame, the anchor of every predicted picture), got {cfg.dataset.memory_frames}")


def oversample_clips(clips: ClipDataset, loop: LoopConfig, say=print) -> torch.utils.data.Dataset:
    """The training clips with those near the object listed loop.near_object_repeat times and those revisiting a
    place loop.revisit_repeat times (a plain shuffled loader then draws them that much more often, and a resumed
    run sees the same order). `say`: the main process's print under accelerate."""
    if loop.near_object_repeat == 1 and loop.revisit_repeat == 1:
        return clips
    drawn = [np.arange(len(clips))]
    if loop.near_object_repeat > 1:
        near = np.flatnonzero(clips.clips_near_object(loop.near_object_m))
        drawn.append(np.tile(near, loop.near_object_repeat - 1))
        say(f"near_object_repeat: {len(near)} of {len(clips)} clips come within {loop.near_object_m} m of the "
            f"object; each is drawn {loop.near_object_repeat} times per epoch")
    if loop.revisit_repeat > 1:
        revisiting = np.flatnonzero(clips.clips_revisiting(near_m=0.03, away_m=0.10))
        drawn.append(np.tile(revisiting, loop.revisit_repeat - 1))
        say(f"revisit_repeat: {len(revisiting)} of {len(clips)} clips revisit a place left "
            f"{clips.cfg.memory_min_gap_frames}+ frames before; each is drawn {loop.revisit_repeat} times per epoch")
    return torch.utils.data.Subset(clips, np.concatenate(drawn).tolist())


def model_config_for(cfg: TrainConfig, clips: ClipDataset, codec):
    spec = cfg.model
    sizes = dict(hidden_size=spec.hidden_size, depth=spec.depth, num_heads=spec.num_heads, patch_size=spec.patch_size,
                 predict_residual=spec.predict_residual, condition_on_state=spec.condition_on_state,
                 residual_from_first_frame=spec.residual_from_first_frame,
                 linear_state_dynamics=spec.linear_state_dynamics, deterministic_state=spec.deterministic_state,
                 condition_on_command=spec.condition_on_command, state_reads_pictures=spec.state_reads_pictures,
                 pixel_anchor_from_memory=spec.pixel_anchor_from_memory,
                 pixel_gate_from_memory=spec.pixel_gate_from_memory)
    return build_config(
        spec.preset, sizes,
        num_views=clips.num_views, latent_channels=codec.latent_channels, latent_size=codec.latent_size,
        action_dim=clips.action_dim, frame_stride=cfg.dataset.frame_stride, state_dim=clips.state_dim,
        camera_keys=clips.camera_keys, image_size=cfg.dataset.image_size, fps=clips.fps,
        pose_indices=list(cfg.dataset.pose_indices), action_to_pose=clips.action_to_pose(),
        command_gain=clips.command_gain(), action_names=clips.action_names,
        codec=codec.packaged_description(), **clips.stats,
    )


@torch.no_grad()
def validate(model: VideoDiT, codec, clips: ClipDataset, n_clips: int, num_steps: int, device) -> tuple[dict, np.ndarray]:
    """One-step-ahead PSNR (all but the last frame given) and open-loop PSNR (only the first frame given,
    every later frame predicted from the recorded actions) on held-out clips. Also returns a picture."""
    indices = np.linspace(0, len(clips) - 1, min(n_clips, len(clips))).astype(int)
    batch = torch.utils.data.default_collate([clips[int(i)] for i in indices])
    batch = {k: v.to(device) for k, v in batch.items()}
    images, T = batch["images"], batch["images"].shape[1]
    latents = codec.encode(images)
    generator = torch.Generator(device=device).manual_seed(0)
    command = batch.get("command")  # the recorded commands (clips start inside episodes, not at rest)
    one_step, _ = sample_full_sequence(model, latents[:, :-1], batch["state"][:, :-1], batch["actions"],
                                       num_steps, actions_is_pad=batch["actions_is_pad"], generator=generator,
                                       command=command)
    open_loop, open_loop_state = sample_full_sequence(model, latents[:, :1], batch["state"][:, :1], batch["actions"],
                                                      num_steps, actions_is_pad=batch["actions_is_pad"],
                                                      generator=generator, command=command)
    one_step_img, open_loop_img = codec.decode(one_step), codec.decode(open_loop)
    per_horizon = psnr(open_loop_img, images[:, 1:]).mean(dim=(0, 2))  # (T-1,)
    metrics = {
        "val/psnr_one_step": psnr(one_step_img, images[:, -1:]).mean().item(),
        "val/psnr_open_loop": per_horizon.mean().item(),
        "val/psnr_open_loop_last": per_horizon[-1].item(),
        "val/state_mse_open_loop": (model.normalize_state(open_loop_state)
                                    - model.normalize_state(batch["state"][:, 1:])).pow(2).mean().item(),
    }
    # Picture: for clip 0, every view: real frames on top, open-loop prediction below (frame 0 is given).
    real = images[0]  # (T, V, 3, H, W)
    pred = torch.cat([images[0, :1], open_loop_img[0]], dim=0)
    rows = [torch.cat(list(frames[:, v]), dim=-1) for v in range(real.shape[1]) for frames in (real, pred)]
    grid = ((torch.cat(rows, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return metrics, grid


# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingClock:
    """Training wall time over resumes: what earlier runs of the output_dir took plus this run's so far."""

    before: float = 0.0  # training seconds of earlier runs of this output_dir
    started: float = field(default_factory=time.time)

    def seconds(self) -> float:
        return self.before + time.time() - self.started


def cosine_over_steps_or_time(loop: LoopConfig, clock: TrainingClock):
    """The LR factor of linear warmup + cosine, at a step: progress is the further of step / train.steps and
    training time / train.max_minutes (train.anneal_by_time). A plain function, so the scheduler's checkpoint
    holds only its step: a resumed run reads the clock, restored from trainer_state.json, again."""
    warmup, steps, max_seconds = loop.warmup_steps, loop.steps, 60 * loop.max_minutes

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        by_steps = (step - warmup) / max(1, steps - warmup)
        progress = min(1.0, max(by_steps, clock.seconds() / max_seconds))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class Run:
    """Everything one training run holds, built by `start_run`; the loop in `train` reads like nanoGPT's."""

    cfg: TrainConfig
    out: Path
    accelerator: object
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader
    ema: object  # diffusers EMAModel of the parameters
    noise: GeneratorState  # diffusion noise, its own checkpointed stream per process
    codec: torch.nn.Module
    val_clips: ClipDataset | None
    resolved: dict  # the resolved config written beside every checkpoint
    clock: TrainingClock
    state_weight: torch.Tensor | None = None  # per-dimension state loss weights (diffusion.balance_state_dims)
    step: int = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> VideoDiT:
        return self.accelerator.unwrap_model(self.model)

    def wall_seconds(self) -> float:
        return self.clock.seconds()


def start_run(cfg: TrainConfig) -> Run:
    """Accelerator, checks, data, codec, model, optimizer and EMA; resumed from the newest readable
    checkpoint with --resume=true."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out, loop = Path(cfg.output_dir), cfg.train
    # The one Accelerator: devices, processes, mixed precision, data sharding, checkpoint state, trackers.
    accelerator = Accelerator(
        mixed_precision=mixed_precision_mode(loop.mixed_precision), log_with="tensorboard",
        project_dir=str(out / "logs"), dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    latest_file = out / "checkpoints" / "latest"
    if accelerator.is_main_process and not cfg.resume and latest_file.exists():
        raise FileExistsError(f"output_dir: {out} already holds checkpoints; pass --resume=true to continue "
                              "or choose another --output_dir")
    set_seed(loop.seed)
    check_config(cfg)

    train_episodes, val_episodes = split_episodes(cfg)
    # The main process builds the decoded cache first; the others then find it ready.
    with accelerator.main_process_first():
        train_clips = ClipDataset(DatasetConfig(**{**asdict(cfg.dataset), "episodes": train_episodes}))
        val_clips = ClipDataset(DatasetConfig(**{**asdict(cfg.dataset), "episodes": val_episodes})) if val_episodes else None
    drawn_clips = oversample_clips(train_clips, loop, say=accelerator.print)
    codec = make_codec(cfg).to(accelerator.device)
    if cfg.codec.autoencoder is not None and cfg.codec.precompute_latents:
        with accelerator.main_process_first():
            for clips in filter(None, (train_clips, val_clips)):
                clips.attach_latents(codec, device=accelerator.device)
    model_config = model_config_for(cfg, train_clips, codec)
    model = make_model(model_config)
    if cfg.init_from is not None:  # a checkpoint restored below replaces these weights
        load_initial_weights(model, cfg.init_from)
    if model_config.condition_on_command:  # the training set's gain for every clip, held-out ones included
        for clips in filter(None, (train_clips, val_clips)):
            clips.attach_commands(*model.command_parameters())
    resolved = {"train": asdict(cfg), "model": asdict(model_config),
                "episodes": {"train": train_episodes, "val": val_episodes}}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "train_config.json", resolved)

    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay, betas=(0.9, 0.99))
    clock = TrainingClock()
    if loop.anneal_by_time:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_over_steps_or_time(loop, clock))
    else:
        scheduler = get_scheduler(loop.schedule, optimizer, num_warmup_steps=loop.warmup_steps,
                                  num_training_steps=loop.steps)
    loader = torch.utils.data.DataLoader(drawn_clips, batch_size=loop.batch_size, shuffle=True, drop_last=True,
                                         num_workers=loop.num_workers, persistent_workers=loop.num_workers > 0)
    if len(loader) == 0:
        raise ValueError(f"train.batch_size: {loop.batch_size} is larger than the {len(train_clips)} training clips")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=loop.ema_decay)
    ema.to(accelerator.device)
    # Diffusion noise has its own generator, one stream per process, checkpointed with the run: the global
    # RNG is also drawn by DataLoader iterators, whose creation points differ after a mid-epoch resume.
    noise = GeneratorState(loop.seed * 1000 + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(ema, noise)
    state_weight = None
    if cfg.diffusion.balance_state_dims:
        state_weight = balanced_state_weight(torch.as_tensor(train_clips.state_change_std(), dtype=torch.float32),
                                             torch.tensor(model_config.state_std, dtype=torch.float32))
    run = Run(cfg, out, accelerator, model, optimizer, scheduler, loader, ema, noise, codec, val_clips, resolved,
              clock, state_weight=state_weight)
    if cfg.resume and latest_file.exists():
        run.step, clock.before = resume_from_checkpoint(accelerator, latest_file.parent)
        if run.is_main:
            drop_metrics_after(out / "metrics.jsonl", run.step)
    return run


def batches(run: Run):
    """Batches from exactly where `run.step` left off: same epoch order, same position."""
    epoch, skip = divmod(run.step, len(run.loader))
    while True:
        run.loader.set_epoch(epoch)
        for batch in (run.accelerator.skip_first_batches(run.loader, skip) if skip else run.loader):
            yield batch
        epoch, skip = epoch + 1, 0


def training_step(run: Run, batch: dict, diffusion: FlowMatching) -> dict:
    """One optimiser step on a batch (loss, backward, clipped gradients, EMA). -> the loss terms."""
    accelerator, unwrapped = run.accelerator, run.unwrapped
    with accelerator.autocast():
        latents = batch["latents"] if "latents" in batch else run.codec.encode(batch["images"])
        state = unwrapped.normalize_state(batch["state"])
        memory = None
        if "memory_images" in batch:
            memory = {"latents": batch["memory_latents"] if "memory_latents" in batch
                      else run.codec.encode(batch["memory_images"]),
                      "state": unwrapped.normalize_state(batch["memory_state"]),
                      "frame_pos": batch["memory_offset"].clamp(min=-unwrapped.cfg.max_offset),
                      "valid": batch["memory_valid"]}
        loss, logs = diffusion.loss(run.model, latents, state, batch["actions"], batch["actions_is_pad"],
                                    run.noise.generator, memory, batch.get("command"))
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.ema.step(unwrapped.parameters())
    run.step += 1
    return logs


def save_ema_model(run: Run, directory: Path) -> None:
    """The EMA weights as a model folder (the training weights are put back afterwards)."""
    unwrapped = run.unwrapped
    run.ema.store(unwrapped.parameters())
    run.ema.copy_to(unwrapped.parameters())
    unwrapped.save_pretrained(directory, safe_serialization=True)
    run.ema.restore(unwrapped.parameters())
    run.codec.save_into(directory)  # an autoencoder travels with the folder: it opens wherever it is moved
    write_json_atomic(directory / "train_config.json", run.resolved)


def save_checkpoint(run: Run) -> None:
    """accelerate's state + the EMA model, written to a temp folder and renamed; `latest` names it."""
    accelerator, ckpt_root = run.accelerator, run.out / "checkpoints"
    name = f"step_{run.step:06d}"
    tmp = ckpt_root / f"{name}.tmp"
    if run.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if run.is_main:
        save_ema_model(run, tmp / "model")
        write_json_atomic(tmp / "train_config.json", run.resolved)
        write_json_atomic(tmp / "trainer_state.json", {"step": run.step, "wall_seconds": run.wall_seconds()})
        shutil.rmtree(ckpt_root / name, ignore_errors=True)
        os.replace(tmp, ckpt_root / name)
        (ckpt_root / "latest.tmp").write_text(name)
        os.replace(ckpt_root / "latest.tmp", ckpt_root / "latest")
        complete = sorted(p for p in ckpt_root.glob("step_*") if not p.name.endswith(".tmp"))
        for old in complete[:-run.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def run_validation(run: Run) -> dict:
    """Held-out PSNR of the EMA model (main process only) and a picture of a clip in samples/."""
    import cv2

    if run.val_clips is None or not run.is_main:
        return {}
    unwrapped = run.unwrapped
    run.ema.store(unwrapped.parameters())
    run.ema.copy_to(unwrapped.parameters())
    unwrapped.eval()
    loop = run.cfg.train
    metrics, grid = validate(unwrapped, run.codec, run.val_clips, loop.val_clips, loop.val_sampling_steps,
                             run.accelerator.device)
    unwrapped.train()
    run.ema.restore(unwrapped.parameters())
    (run.out / "samples").mkdir(exist_ok=True)
    cv2.imwrite(str(run.out / "samples" / f"step_{run.step:06d}.png"), grid[..., ::-1])
    return metrics


def out_of_time(run: Run) -> bool:
    """Past `train.max_minutes` of training time (over resumes)? Every process stops at the same step: the
    main process's clock decides."""
    if run.cfg.train.max_minutes is None:
        return False
    over = torch.tensor(float(run.wall_seconds() >= 60 * run.cfg.train.max_minutes), device=run.accelerator.device)
    return bool(run.accelerator.reduce(over, "max").item())


def log_metrics(run: Run, record: dict) -> None:
    if record and run.is_main:
        run.accelerator.log(record, step=run.step)
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": run.step, **record}) + "\n")


def write_summary(run: Run, start_step: int, clips_seen: int, elapsed: float) -> None:
    """The final EMA model and train_summary.json. Every process reports a checksum of its parameters:
    they must agree (DDP keeps replicas equal)."""
    accelerator, loop = run.accelerator, run.cfg.train
    flat = torch.cat([p.detach().float().flatten() for p in run.unwrapped.parameters()])
    position_weights = torch.arange(flat.numel(), device=flat.device) % 7919 + 1  # order-sensitive
    checksum = torch.stack([flat.sum(), (flat * position_weights).sum()])
    checksums = accelerator.gather(checksum[None].double()).cpu().tolist()
    if not run.is_main:
        return
    save_ema_model(run, run.out / "model")
    init, wall = initial_training(run.cfg.init_from), run.wall_seconds()
    write_json_atomic(run.out / "train_summary.json", {
        "steps": run.step, "steps_this_run": run.step - start_step, "resumed_from_step": start_step,
        "num_processes": accelerator.num_processes, "seconds": elapsed, "wall_seconds": wall,
        "device": accelerator.device.type if accelerator.device.type != "cpu" else f"cpu ({os.cpu_count()} cores)",
        "clips_per_s": clips_seen / elapsed if elapsed > 0 else math.nan,  # this run (after a resume: its part)
        # every step of every run over all training time (validation and checkpoints included)
        "clips_per_s_overall": run.step * loop.batch_size * accelerator.num_processes / max(wall, 1e-9),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "param_checksums_per_process": checksums,
        # a fine-tune: the run its weights came from, and the training time from scratch of both together
        "init_from": init,
        "wall_seconds_in_all": wall + (init["wall_seconds"] if init else 0.0),
    })


def train(cfg: TrainConfig) -> Path:
    run = start_run(cfg)
    loop, accelerator, diffusion = cfg.train, run.accelerator, FlowMatching(cfg.diffusion, run.state_weight)
    if run.is_main:
        accelerator.init_trackers("worldmodel")
    run.model.train()
    progress = tqdm(total=loop.steps, initial=run.step, desc="training", disable=not run.is_main, unit="step")
    run.clock.started, start_step, clips_seen = time.time(), run.step, 0
    data = batches(run)
    stop = False
    while run.step < loop.steps and not stop:
        batch = next(data)
        logs = training_step(run, batch, diffusion)
        clips_seen += batch["images"].shape[0] * accelerator.num_processes
        progress.update(1)
        stop = out_of_time(run)
        last = run.step == loop.steps or stop
        record = {}
        if run.step % loop.log_every == 0 or last:
            record = {k: accelerator.reduce(v, "mean").item() for k, v in logs.items()}
            record["lr"] = run.scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{record['loss']:.4f}")
        if run.step % loop.val_every == 0 or last:
            record.update(run_validation(run))
        log_metrics(run, record)
        if run.step % loop.checkpoint_every == 0 or last:
            save_checkpoint(run)
    progress.close()
    write_summary(run, start_step, clips_seen, time.time() - run.clock.started)
    end_processes(run)
    return run.out


def end_processes(run: Run) -> None:
    """Tear the process group down on every process together. The DDP wrapper is released first, while every
    peer is still alive: freed after end_training, its reducer's last hold on the gloo group joined a thread
    that waited on an exited peer, and a process hung at exit (tests/test_train.py, two processes)."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()  # rank 0 may still be writing files
    run.model = None
    accelerator.free_memory()  # drops accelerate's own references to the prepared objects
    accelerator.wait_for_everyone()
    accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    import draccus

    cfg = draccus.parse(TrainConfig, args=argv)
    train(cfg)


if __name__ == "__main__":
    main()
