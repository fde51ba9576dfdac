"""Training throughput per model preset: clips/s, tokens/s, parameters (and MFU on a CUDA GPU).

    python -m eval.train_speed                       # this machine; writes eval/results/train_speed_<device>.json

Synthetic batches shaped like the recipe's training (3 views, 64 px pixel codec, frame_stride 4, 39-d
state, 6-frame clips with 3 memory frames, the commanded pose when the preset conditions on it); `base` is
measured on 24x24x4 latents (an AutoencoderKL at 192 px). A step is forward + backward + AdamW update through
the same FlowMatching loss as `wm train`.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field

import torch

from eval.report import write_result
from worldmodel.diffusion import FlowMatching
from worldmodel.model import build_config, make_model


@dataclass
class SpeedConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small", "base"])
    clip_frames: int = 6
    memory_frames: int = 3  # slot 0 is the episode's first frame, the pixel anchor of residual_from_first_frame
    batch_size: int = 0  # 0: per preset, what fits this device in reasonable time
    steps: int = 3
    warmup: int = 1
    output: str | None = None  # default eval/results/train_speed_<cpu|gpu name>.json


DATA = {  # per preset: latent channels, latent size (pixels for the pixel codec), default batch (cpu, gpu)
    "tiny": (3, 64, (8, 64)),
    "small": (3, 64, (2, 32)),
    "base": (4, 24, (1, 16)),
}

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for MFU


def model_flops_per_clip(model, tokens_per_clip: int) -> float:
    """Training FLOPs per clip: 6 * params * tokens (matmuls) + attention scores and values (x3 for backward)."""
    cfg = model.cfg
    params = sum(p.numel() for p in model.parameters())
    attention = 2 * 2 * cfg.depth * tokens_per_clip * (tokens_per_clip / 2) * cfg.hidden_size  # causal ~ half
    return 6 * params * tokens_per_clip + 3 * attention


def synthetic_memory_and_command(model_cfg, batch: int, T: int, M: int, device) -> tuple[dict | None, torch.Tensor | None]:
    """Memory frames (B, M, ...) as the trainer passes them (M = 0: none) and a commanded pose (B, T, P) when the
    model conditions on one."""
    memory = None
    if M:
        V, C, S = model_cfg.num_views, model_cfg.latent_channels, model_cfg.latent_size
        memory = {"latents": torch.randn(batch, M, V, C, S, S, device=device),
                  "state": torch.randn(batch, M, model_cfg.state_dim, device=device),
                  "frame_pos": (-4.0 * torch.arange(M, 0, -1, device=device)).clamp(min=-model_cfg.max_offset).expand(batch, M),
                  "valid": torch.ones(batch, M, dtype=torch.bool, device=device)}
    command = None
    if model_cfg.condition_on_command:
        command = torch.randn(batch, T, len(model_cfg.pose_indices), device=device) * 0.1
    return memory, command


def measure(preset: str, cfg: SpeedConfig, device: torch.device) -> dict:
    channels, size, (cpu_batch, gpu_batch) = DATA[preset]
    batch = cfg.batch_size or (gpu_batch if device.type == "cuda" else cpu_batch)
    model_cfg = build_config(preset, num_views=3, latent_channels=channels, latent_size=size, image_size=size)
    model = make_model(model_cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fm = FlowMatching()
    T, V = cfg.clip_frames, model_cfg.num_views
    latents = torch.randn(batch, T, V, channels, size, size, device=device)
    state = torch.randn(batch, T, model_cfg.state_dim, device=device)
    actions = torch.randn(batch, T, model_cfg.frame_stride, model_cfg.action_dim, device=device)
    memory, command = synthetic_memory_and_command(model_cfg, batch, T, cfg.memory_frames, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss, _ = fm.loss(model, latents, state, actions, memory=memory, command=command)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(cfg.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / cfg.steps
    tokens_per_clip = T * model_cfg.tokens_per_frame
    result = {
        "preset": preset, "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": model_cfg.hidden_size, "depth": model_cfg.depth, "batch_size": batch,
        "clip_frames": T, "tokens_per_clip": tokens_per_clip, "seconds_per_step": seconds,
        "clips_per_s": batch / seconds, "tokens_per_s": batch * tokens_per_clip / seconds,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        achieved = model_flops_per_clip(model, tokens_per_clip) * batch / seconds
        result["model_tflops"] = achieved / 1e12
        result["mfu"] = achieved / (peak * 1e12) if peak else None
    return result


def main() -> None:
    import draccus

    cfg = draccus.parse(SpeedConfig)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name()
        tag = "gpu_" + device_name.split()[-1].lower()
    else:
        device_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        tag = "cpu"
    results = []
    for preset in cfg.presets:
        print(f"measuring {preset} on {device_name} ...", flush=True)
        results.append(measure(preset, cfg, device))
        print(json.dumps(results[-1]), flush=True)
    report = {"device": device_name, "torch": torch.__version__, "results": results,
              "command": "python -m eval.train_speed"}
    lines = [f"# Training throughput ({device_name})", "",
             "| preset | params | batch | tokens/clip | s/step | clips/s | tokens/s |" + (" MFU |" if device.type == "cuda" else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if device.type == "cuda" else "")]
    for r in results:
        row = (f"| {r['preset']} | {r['parameters'] / 1e6:.1f}M | {r['batch_size']} | {r['tokens_per_clip']} | "
               f"{r['seconds_per_step']:.2f} | {r['clips_per_s']:.2f} | {r['tokens_per_s']:.0f} |")
        if device.type == "cuda":
            row += f" {r['mfu']:.1%} |" if r.get("mfu") else " n/a |"
        lines.append(row)
    write_result(cfg.output or f"eval/results/train_speed_{tag}.json", report, lines)


if __name__ == "__main__":
    main()
