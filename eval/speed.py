"""Streaming speed: rolling + cache vs chunk-autoregressive + cache vs the naive no-cache baseline.

    python -m eval.speed                    # writes eval/results/speed_<cpu|gpu>.json and .md

One model, a world-model folder's (--model) or a preset with random weights shaped like the embedded default
(3 views, 64 px, pixel codec, frame_stride 4; speed does not depend on the weights), one sampler setting. Reported:
  frames_per_s       per mode, one rollout, over `short_horizon` frames
  per_frame_s_at_N   rolling + cache: time per frame of the call holding frame N (frames 49-64 and
                     497-512 with 16-frame calls) of one long rollout: flat when the cache is bounded;
                     naive: the same around frame 50 (its cost grows with the history)
  peak_memory_mb     peak resident memory (CPU) or peak allocated memory (CUDA) of the long rollout
  batched            frames/s with 1, 8, 64 parallel rollouts (rolling + cache); the GPU recipe uses 1, 16, 128
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict, dataclass, field

import torch

from eval.report import write_result
from worldmodel.memory import MemoryConfig
from worldmodel.model import VideoDiT, build_config, check_folder_kind, make_model
from worldmodel.sampler import SamplerConfig, StreamingSampler


@dataclass
class SpeedBenchConfig:
    preset: str = "tiny"
    # A world-model folder (e.g. pretrained/metaworld_push/tiny): time that network, its own config and weights, in
    # fp32. None: the preset with random weights (the time does not depend on the weights, only on the shapes).
    model: str | None = None
    image_size: int = 64
    views: int = 3
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(
        steps=4, window=4, sink_frames=1, recent_frames=4, memory=MemoryConfig(k=2, capacity=64)))
    short_horizon: int = 64
    long_horizon: int = 512
    naive_horizon: int = 64
    call_frames: int = 16  # frames per rollout() call (rolling drains its window at the end of a call)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64])
    batched_frames: int = 16
    output: str | None = None


def timed_rollout(sampler: StreamingSampler, frames: int, chunk: int, device) -> list[float]:
    """Roll `frames` frames, `chunk` frames per call; returns seconds per frame of every call."""
    cfg = sampler.model.cfg
    per_frame = []
    for _ in range(0, frames, chunk):
        actions = torch.randn(sampler.B, chunk, cfg.frame_stride, cfg.action_dim, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampler.rollout(actions)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_frame.append((time.perf_counter() - start) / chunk)
    return per_frame


def new_sampler(model, config: SamplerConfig, batch: int, device, use_cache=True) -> StreamingSampler:
    cfg = model.cfg
    sampler = StreamingSampler(model, config, batch, device, use_cache=use_cache)
    sampler.reset(torch.randn(batch, 1, cfg.num_views, cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                              device=device), torch.randn(batch, 1, cfg.state_dim, device=device))
    return sampler


def command(cfg: SpeedBenchConfig) -> str:
    """The command line that reproduces this run (the flags that differ from the defaults)."""
    defaults = SpeedBenchConfig()
    flags = [f"--model={cfg.model}"] if cfg.model else [f"--preset={cfg.preset}"]
    for name in ("short_horizon", "long_horizon", "naive_horizon", "call_frames", "batched_frames", "batch_sizes"):
        if getattr(cfg, name) != getattr(defaults, name):
            flags.append(f"--{name}={getattr(cfg, name)}".replace(" ", ""))
    return " ".join(["python -m eval.speed", *flags])


def timed_model(cfg: SpeedBenchConfig) -> VideoDiT:
    """The network to time: a model folder's (checked before any work), or the preset's with random weights."""
    if cfg.model is not None:
        check_folder_kind(cfg.model, "VideoDiT")
        model = VideoDiT.from_pretrained(cfg.model).float()
        cfg.preset, cfg.views, cfg.image_size = model.cfg.preset, model.cfg.num_views, model.cfg.image_size
        return model
    model_cfg = build_config(cfg.preset, num_views=cfg.views, latent_size=cfg.image_size, image_size=cfg.image_size)
    model = make_model(model_cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def main() -> None:
    import draccus

    cfg = draccus.parse(SpeedBenchConfig)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = timed_model(cfg).to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    s = cfg.sampler
    chunk_cfg = SamplerConfig(**{**asdict(s), "rolling": False, "window": 1, "memory": s.memory})
    window = cfg.call_frames

    def rate(config, use_cache, horizon):
        sampler = new_sampler(model, config, 1, device, use_cache)
        with torch.no_grad(), autocast:
            times = timed_rollout(sampler, horizon, window, device)
        return times

    results = {}
    with torch.no_grad():
        print("warming up ...", flush=True)
        rate(s, True, window)
        frames_per_s = {}
        for name, config, use_cache in (("rolling_cache", s, True), ("chunk_cache", chunk_cfg, True),
                                        ("naive", s, False)):
            horizon = cfg.naive_horizon if name == "naive" else cfg.short_horizon
            times = rate(config, use_cache, horizon)
            frames_per_s[name] = 1.0 / (sum(times) / len(times))
            if name == "naive":
                results["naive_per_frame_s_at_50"] = times[min(50 // window, len(times) - 1)]
                results["naive_per_frame_s_last"] = times[-1]
            print(f"{name:14s} {frames_per_s[name]:8.2f} frames/s over {horizon} frames", flush=True)
        results["frames_per_s"] = frames_per_s

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sampler = new_sampler(model, s, 1, device)
        with autocast:
            times = timed_rollout(sampler, cfg.long_horizon, window, device)
        results["per_frame_s_at_50"] = times[min(50 // window, len(times) - 1)]
        results["per_frame_s_at_500"] = times[min(500 // window, len(times) - 1)]
        results["cache_frames_at_end"] = sampler.cache_frames()
        results["memory_frames_at_end"] = int(sampler.memory.size.max())
        results["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"per frame at 50: {results['per_frame_s_at_50']:.4f} s, at 500: {results['per_frame_s_at_500']:.4f} s",
              flush=True)

        batched = {}
        for b in cfg.batch_sizes:
            sampler = new_sampler(model, s, b, device)
            with autocast:
                times = timed_rollout(sampler, cfg.batched_frames, window, device)
            batched[str(b)] = b / (sum(times) / len(times))
            print(f"batch {b:3d}: {batched[str(b)]:8.2f} frames/s", flush=True)
        results["batched_frames_per_s"] = batched

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    tag = "gpu_" + device_name.split()[-1].lower() if device.type == "cuda" else "cpu"
    report = {"device": device_name, "torch": torch.__version__, "model_preset": cfg.preset,
              "parameters": sum(p.numel() for p in model.parameters()), "image_size": cfg.image_size,
              "views": cfg.views, "sampler": asdict(s), "short_horizon": cfg.short_horizon,
              "long_horizon": cfg.long_horizon, "naive_horizon": cfg.naive_horizon, "call_frames": cfg.call_frames,
              "model": cfg.model, "command": command(cfg), **results}
    fps = results["frames_per_s"]
    timed = f"`{cfg.model}` ({cfg.preset})" if cfg.model else f"`{cfg.preset}` preset with random weights"
    md = [f"# Streaming speed ({device_name})", "",
          f"{timed}, {cfg.views} views x {cfg.image_size} px, S={s.steps} steps, W={s.window}, "
          f"sink {s.sink_frames}, recent {s.recent_frames}, memory k={s.memory.k} of {s.memory.capacity}.", "",
          "| mode | frames/s (1 rollout) |", "| --- | ---: |",
          f"| rolling + cache | {fps['rolling_cache']:.2f} |", f"| chunk-autoregressive + cache | {fps['chunk_cache']:.2f} |",
          f"| naive, no cache ({cfg.naive_horizon} frames) | {fps['naive']:.2f} |", "",
          "| measure | value |", "| --- | ---: |",
          f"| rolling + cache, latency per frame at frame 50 (s) | {results['per_frame_s_at_50']:.4f} |",
          f"| rolling + cache, latency per frame at frame 500 (s) | {results['per_frame_s_at_500']:.4f} |",
          f"| naive, s/frame at frame 50 | {results['naive_per_frame_s_at_50']:.4f} |",
          f"| naive, s/frame at frame {cfg.naive_horizon} | {results['naive_per_frame_s_last']:.4f} |",
          f"| peak memory (MB) | {results['peak_memory_mb']:.0f} |"]
    md += [f"| batched frames/s, {b} rollouts | {v:.2f} |" for b, v in results["batched_frames_per_s"].items()]
    write_result(cfg.output or f"eval/results/speed_{tag}.json", report, md)


if __name__ == "__main__":
    main()
