"""Which world-model design learns fastest on this machine: every variant trained from scratch (or fine-tuned
from one model, --init_from) for the same wall-clock budget on the same data, scored by the same open-loop
fidelity on held-out long tours (and, with --teacher_forced=true, the state 1-5 frames after real frames).

    python -m eval.ablation --minutes=4 --run=cpu

For each variant: `python -m worldmodel.train` with the variant's flags and `--train.max_minutes`, then
`python -m eval.fidelity` (full sampler, copy-first and the two state baselines, at `horizons_s`) on the
first `episodes` held-out tours. Variants whose fidelity result exists are skipped, so a rerun after an
interruption continues; a variant whose training was interrupted resumes from its checkpoint (the budget
counts training time over resumes). Writes <results_dir>/ablation_<run>.json and .md with every command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval.report import write_result

# name -> (what changes, the flags beside COMMON_FLAGS). "today" is the design shipped before this study. Variants
# measured before a default changed pin the old value, so rerunning them reproduces what their row says.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "today": ("tiny preset as shipped: 8x8 patches (193 tokens/frame), frames predicted whole, 3 memory frames, batch 8",
              ["--model.patch_size=8", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=false", "--model.condition_on_state=false", "--model.deterministic_state=false",
               "--dataset.memory_frames=3", "--train.batch_size=8", "--diffusion.noisy_anchor=false"]),
    "residual": ("today + predict the change from the last clean frame (latents and state)",
                 ["--model.patch_size=8", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true", "--model.condition_on_state=false",
                  "--dataset.memory_frames=3", "--train.batch_size=8", "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "residual_p16": ("residual + 16x16 pixel patches (49 tokens/frame), batch 16",
                     ["--model.patch_size=16", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true", "--model.condition_on_state=false",
                      "--dataset.memory_frames=3", "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "residual_p16_nomem": ("residual_p16 without memory frames in training (sink and pose memory never seen)",
                           ["--model.patch_size=16", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true",
                            "--model.condition_on_state=false", "--dataset.memory_frames=0", "--train.batch_size=16",
                            "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "residual_p16_state": ("residual_p16 + each frame's adaLN conditioned on its anchor's state (hand, object)",
                           ["--model.patch_size=16", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true",
                            "--model.condition_on_state=true", "--dataset.memory_frames=3", "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "residual_p16_state_noisy_anchor": (
        "residual_p16_state, future frames anchored on the context frame as the network sees it (history "
        "noise up to t=0.3 in half the clips), so the change also corrects a corrupted anchor",
        ["--model.patch_size=16", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true",
         "--model.condition_on_state=true", "--dataset.memory_frames=3", "--train.batch_size=16", "--diffusion.noisy_anchor=true", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "residual_p16_state_noisy_anchor_lr3e-4": (
        "residual_p16_state_noisy_anchor with lr 3e-4 instead of 1e-3 (a residual model starts near a good "
        "solution, where Adam's normalised steps of size lr are mostly noise)",
        ["--model.patch_size=16", "--model.residual_from_first_frame=false", "--model.linear_state_dynamics=false", "--model.predict_residual=true",
         "--model.condition_on_state=true", "--dataset.memory_frames=3", "--train.batch_size=16", "--diffusion.noisy_anchor=true", "--train.lr=3e-4", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "first_frame_residual": (
        "residual_p16_state_noisy_anchor, but pictures are the rollout's first frame plus a change (its patches "
        "added to every token); only the state is anchored on the newest frame, so generated pictures never compound",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=false", "--dataset.memory_frames=3", "--train.batch_size=16",
         "--diffusion.noisy_anchor=true", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "first_frame_residual_clean_anchor": (
        "first_frame_residual with the state anchored on the clean context state (a noisy anchor state puts "
        "noise into the target change that nothing in the clip can explain)",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=false", "--dataset.memory_frames=3", "--train.batch_size=16",
         "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "first_frame_residual_clean_anchor_state_w4": (
        "first_frame_residual_clean_anchor with the state loss weighted x4 (the state is 39 numbers beside "
        "3 x 64 x 64 x 3 pixels, and most of its dimensions never change)",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=false", "--dataset.memory_frames=3", "--train.batch_size=16",
         "--diffusion.noisy_anchor=false", "--diffusion.state_loss_weight=4.0", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "first_frame_residual_clean_anchor_linear_state": (
        "first_frame_residual_clean_anchor + a linear path from the actions summed since the anchor to the "
        "state change (zero at init), beside the transformer",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=false", "--model.condition_on_command=false"]),
    "deterministic_state": (
        "first_frame_residual_clean_anchor_linear_state with the state regressed instead of sampled: frames being "
        "denoised read their anchor's clean state, never a noisy one, and the state loss is its plain squared error "
        "(each frame's state is the conditional mean, so no sampling noise is summed over a rollout)",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=true", "--model.condition_on_command=false",
         "--diffusion.median_state=false"]),
    "commanded_pose": (
        "deterministic_state + every predicted frame told the commanded pose (the controller's target, integrated "
        "from the rollout's first frame with a gain fitted on the training set, clipped to the workspace at every "
        "step) in its adaLN conditioning and through a linear path to its state change",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=true",
         "--model.condition_on_command=true", "--diffusion.median_state=false"]),
    "commanded_pose_balanced_state": (
        "commanded_pose + each state dimension's error weighted by the inverse variance of its change over one frame "
        "(mean weight 1 over the dimensions that change): the puck's position weighs ~30x its quaternion",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=true",
         "--model.condition_on_command=true", "--diffusion.balance_state_dims=true",
         "--diffusion.median_state=false"]),
    "mean_state": (
        "commanded_pose with the state trained by its squared error (its conditional mean), as shipped before",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=true",
         "--model.condition_on_command=true", "--diffusion.median_state=false"]),
    "median_state": (
        "commanded_pose with the state trained by its absolute error (its conditional median: a usually-still "
        "object predicted still)",
        ["--model.patch_size=16", "--model.predict_residual=true", "--model.condition_on_state=true",
         "--model.residual_from_first_frame=true", "--model.linear_state_dynamics=true", "--dataset.memory_frames=3",
         "--train.batch_size=16", "--diffusion.noisy_anchor=false", "--model.deterministic_state=true",
         "--model.condition_on_command=true", "--diffusion.median_state=true"]),
}


SAMPLER_VARIANTS = {"one_step": "with 1 step per frame (the network's conditional-mean estimate)",
                    "no_state_range": "without holding the state inside its training range"}


@dataclass
class AblationConfig:
    dataset_root: str = "outputs/datasets/metaworld_push"
    repo_id: str = "local/metaworld_push"
    long_root: str = "outputs/datasets/metaworld_push_long"
    long_repo_id: str = "local/metaworld_push_long"
    minutes: float = 3.0  # training wall-clock budget per variant
    episodes: int = 4  # held-out tours scored
    horizons_s: list[float] = field(default_factory=lambda: [1.0, 5.0])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    # Sampler variants each model is scored with (eval.fidelity --variants); no_state_range shows what holding
    # the state inside the training range does.
    fidelity_variants: list[str] = field(default_factory=lambda: ["full", "one_step"])
    lr: float = 1e-3
    # Fine-tune every variant from this world model folder instead of training from scratch (a design change
    # that keeps every weight's shape, e.g. a loss, is then read after `minutes` of the same start).
    init_from: str | None = None
    # Also score each model teacher forced (eval.state_drift on `teacher_forced_episodes` tours): hand and object
    # error 1 and 5 frames after real frames, where open-loop drift starts.
    teacher_forced: bool = False
    teacher_forced_episodes: int = 8
    run: str = "cpu"
    work_dir: str = "outputs/ablation"
    results_dir: str = "eval/results"


def train_command(cfg: AblationConfig, name: str) -> list[str]:
    common = [f"--dataset.root={cfg.dataset_root}", f"--dataset.repo_id={cfg.repo_id}", "--model.preset=tiny",
              "--dataset.clip_frames=6", f"--train.lr={cfg.lr}", "--train.schedule=constant_with_warmup",
              "--train.warmup_steps=50", "--train.steps=1000000", f"--train.max_minutes={cfg.minutes}",
              "--train.val_every=1000000", "--train.val_clips=4", "--train.val_episodes=2",
              "--train.checkpoint_every=200", "--train.num_workers=0"]
    if cfg.init_from is not None:
        common.append(f"--init_from={cfg.init_from}")
    return [sys.executable, "-m", "worldmodel.train", *common, *VARIANTS[name][1],
            f"--output_dir={cfg.work_dir}/train/{name}"]


def state_drift_command(cfg: AblationConfig, name: str) -> list[str]:
    return [sys.executable, "-m", "eval.state_drift", f"--model={cfg.work_dir}/train/{name}/model",
            f"--dataset.root={cfg.long_root}", f"--dataset.repo_id={cfg.long_repo_id}",
            f"--baseline_dataset.root={cfg.dataset_root}", f"--baseline_dataset.repo_id={cfg.repo_id}",
            f"--episodes={cfg.teacher_forced_episodes}", "--frames_ahead=5", f"--run=ablation_{cfg.run}_{name}",
            f"--results_dir={cfg.work_dir}/state_drift"]


def fidelity_command(cfg: AblationConfig, name: str) -> list[str]:
    return [sys.executable, "-m", "eval.fidelity", f"--model={cfg.work_dir}/train/{name}/model",
            f"--dataset.root={cfg.long_root}", f"--dataset.repo_id={cfg.long_repo_id}", f"--episodes={cfg.episodes}",
            f"--horizons_s={json.dumps(cfg.horizons_s)}", f"--variants=[{','.join(cfg.fidelity_variants)}]",
            f"--baseline_dataset.root={cfg.dataset_root}", f"--baseline_dataset.repo_id={cfg.repo_id}",
            f"--run=ablation_{cfg.run}_{name}", f"--results_dir={cfg.work_dir}/fidelity",
            f"--output_dir={cfg.work_dir}/fidelity"]


def run_variant(cfg: AblationConfig, name: str) -> dict:
    out = Path(cfg.work_dir) / "train" / name
    fidelity_file = Path(cfg.work_dir) / "fidelity" / f"fidelity_ablation_{cfg.run}_{name}.json"
    if not fidelity_file.exists():
        if not (out / "model" / "config.json").exists():
            resume = (out / "checkpoints" / "latest").exists()
            subprocess.run(train_command(cfg, name) + [f"--resume={str(resume).lower()}"], check=True)
        subprocess.run(fidelity_command(cfg, name), check=True)
    commands = [train_command(cfg, name), fidelity_command(cfg, name)]
    teacher_forced = None
    if cfg.teacher_forced:
        drift_file = Path(cfg.work_dir) / "state_drift" / f"state_drift_ablation_{cfg.run}_{name}.json"
        if not drift_file.exists():
            subprocess.run(state_drift_command(cfg, name), check=True)
        teacher_forced = json.loads(drift_file.read_text())
        commands.append(state_drift_command(cfg, name))
    summary = json.loads((out / "train_summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"description": VARIANTS[name][0], "flags": VARIANTS[name][1],
            "train": {"steps": summary["steps"], "wall_seconds": summary["wall_seconds"],
                      "clips_per_s": summary["clips_per_s"], "parameters": summary["parameters"],
                      "final_loss": next((m["loss"] for m in reversed(metrics) if "loss" in m), None)},
            "fidelity": json.loads(fidelity_file.read_text()), "teacher_forced": teacher_forced,
            "commands": [" ".join(command[1:]) for command in commands]}


def start_of(cfg: AblationConfig) -> str:
    return f"fine-tuned from `{cfg.init_from}`" if cfg.init_from else "trained from scratch"


def per_variant(results: dict, read) -> dict:
    """{variant: read(its result)} for the variants where that reading exists."""
    return {name: value for name, r in results["variants"].items() if (value := read(r))}


def teacher_forced_table(results: dict) -> list[str]:
    """Hand and object error (cm) 1 and 5 frames after real frames, per variant, beside the baselines."""
    scored = per_variant(results, lambda r: r.get("teacher_forced"))
    if not scored:
        return []
    first = next(iter(scored.values()))
    lines = ["", f"Teacher forced (`eval.state_drift`, {first['starts']} starts on {first['episodes']} held-out tours): "
             "cm, 1 and 5 frames after a real frame and state.", "",
             "| variant | hand 1 | hand 5 | object 1 | object 5 |", "| --- | ---: | ---: | ---: | ---: |"]

    def cells(values):
        return f"{100 * values[0]:.2f} | {100 * values[-1]:.2f}"

    for name, drift in scored.items():
        lines.append(f"| {name} | {cells(drift['hand_error_m']['model'])} | {cells(drift['object_error_m']['model'])} |")
    lines.append(f"| *dead reckoning / object held still* | {cells(first['hand_error_m']['dead_reckoning'])} | "
                 f"{cells(first['object_error_m']['held_still'])} |")
    return lines


def far_motion_table(results: dict) -> list[str]:
    """The object while the hand is far from it (eval.fidelity's far_object_motion), per variant."""
    scored = per_variant(results, lambda r: r["fidelity"].get("far_object_motion"))
    if not scored:
        return []
    first = next(iter(scored.values()))
    lines = ["", f"The object while the hand is more than {100 * first['far_m']:.0f} cm from it, open loop (full sampler): "
             "its step per frame and the correlation of its velocity with the hand's (x / y / z).", "",
             "| variant | object step (cm per frame) | correlation with the hand |", "| --- | ---: | ---: |"]
    for name, motion in [*scored.items(), ("*real*", first["real"])]:
        m = motion["full"] if "full" in motion else motion
        if m["object_step_m"] is not None:
            lines.append(f"| {name} | {100 * m['object_step_m']:.3f} | " + " / ".join(f"{c:.2f}" for c in m["hand_correlation"]) + " |")
    return lines


def write_results(cfg: AblationConfig, results: dict) -> None:
    out = Path(cfg.results_dir)
    hs = cfg.horizons_s
    head = (" | ".join(f"PSNR {h:g} s" for h in hs) + " | " + " | ".join(f"SSIM {h:g} s" for h in hs) + " | "
            + " | ".join(f"hand {h:g} s" for h in hs) + " | " + " | ".join(f"object {h:g} s" for h in hs))
    lines = [f"# Design ablation on CPU ({cfg.run})", "",
             f"Every variant {start_of(cfg)} for **{cfg.minutes:g} minutes** of wall-clock time on "
             f"`{cfg.dataset_root}` (2 episodes held out), then replayed open loop on the first {cfg.episodes} "
             f"held-out tours of `{cfg.long_root}` (full streaming sampler). PSNR/SSIM are means over the views; "
             "hand and object errors are in cm. Baselines in the same run: copy the first frame, and two "
             "state-only models (ridge regression, dead reckoning). Each model is scored with the default "
             "sampler (4 denoising steps per frame, rolling window 4, sink, 4 recent frames, pose memory k=2)"
             + "".join(f"; and, in the same run, {SAMPLER_VARIANTS.get(v, v)}" for v in cfg.fidelity_variants
                       if v != "full") + ".", "",
             f"| variant | steps | clips/s | {head} |", "| --- | ---: | ---: |" + " ---: |" * (4 * len(hs))]

    def row(name: str, steps: str, rate: str, v: dict) -> str:
        def cells(values, fmt):
            return " | ".join(fmt(x) for x in values) if values is not None else " | ".join("-" for _ in hs)
        psnr = v.get("psnr", {}).get("mean_over_views")
        ssim = v.get("ssim", {}).get("mean_over_views")
        return (f"| {name} | {steps} | {rate} | {cells(psnr, lambda x: f'{x:.2f}')} | {cells(ssim, lambda x: f'{x:.3f}')} | "
                f"{cells(v.get('hand_error_m'), lambda x: f'{100 * x:.1f}')} | "
                f"{cells(v.get('object_error_m'), lambda x: f'{100 * x:.1f}')} |")

    baselines = None
    for name, r in results["variants"].items():
        lines.append(row(name, str(r["train"]["steps"]), f"{r['train']['clips_per_s']:.1f}",
                         r["fidelity"]["variants"]["full"]))
        for sampler, label in (("one_step", "1 sampling step"), ("no_state_range", "state not held in its range")):
            if sampler in r["fidelity"]["variants"]:
                lines.append(row(f"{name}, {label}", "", "", r["fidelity"]["variants"][sampler]))
        baselines = r["fidelity"]["variants"]
    for name in ("copy_first", "state_ridge", "state_kinematic"):
        if baselines and name in baselines:
            lines.append(row(f"*{name}*", "-", "-", baselines[name]))
    lines += teacher_forced_table(results)
    lines += far_motion_table(results)
    lines += ["", "| variant | what it changes |", "| --- | --- |"]
    lines += [f"| {name} | {r['description']} |" for name, r in results["variants"].items()]
    lines += ["", "Commands (each variant: train, then fidelity" + (", then teacher forced" if cfg.teacher_forced else "")
              + "):", ""]
    for name, r in results["variants"].items():
        lines += [f"- {name}:"] + [f"  `{command}`" for command in r["commands"]]
    extra = (f" --init_from={cfg.init_from} --lr={cfg.lr:g}" if cfg.init_from else "") + (
        f" --teacher_forced=true --teacher_forced_episodes={cfg.teacher_forced_episodes}" if cfg.teacher_forced else "")
    lines += ["", f"All variants: `python -m eval.ablation --minutes={cfg.minutes:g} --episodes={cfg.episodes} "
              f"--horizons_s='{json.dumps(cfg.horizons_s)}' --run={cfg.run} --variants='[{','.join(cfg.variants)}]' --fidelity_variants='[{','.join(cfg.fidelity_variants)}]' "
              f"--dataset_root={cfg.dataset_root} --long_root={cfg.long_root} --work_dir={cfg.work_dir}{extra}` "
              f"({results['seconds']:.0f} s of this invocation, {results['device']}; variants already scored are read "
              "back, not rerun)."]
    reading = out / f"ablation_{cfg.run}_reading.md"  # what a person concluded, kept across regenerations
    if reading.exists():
        lines += ["", reading.read_text().rstrip()]
    write_result(out / f"ablation_{cfg.run}.json", results, lines)


def ablation(cfg: AblationConfig) -> dict:
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    started = time.time()
    results = {"run": cfg.run, "minutes": cfg.minutes, "variants": {}}
    for name in cfg.variants:
        print(f"== ablation variant {name}: {VARIANTS[name][0]}", flush=True)
        results["variants"][name] = run_variant(cfg, name)
        results["seconds"] = time.time() - started
        results["device"] = results["variants"][name]["fidelity"]["device"]
        write_results(cfg, results)  # after every variant: an interrupted study still shows what it has
    return results


def main() -> None:
    import draccus

    ablation(draccus.parse(AblationConfig))


if __name__ == "__main__":
    main()
