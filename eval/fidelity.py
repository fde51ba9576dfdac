"""Open-loop fidelity vs horizon, the value of each streaming mechanism, and the revisit test.

    python -m eval.fidelity --model=pretrained/metaworld_push/tiny \
        --dataset.root=outputs/datasets/metaworld_push_long --episodes=4 --run=cpu_tiny

Held-out episodes (long waypoint tours recorded by `data.metaworld.record --tour_after=...`, never seen in
training) are replayed open loop: the model starts from each episode's first real frame and is given
the recorded actions only. Every imagined frame is compared with the real one (PSNR, SSIM, per view).
In one run, with the same episodes and noise seed, these sampler variants:

    full        rolling window + KV cache with attention sinks, recent frames and pose memory
    no_memory   the same without pose memory (memory.k = 0)
    no_sinks    the same without attention sinks (sink_frames = 0)
    chunk       chunk-autoregressive (Self Forcing style) instead of rolling, everything else as full
    one_step    (optional) one denoising step per frame: the network's clean-frame estimate from pure
                noise, i.e. its conditional mean (blurrier where the future is uncertain, no sampling noise)
    no_state_range  (optional) the full sampler without holding the state inside the training set's range
    copy_first  not a model: the first real frame repeated (what a model that draws nothing new scores)
    state_ridge      not a model of pixels: ridge regression of the state change over one frame on (state,
                     the frame's actions), fitted on the training set (`baseline_dataset`), rolled out open loop
    state_kinematic  dead reckoning: hand += ACTION_TO_POSE x the summed actions, clipped to the hand's
                     workspace in the training set; the object held still
The state baselines and every model variant get `hand_error_m` and `object_error_m` (position error in
metres at each horizon), so "it follows actions" is measured against the simplest things that could.

Revisit test: in the real episodes, the frames where the arm comes back (within 3 cm) to a place it
left (more than 10 cm away) at least `revisit_min_gap` frames earlier, so the earlier view is out of
the recent context and only pose memory can bring it back; PSNR/SSIM on those frames with and without
memory (paired: the same frames, episodes and noise).

Writes <results_dir>/fidelity_<run>.json and .md, and <output_dir>/fidelity_<run>.html (curves).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.report import write_result
from worldmodel.dataset import ClipDataset, DatasetConfig
from worldmodel.envs.metaworld import ACTION_TO_POSE, STATE_NAMES
from worldmodel.memory import MemoryConfig
from worldmodel.metrics import open_loop_fidelity, psnr, recorded_frames, revisit_frames, ssim
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel


@dataclass
class FidelityConfig:
    model: str = "pretrained/metaworld_push/tiny"
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(root="outputs/datasets/metaworld_push_long",
                                                                         repo_id="local/metaworld_push_long"))
    episodes: int = 4  # held-out episodes (the first ones of the dataset)
    horizons_s: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0, 20.0])  # robot time
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(
        steps=4, window=4, sink_frames=1, recent_frames=4,
        memory=MemoryConfig(k=2, capacity=64)))  # the memory query's control gain is the model's own
    variants: list[str] = field(default_factory=lambda: ["full", "no_memory", "no_sinks", "chunk"])
    # The training set the state baselines are fitted on (None: no state baselines).
    baseline_dataset: DatasetConfig | None = field(default_factory=lambda: DatasetConfig(
        root="outputs/datasets/metaworld_push", repo_id="local/metaworld_push"))
    ridge_alpha: float = 1.0
    revisit_near: float = 0.03
    revisit_away: float = 0.10
    revisit_min_gap: int = 12  # frames; more than the sampler's recent + window frames
    # "Far": the hand at least this far (m) from the object, where nothing should move it (far_object_motion).
    far_m: float = 0.2
    seed: int = 0
    run: str = "cpu"
    results_dir: str = "eval/results"
    output_dir: str = "outputs/fidelity"
    device: str | None = None


def variant_sampler(base: SamplerConfig, name: str) -> SamplerConfig:
    if name == "full":
        return base
    if name == "no_memory":
        return replace(base, memory=replace(base.memory, k=0))
    if name == "no_sinks":
        return replace(base, sink_frames=0)
    if name == "chunk":
        return replace(base, rolling=False)
    if name == "one_step":
        return replace(base, steps=1, window=1)
    if name == "no_state_range":
        return replace(base, clip_state_to_training_range=False)
    raise ValueError(f"variants: unknown {name!r}; expected full, no_memory, no_sinks, chunk, one_step or "
                     "no_state_range")


def copy_first_frame(clips: ClipDataset, positions: list[int], horizon: int, stride: int) -> dict:
    """The baseline that draws nothing new: PSNR/SSIM of the first real frame against every later one."""
    cache = clips.cache
    starts = cache.episode_start[positions]
    steps = stride * np.arange(1, horizon + 1)
    out = {"psnr_per_episode": {}, "ssim_per_episode": {}}
    for v, key in enumerate(clips.camera_keys):
        real = recorded_frames(cache, starts, steps, v)
        first = recorded_frames(cache, starts, [0], v).expand_as(real)
        out["psnr_per_episode"][key] = psnr(first, real).numpy()
        out["ssim_per_episode"][key] = ssim(first, real).numpy()
    return out


HAND = [STATE_NAMES.index(n) for n in ("hand_x", "hand_y", "hand_z")]
OBJECT = [STATE_NAMES.index(n) for n in ("obj_x", "obj_y", "obj_z")]


def far_object_motion(state: np.ndarray, far: float) -> dict:
    """How an object moves while the hand is more than `far` (m) from it, where nothing can push it. state
    (B, T, S) per frame -> the mean object step per frame (m) over those frames, their count, and the correlation
    of the object's velocity with the hand's there per axis (x, y, z): an object that moves with a distant hand
    is a model that has learned "the puck moves when the hand moves" without the contact."""
    hand, obj = state[..., HAND], state[..., OBJECT]
    is_far = np.linalg.norm(hand[:, 1:] - obj[:, 1:], axis=-1) > far  # (B, T - 1)
    obj_velocity, hand_velocity = np.diff(obj, axis=1)[is_far], np.diff(hand, axis=1)[is_far]  # (N, 3)
    if len(obj_velocity) < 3:
        return {"frames": int(is_far.sum()), "object_step_m": None, "hand_correlation": None}
    correlation = [float(np.corrcoef(obj_velocity[:, k], hand_velocity[:, k])[0, 1]) if obj_velocity[:, k].std() > 0
                   else 0.0 for k in range(3)]
    return {"frames": int(is_far.sum()), "object_step_m": float(np.linalg.norm(obj_velocity, axis=-1).mean()),
            "hand_correlation": correlation}


def frame_transitions(clips: ClipDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (state, the next frame's action chunk, next state) of a cache, frames `frame_stride` apart."""
    cache, stride = clips.cache, clips.cfg.frame_stride
    states, chunks, nexts = [], [], []
    for start, length in zip(cache.episode_start, cache.episode_length):
        steps = np.arange(0, length - stride, stride)
        states.append(cache.states[start + steps])
        chunks.append(np.stack([cache.actions[start + s:start + s + stride].reshape(-1) for s in steps]))
        nexts.append(cache.states[start + steps + stride])
    return np.concatenate(states), np.concatenate(chunks), np.concatenate(nexts)


def fit_state_ridge(clips: ClipDataset, alpha: float):
    """Ridge regression of the state change over one frame on standardised (state, action chunk)."""
    states, chunks, nexts = frame_transitions(clips)
    features = np.concatenate([states, chunks], axis=1).astype(np.float64)
    mean, std = features.mean(0), np.maximum(features.std(0), 1e-6)
    X = np.concatenate([(features - mean) / std, np.ones((len(features), 1))], axis=1)
    W = np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ (nexts - states))

    def predict(state: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        x = (np.concatenate([state, chunk.reshape(len(chunk), -1)], axis=1) - mean) / std
        return state + np.concatenate([x, np.ones((len(x), 1))], axis=1) @ W

    return predict


def kinematic_model(clips: ClipDataset):
    """Dead reckoning: the hand moves by ACTION_TO_POSE x the summed actions, clipped to the workspace the
    hand reached in the training set; everything else (the object) is held still."""
    action_to_hand = np.asarray(ACTION_TO_POSE, dtype=np.float64)[:, :3]  # (A, 3)
    hand = clips.cache.states[:, HAND]
    low, high = hand.min(0), hand.max(0)

    def predict(state: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        out = state.copy()
        out[:, HAND] = np.clip(state[:, HAND] + chunk.sum(axis=1) @ action_to_hand, low, high)
        return out

    return predict


def state_rollout(predict, clips: ClipDataset, positions: list[int], horizon: int) -> np.ndarray:
    """Open-loop rollout of a state model over recorded actions -> predicted state (B, horizon, S)."""
    cache, stride = clips.cache, clips.cfg.frame_stride
    starts = cache.episode_start[positions]
    state = cache.states[starts].astype(np.float64)
    out = []
    for f in range(horizon):
        chunk = np.stack([cache.actions[s + f * stride:s + (f + 1) * stride] for s in starts])  # (B, stride, A)
        state = predict(state, chunk)
        out.append(state)
    return np.stack(out, axis=1)


def state_baselines(cfg: FidelityConfig, model_cfg, clips: ClipDataset, positions, horizon) -> dict:
    """{"state_ridge": {"imagined_state": ...}, "state_kinematic": {...}} fitted on the training set."""
    train = ClipDataset(replace(cfg.baseline_dataset, camera_keys=list(model_cfg.camera_keys),
                                image_size=model_cfg.image_size, frame_stride=model_cfg.frame_stride,
                                clip_frames=2, memory_frames=0))
    return {"state_ridge": {"imagined_state": state_rollout(fit_state_ridge(train, cfg.ridge_alpha), clips,
                                                            positions, horizon)},
            "state_kinematic": {"imagined_state": state_rollout(kinematic_model(train), clips, positions, horizon)}}


def summarise(per_episode: dict, frames: list[int]) -> dict:
    """{key: (B, horizon)} -> {key: [mean over episodes at each of `frames` (1-based)]} + all views."""
    out = {key: [float(v[:, f - 1].mean()) for f in frames] for key, v in per_episode.items()}
    out["mean_over_views"] = [float(np.mean([out[key][i] for key in per_episode])) for i in range(len(frames))]
    return out


def masked_mean(per_episode: dict, mask: np.ndarray) -> dict:
    """{key: (B, horizon)}, mask (B, horizon) bool -> {key: mean over masked frames}."""
    out = {key: float(v[mask].mean()) if mask.any() else float("nan") for key, v in per_episode.items()}
    out["mean_over_views"] = float(np.mean([out[key] for key in per_episode]))
    return out


def held_out_tours(dataset: DatasetConfig, episodes: int, model_cfg, horizon: int) -> ClipDataset:
    """The first `episodes` episodes of a recorded dataset at the model's views, size and frame stride; a missing
    dataset is named, with the command that records it, before any slow work."""
    mc, root = model_cfg, Path(dataset.root)
    if not (root / "meta" / "info.json").exists():
        raise FileNotFoundError(
            f"dataset.root={root}: no dataset. Record held-out long tours first, e.g. python -m data.metaworld.record "
            f"--root={root} --repo_id={dataset.repo_id} --episodes={episodes} "
            f"--env.max_episode_steps={horizon * mc.frame_stride + mc.frame_stride} --tour_after=120 --seed=1000000")
    return ClipDataset(replace(dataset, camera_keys=list(mc.camera_keys), image_size=mc.image_size,
                               frame_stride=mc.frame_stride, clip_frames=2, memory_frames=0,
                               episodes=list(range(episodes))))


def real_states(clips: ClipDataset, positions: list[int], horizon: int) -> np.ndarray:
    """The real state at every imagined frame: (B, horizon, S), frame f (0-based) is `frame_stride * (f + 1)` env
    steps after the episode's start."""
    cache, stride = clips.cache, clips.cfg.frame_stride
    return np.stack([cache.states[s + stride * np.arange(1, horizon + 1)] for s in cache.episode_start[positions]])


def revisit_mask(real_state: np.ndarray, near: float, away: float, min_gap: int) -> np.ndarray:
    """(B, horizon) bool: the imagined frames at which the real hand is back at a place it left (revisit_frames)."""
    mask = np.zeros(real_state.shape[:2], dtype=bool)
    for b, hand in enumerate(real_state[..., HAND]):
        mask[b, revisit_frames(hand, near, away, min_gap)] = True
    return mask


def fidelity(cfg: FidelityConfig) -> dict:
    started = time.time()
    model = VideoDiT.from_pretrained(cfg.model)
    mc = model.cfg
    fps = mc.fps / mc.frame_stride  # world-model frames per second of robot time
    frames = [max(1, round(h * fps)) for h in cfg.horizons_s]
    horizon = max(frames)
    root = Path(cfg.dataset.root)
    clips = held_out_tours(cfg.dataset, cfg.episodes, mc, horizon)
    positions = list(range(cfg.episodes))
    keys = list(mc.camera_keys)

    variants, device = {}, None
    for name in tqdm(cfg.variants, desc="fidelity variants", unit="variant"):
        world = WorldModel(model, variant_sampler(cfg.sampler, name), batch_size=len(positions),
                           device=cfg.device, seed=cfg.seed)
        t0 = time.time()
        variants[name] = open_loop_fidelity(world, clips, positions, horizon)
        variants[name]["seconds"] = time.time() - t0
        device = str(world.device)
    variants["copy_first"] = copy_first_frame(clips, positions, horizon, mc.frame_stride)
    if cfg.baseline_dataset is not None:
        variants.update(state_baselines(cfg, mc, clips, positions, horizon))

    # The real state at every imagined frame (B, horizon, S): revisits, hand and object error.
    real_state = real_states(clips, positions, horizon)
    mask = revisit_mask(real_state, cfg.revisit_near, cfg.revisit_away, cfg.revisit_min_gap)

    result = {
        "run": cfg.run, "horizons_s": cfg.horizons_s, "horizons_frames": frames,
        "model": {"path": cfg.model, "preset": mc.preset, "image_size": mc.image_size, "camera_keys": keys,
                  "frame_stride": mc.frame_stride, "fps": mc.fps},
        "dataset": str(root), "episodes": cfg.episodes, "sampler": asdict(cfg.sampler),
        "variants": {}, "revisit": {"frames": int(mask.sum()), "near_m": cfg.revisit_near, "away_m": cfg.revisit_away,
                                    "min_gap_frames": cfg.revisit_min_gap},
        "device": device,
    }
    for name, r in variants.items():
        entry = {}
        if "psnr_per_episode" in r:
            entry = {"psnr": summarise(r["psnr_per_episode"], frames), "ssim": summarise(r["ssim_per_episode"], frames),
                     "psnr_curve": {k: v.mean(0).round(3).tolist() for k, v in r["psnr_per_episode"].items()}}
        if "seconds" in r:
            entry["seconds"] = r["seconds"]
        if "imagined_state" in r:  # hand and object position error (m) at each horizon
            for part, idx in (("hand", HAND), ("object", OBJECT)):
                error = np.linalg.norm(r["imagined_state"][..., idx] - real_state[..., idx], axis=-1)  # (B, horizon)
                entry[f"{part}_error_m"] = [float(error[:, f - 1].mean()) for f in frames]
        result["variants"][name] = entry
    for name in ("full", "no_memory", "copy_first"):
        if name in variants:
            result["revisit"][name] = {"psnr": masked_mean(variants[name]["psnr_per_episode"], mask),
                                       "ssim": masked_mean(variants[name]["ssim_per_episode"], mask)}
    # Does the imagined object move where nothing can push it (the hand far from it)? Real rollouts beside.
    result["far_object_motion"] = {"far_m": cfg.far_m, "real": far_object_motion(real_state, cfg.far_m)}
    for name, r in variants.items():
        if "imagined_state" in r:
            result["far_object_motion"][name] = far_object_motion(r["imagined_state"], cfg.far_m)
    result["seconds"] = time.time() - started
    result["command"] = (f"python -m eval.fidelity --model={cfg.model} --dataset.root={cfg.dataset.root} "
                         f"--dataset.repo_id={cfg.dataset.repo_id} --episodes={cfg.episodes} --run={cfg.run} "
                         f"--horizons_s='{json.dumps(cfg.horizons_s)}' --variants='[{','.join(cfg.variants)}]' "
                         f"--baseline_dataset.root={cfg.baseline_dataset.root if cfg.baseline_dataset else None}")
    write_results(cfg, result)
    return result


def far_motion_lines(motion: dict | None) -> list[str]:
    if not motion:
        return []
    lines = ["", f"The object while the hand is more than {100 * motion['far_m']:.0f} cm from it (each rollout's own hand "
             "and object: the real ones in the real rollout, the imagined ones in the imagined):", "",
             "| rollout | frames | object step (cm per frame) | correlation with the hand's velocity (x / y / z) |",
             "| --- | ---: | ---: | ---: |"]
    for name, m in motion.items():
        if name == "far_m" or m["object_step_m"] is None:
            continue
        lines.append(f"| {name} | {m['frames']} | {100 * m['object_step_m']:.3f} | "
                     + " / ".join(f"{c:.2f}" for c in m["hand_correlation"]) + " |")
    return lines


def write_results(cfg: FidelityConfig, result: dict) -> None:
    horizons = " | ".join(f"{h:g} s" for h in result["horizons_s"])
    lines = [f"# Open-loop fidelity: {result['run']}", "",
             f"Model `{result['model']['path']}` ({result['model']['preset']}), {result['episodes']} held-out episodes "
             f"of `{result['dataset']}`, recorded actions replayed open loop. PSNR (dB) / SSIM averaged over the "
             f"views {', '.join(k.removeprefix('observation.images.') for k in result['model']['camera_keys'])} "
             "(per-view numbers in the JSON).", "",
             f"| variant | PSNR / SSIM at {horizons} | hand error (cm) | object error (cm) |",
             "| --- |" + " ---: |" * (len(result["horizons_s"]) + 2)]
    for name, v in result["variants"].items():
        cells = (" | ".join(f"{p:.2f} / {s:.3f}" for p, s in zip(v["psnr"]["mean_over_views"], v["ssim"]["mean_over_views"]))
                 if "psnr" in v else " | ".join("-" for _ in result["horizons_s"]))
        hand = " / ".join(f"{100 * e:.1f}" for e in v["hand_error_m"]) if "hand_error_m" in v else "-"
        obj = " / ".join(f"{100 * e:.1f}" for e in v["object_error_m"]) if "object_error_m" in v else "-"
        lines.append(f"| {name} | {cells} | {hand} | {obj} |")
    rv = result["revisit"]
    lines += ["", f"Revisit test: {rv['frames']} frames where the arm is back within {100 * rv['near_m']:.0f} cm of a place "
              f"it left (> {100 * rv['away_m']:.0f} cm away) at least {rv['min_gap_frames']} frames earlier.", "",
              "| variant | PSNR on revisits | SSIM on revisits | gripperPOV PSNR |", "| --- | ---: | ---: | ---: |"]
    for name in ("full", "no_memory", "copy_first"):
        if name in rv:
            pov = [v for k, v in rv[name]["psnr"].items() if k.endswith("gripperPOV")]
            lines.append(f"| {name} | {rv[name]['psnr']['mean_over_views']:.2f} | "
                         f"{rv[name]['ssim']['mean_over_views']:.3f} | {f'{pov[0]:.2f}' if pov else '-'} |")
    lines += far_motion_lines(result.get("far_object_motion"))
    lines += ["", f"`{result['command']}` ({result['seconds']:.0f} s on {result['device']})."]
    write_result(Path(cfg.results_dir) / f"fidelity_{cfg.run}.json", result, lines)

    # A page with the PSNR curves (all views averaged) of every variant.
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    width, height, pad = 640, 320, 40
    curves = {name: np.mean([np.asarray(c) for c in v["psnr_curve"].values()], axis=0)
              for name, v in result["variants"].items() if "psnr_curve" in v}
    top = max(float(c.max()) for c in curves.values()) + 1
    bottom = min(float(c.min()) for c in curves.values()) - 1
    colors = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#7f8c8d", "#d35400"]
    paths = []
    for (name, c), color in zip(curves.items(), colors):
        xs = pad + np.arange(len(c)) / max(1, len(c) - 1) * (width - 2 * pad)
        ys = pad + (top - c) / (top - bottom) * (height - 2 * pad)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        paths.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'
                     f'<text x="{width - pad + 4}" y="{ys[-1]:.1f}" fill="{color}" font-size="11">{name}</text>')
    svg = (f'<svg width="{width + 80}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
           f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#888"/>'
           f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="11">imagined frame (robot time '
           f'0 to {result["horizons_s"][-1]:g} s)</text><text x="4" y="{pad - 8}" font-size="11">PSNR {top:.0f} dB</text>'
           f'<text x="4" y="{height - pad + 14}" font-size="11">{bottom:.0f} dB</text>{"".join(paths)}</svg>')
    table = "\n".join(lines)
    (out / f"fidelity_{result['run']}.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>fidelity {result['run']}</title></head>"
        f"<body style='font-family:sans-serif;margin:2em'><h1>Open-loop fidelity ({result['run']})</h1>{svg}"
        f"<pre>{table}</pre></body></html>")


def main() -> None:
    import draccus

    fidelity(draccus.parse(FidelityConfig))


if __name__ == "__main__":
    main()
