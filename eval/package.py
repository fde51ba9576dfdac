"""Package trained weights into the shipped folder (tracked in git) with a model card each.

    python -m eval.package --train_dir=outputs/train/tiny --name=tiny --judge_dir=outputs/judge/metaworld_push \
        --results=eval/results/fidelity_cpu_tiny.json,eval/results/rank_cpu_tiny.json --gpu_time=none

Writes <dest>/<name>/ (EMA weights in fp16 safetensors, config.json, train_config.json, README.md) and,
with --judge_dir, <dest>/judge/ (weights, judge_report.json, README.md). Each folder is written beside
its destination and renamed into place, so an interrupted run never leaves half a model. Loading needs
nothing but the folder: `VideoDiT.from_pretrained(<dest>/<name>)`, `SuccessJudge.from_pretrained(<dest>/judge)`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worldmodel.codec import CODEC_SUBFOLDER
from worldmodel.judge import SuccessJudge
from worldmodel.model import VideoDiT


@dataclass
class PackageConfig:
    train_dir: str | None = None  # a `wm train` output folder (its model/ holds the EMA weights)
    name: str = "tiny"
    judge_dir: str | None = None  # a `wm judge` output folder
    dest: str = "pretrained/metaworld_push"
    results: list[str] = field(default_factory=list)  # eval/results/*.json to quote in the card
    gpu_time: str = "none (trained on a 2-core CPU)"
    note: str = ""  # anything the reader must know (e.g. "undertrained")
    note_file: str | None = None  # the same from a file (markdown), appended to `note`


def replace_folder(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place (the old one, if any, is removed only after)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_lines(paths: list[str]) -> list[str]:
    lines = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        if "pearson" in r:  # eval.rank
            lines.append(f"- Ranking (`{path}`): {len(r['policies'])} policies x {r['episodes_per_policy']} episodes, "
                         f"Pearson {fmt(r['pearson']['value'])}, Spearman {fmt(r['spearman']['value'])}, "
                         f"MMRV {fmt(r['mmrv']['value'], 3)}; judge accuracy on real episodes {fmt(r['judge_accuracy'])}.")
        elif "variants" in r:  # eval.fidelity
            full, copy = r["variants"].get("full"), r["variants"].get("copy_first")
            cells = ", ".join(f"{h:g} s {p:.1f} dB" for h, p in zip(r["horizons_s"], full["psnr"]["mean_over_views"]))
            base = ", ".join(f"{p:.1f}" for p in copy["psnr"]["mean_over_views"]) if copy else "-"
            lines.append(f"- Open-loop PSNR, mean over views (`{path}`): {cells} (copying the first frame: {base} dB).")
            for part in ("hand", "object"):
                if f"{part}_error_m" in full:
                    errors = {name: v[f"{part}_error_m"] for name, v in r["variants"].items()
                              if name in ("full", "state_ridge", "state_kinematic") and f"{part}_error_m" in v}
                    lines.append(f"- {part.capitalize()} position error (cm) at " + ", ".join(f"{h:g}" for h in r["horizons_s"])
                                 + " s: " + "; ".join(f"{name} " + " / ".join(f"{100 * e:.1f}" for e in v)
                                                       for name, v in errors.items()) + ".")
    return lines


def dataset_task(root: str) -> str:
    """What the training data shows, as the recorder wrote it (LeRobot's task sentences), for the card's title."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if not (Path(root) / "meta" / "tasks.parquet").exists():  # nothing local to read: never ask the hub
        return f"the dataset at {root}"
    return "; ".join(LeRobotDatasetMetadata("local/dataset", root=root).tasks.index)


def package_model(cfg: PackageConfig) -> Path:
    train_dir = Path(cfg.train_dir)
    note = " ".join(x for x in (cfg.note, Path(cfg.note_file).read_text().strip() if cfg.note_file else "") if x)
    model = VideoDiT.from_pretrained(train_dir / "model").to(torch.float16)
    dest = Path(cfg.dest)
    dest.mkdir(parents=True, exist_ok=True)
    final, tmp = dest / cfg.name, dest / f".{cfg.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if (train_dir / "model" / CODEC_SUBFOLDER).is_dir():  # the model's own autoencoder travels with it
        shutil.copytree(train_dir / "model" / CODEC_SUBFOLDER, tmp / CODEC_SUBFOLDER)
    train_config = json.loads((train_dir / "train_config.json").read_text())
    (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2))
    summary = json.loads((train_dir / "train_summary.json").read_text())
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2))
    metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    validation = [m for m in metrics if "val/psnr_open_loop" in m]
    last_val = validation[-1] if validation else {}
    t, mc = train_config["train"], model.cfg
    task = dataset_task(t["dataset"]["root"])
    card = [
        f"# worldmodel `{cfg.name}`: MetaWorld, {task}", "",
        note, "",
        f"An action-conditioned multi-view video diffusion transformer (`VideoDiT`, preset `{mc.preset}`, "
        f"{summary['parameters'] / 1e6:.1f} M parameters, {mc.hidden_size} wide, {mc.depth} blocks) over "
        f"{mc.num_views} views ({', '.join(k.removeprefix('observation.images.') for k in mc.camera_keys)}) at "
        f"{mc.image_size}x{mc.image_size} pixels, one world-model frame per {mc.frame_stride} env actions "
        f"({mc.fps / mc.frame_stride:g} frames per second of robot time). EMA weights, stored in fp16.", "",
        "## Data", f"`{t['dataset']['root']}`: MetaWorld, {task}, recorded with `data/metaworld/record.py` "
        f"(scripted expert with per-episode noise and biased detours, some episodes ending in waypoint tours); "
        f"the last {t['train']['val_episodes']} episode(s) held out for validation.", "",
        "## Training",
        f"- {summary['steps']} steps, batch {t['train']['batch_size']}, {t['dataset']['clip_frames']} frames per clip "
        f"+ {t['dataset'].get('memory_frames', 0)} memory frames, lr {t['train']['lr']}, {summary['num_processes']} "
        f"process(es), {summary.get('clips_per_s_overall', summary['clips_per_s']):.1f} clips/s; "
        f"{summary.get('wall_seconds', summary['seconds']) / 60:.0f} minutes of training wall time"
        + (f" (resumed at step {summary['resumed_from_step']})" if summary.get("resumed_from_step") else "")
        + (f", fine-tuned from `{init['path']}` ({init['steps']} steps, {init['wall_seconds'] / 60:.0f} minutes): "
           f"{summary['wall_seconds_in_all'] / 60:.1f} minutes of training from scratch in all"
           if (init := summary.get("init_from")) else " in all")
        + f" on {summary.get('device', 'an unrecorded device')} (`train_summary.json`).",
        f"- GPU time: {cfg.gpu_time}.",
        f"- Held-out validation PSNR: one step ahead {fmt(last_val.get('val/psnr_one_step'))} dB, open loop "
        f"{fmt(last_val.get('val/psnr_open_loop'))} dB.", "",
        "## Results", *(results_lines(cfg.results) or ["- none yet"]), "",
        "## Use",
        "```python", "from worldmodel.world import WorldModel",
        f"world = WorldModel.from_pretrained(\"{cfg.dest}/{cfg.name}\", batch_size=1)", "```", "",
        "The exact training configuration is `train_config.json`; `eval/recipes/metaworld_push.sh` (with `TASK=` "
        "the MetaWorld task) rebuilds the shipped models from scratch.",
    ]
    (tmp / "README.md").write_text("\n".join(card) + "\n")
    replace_folder(tmp, final)
    return final


def package_judge(cfg: PackageConfig) -> Path:
    judge_dir = Path(cfg.judge_dir)
    judge = SuccessJudge.from_pretrained(judge_dir)
    report = json.loads((judge_dir / "judge_report.json").read_text())
    dest = Path(cfg.dest)
    final, tmp = dest / "judge", dest / ".judge.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    judge.save_pretrained(tmp, safe_serialization=True)
    (tmp / "judge_report.json").write_text(json.dumps(report, indent=2))
    val, jc = report.get("val") or {}, judge.cfg
    card = [
        f"# worldmodel success judge: MetaWorld, {dataset_task(report['config']['dataset']['root'])}", "",
        f"A small CNN over the last {jc.frames} world-model frames of every view ({jc.num_views} views, "
        f"{jc.image_size} px){' and the state' if jc.use_state else ''}, trained (`wm judge`) on the per-frame "
        f"success flags of `{report['config']['dataset']['root']}` (episodes {report['episodes']['train'][0]}-"
        f"{report['episodes']['train'][-1]}).", "",
        f"Held-out episodes {report['episodes']['val']}: accuracy {fmt(val.get('accuracy'))}, precision "
        f"{fmt(val.get('precision'))}, recall {fmt(val.get('recall'))} over {val.get('n', 0)} windows. "
        f"GPU time: {cfg.gpu_time}.", "",
        "```python", "from worldmodel.judge import SuccessJudge",
        f"judge = SuccessJudge.from_pretrained(\"{cfg.dest}/judge\")",
        "probability = judge.probability(frames, states, task)  # frames (B, K, V, 3, H, W) uint8", "```",
    ]
    (tmp / "README.md").write_text("\n".join(card) + "\n")
    replace_folder(tmp, final)
    return final


def main() -> None:
    import draccus

    cfg = draccus.parse(PackageConfig)
    if cfg.train_dir:
        print(package_model(cfg))
    if cfg.judge_dir:
        print(package_judge(cfg))


if __name__ == "__main__":
    main()
