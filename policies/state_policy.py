"""Recipe: a LeRobot policy that reads the state only, trained by LeRobot's own trainer in minutes on a CPU.

    python -m policies.state_policy --dataset_root=outputs/datasets/metaworld_reach \\
        --repo_id=local/metaworld_reach --episodes='[0,1,2]' --steps=300 --output_dir=outputs/policies/act_state

ACT (and Diffusion Policy) accept no input but images or an *environment* state, and lerobot's ACT also reads
`observation.state` in every forward, so the policy reads the MetaWorld state vector (hand, objects, goal; or the
dimensions `state_dims` names) under both names. It trains on a state-only copy of the chosen episodes (state, action, success flag; no video,
so nothing is decoded), written through lerobot beside the output folder, and acts through `load_state_policy`,
whose adapter feeds both inputs from the env's `observation.state`: the same policy runs in MetaWorld and inside
the world model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from worldmodel.atomic import write_json_atomic
from worldmodel.dataset import write_episode
from worldmodel.policy import LeRobotPolicy

POLICY_STATE_KEY = "observation.environment_state"
KEY_MAP = {POLICY_STATE_KEY: "observation.state"}  # the policy's input <- the env's observation
STATE_DIMS_FILE = "state_dims.json"  # beside the weights: which state dimensions the policy reads (null: all)
RUN_CONFIG_FILE = "state_policy_config.json"  # in output_dir once a run has finished: what it was trained with
# State and action go in and out as they are (metres, unit quaternions, actions in [-1, 1]: already of order 1), not
# z-scored by the training episodes' spread, for two reasons:
# - a handful of demos leaves some state dimensions constant (the puck's orientation in reach); z-scoring them turns
#   a world model's 2 mm error there into inputs of 10^5, and the policy that acts in MetaWorld freezes in imagination;
# - lerobot-train replaces the stats with the new dataset's when it fine-tunes (--policy.path), which would change
#   what the trained weights mean before the first fine-tuning step.
STATE_AND_ACTION_AS_IS = json.dumps({"VISUAL": "MEAN_STD", "STATE": "IDENTITY", "ACTION": "IDENTITY"})


@dataclass
class EpisodeSource:
    """Episodes of one LeRobotDataset."""
    root: str
    repo_id: str
    episodes: list[int] | None = None  # None: all


@dataclass
class StatePolicyConfig:
    dataset_root: str = "outputs/datasets/metaworld_reach"
    repo_id: str = "local/metaworld_reach"
    episodes: list[int] | None = None  # episodes of the dataset to train on (None: all)
    steps: int = 300
    output_dir: str = "outputs/policies/act_state"
    batch_size: int = 64
    dim_model: int = 64
    chunk_size: int = 8  # actions predicted at once; all of them are executed before the next prediction
    lr: float = 1e-4
    # Cosine decay of the learning rate from `lr` to this over the steps (None: constant `lr`, lerobot's ACT preset).
    # At a constant rate a few hundred fine-tuning steps later the same run's real success swings by tens of points;
    # a decayed rate ends in a settled policy.
    final_lr: float | None = None
    # A checkpoint every this many steps (None: only the last), each usable by load_state_policy: the candidates a
    # caller can choose among (eval.improve chooses by success in imagination).
    save_every: int | None = None
    device: str = "cpu"
    seed: int = 0
    init_from: str | None = None  # a pretrained_model folder to fine-tune (its architecture is kept)
    # The state dimensions the policy reads (None: all). Stored beside the checkpoint (STATE_DIMS_FILE), so
    # load_state_policy feeds the same ones in MetaWorld and in imagination.
    state_dims: list[int] | None = None
    # More episodes from other datasets in the same training set (e.g. the demonstrations a fine-tune must keep).
    extra_sources: list[EpisodeSource] = field(default_factory=list)
    # CPU threads of the lerobot-train process (None: torch's default, every core). Several trainings at once need
    # a share each: two processes with a thread per core each run ~5x slower than one after the other.
    threads: int | None = None


def read_source(source: EpisodeSource, state_dims: list[int] | None) -> dict:
    """A source's state, action and success columns, its chosen episodes (checked: named before anything is
    written) and its task sentences."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(source.repo_id, root=source.root)
    table = dataset.hf_dataset.with_format("numpy")
    columns = ["observation.state", "action", "episode_index", "task_index"]
    if "next.success" in table.column_names:
        columns.append("next.success")
    data = {c: np.asarray(table[c]) for c in columns}
    if state_dims is not None:
        width = data["observation.state"].shape[1]
        if not state_dims or not all(0 <= d < width for d in state_dims):
            raise ValueError(f"state_dims: {state_dims} must name dimensions of the {width}-d state of {source.root}")
        data["observation.state"] = data["observation.state"][:, state_dims]
    present = sorted(set(data["episode_index"].tolist()))
    wanted = present if source.episodes is None else list(source.episodes)
    absent = [e for e in wanted if e not in set(present)]
    if absent:
        raise ValueError(f"episodes: {absent} are not episodes of {source.root} "
                         f"(it has {len(present)}: {present[0]}..{present[-1]})")
    tasks = {int(i): str(t) for t, i in zip(dataset.meta.tasks.index, dataset.meta.tasks["task_index"])}
    return {"data": data, "episodes": wanted, "tasks": tasks, "fps": dataset.meta.fps,
            "robot_type": dataset.meta.robot_type}


def state_only_copy(sources: list[EpisodeSource], dest: Path, state_dims: list[int] | None = None) -> Path:
    """The chosen episodes of one or more LeRobotDatasets (and state dimensions) as one state-only LeRobotDataset
    at `dest` (written beside it, then renamed: `dest` is either whole or absent). An existing `dest` is replaced:
    an interrupted run's copy may hold other episodes."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    read = [read_source(source, state_dims) for source in sources]
    widths = {(r["data"]["observation.state"].shape[1], r["data"]["action"].shape[1]) for r in read}
    if len(widths) > 1:
        raise ValueError(f"sources: {[s.root for s in sources]} differ in (state, action) width: {sorted(widths)}")
    (state_width, action_width), = widths
    has_success = all("next.success" in r["data"] for r in read)
    state_feature = {"dtype": "float32", "shape": (state_width,), "names": None}
    features = {"observation.state": state_feature, POLICY_STATE_KEY: state_feature,
                "action": {"dtype": "float32", "shape": (action_width,), "names": None}}
    if has_success:
        features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy = LeRobotDataset.create(sources[0].repo_id + "_state", fps=read[0]["fps"], features=features, root=tmp,
                                 robot_type=read[0]["robot_type"])
    for source in read:
        data = source["data"]
        for e in source["episodes"]:
            rows = np.flatnonzero(data["episode_index"] == e)
            frames = ({"observation.state": data["observation.state"][r].astype(np.float32),
                       POLICY_STATE_KEY: data["observation.state"][r].astype(np.float32),
                       "action": data["action"][r].astype(np.float32),
                       **({"next.success": data["next.success"][r].reshape(1).astype(bool)} if has_success else {})}
                      for r in rows)
            write_episode(copy, frames, source["tasks"][int(data["task_index"][rows[0]])])
    copy.finalize()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def check_schedule(cfg: StatePolicyConfig) -> None:
    """Refuse a schedule lerobot-train would misread, before anything is written."""
    if cfg.save_every is not None and cfg.save_every < 1:
        raise ValueError(f"save_every: expected a positive number of steps, got {cfg.save_every}")
    if cfg.final_lr is not None and not 0 <= cfg.final_lr <= cfg.lr:
        raise ValueError(f"final_lr: {cfg.final_lr} must lie in [0, lr={cfg.lr}]")


def checkpoint_steps(cfg: StatePolicyConfig) -> list[int]:
    """The steps at which a run saves a checkpoint, the last one included."""
    every = cfg.save_every or cfg.steps
    return sorted({*range(every, cfg.steps + 1, every), cfg.steps})


def checkpoint_folder(cfg: StatePolicyConfig, step: int) -> Path:
    return Path(cfg.output_dir) / "checkpoints" / f"{step:06d}" / "pretrained_model"


def optimizer_flags(cfg: StatePolicyConfig) -> list[str]:
    """lerobot-train's optimiser: ACT's preset (AdamW, constant rate), or the same AdamW with a cosine decay."""
    if cfg.final_lr is None:
        return [f"--policy.optimizer_lr={cfg.lr}"]
    return ["--use_policy_training_preset=false", "--optimizer.type=adamw", f"--optimizer.lr={cfg.lr}",
            "--optimizer.weight_decay=1e-4",  # ACT's preset
            "--scheduler.type=cosine_decay_with_warmup", "--scheduler.num_warmup_steps=0",
            f"--scheduler.num_decay_steps={cfg.steps}", f"--scheduler.peak_lr={cfg.lr}",
            f"--scheduler.decay_lr={cfg.final_lr}"]


def lerobot_train_command(cfg: StatePolicyConfig, data_root: Path) -> list[str]:
    if cfg.init_from is not None:  # fine-tuning: lerobot takes type and shape from the checkpoint
        policy = [f"--policy.path={cfg.init_from}"]
    else:
        policy = ["--policy.type=act", f"--policy.dim_model={cfg.dim_model}",
                  f"--policy.dim_feedforward={4 * cfg.dim_model}", "--policy.n_encoder_layers=2",
                  f"--policy.chunk_size={cfg.chunk_size}",
                  f"--policy.n_action_steps={cfg.chunk_size}", f"--policy.normalization_mapping={STATE_AND_ACTION_AS_IS}"]
    return [sys.executable, "-m", "lerobot.scripts.lerobot_train", f"--dataset.repo_id={cfg.repo_id}_state",
            f"--dataset.root={data_root}", *policy, *optimizer_flags(cfg), "--policy.push_to_hub=false",
            f"--policy.device={cfg.device}", f"--steps={cfg.steps}", f"--save_freq={cfg.save_every or cfg.steps}",
            f"--batch_size={cfg.batch_size}", f"--output_dir={cfg.output_dir}", f"--seed={cfg.seed}",
            "--wandb.enable=false", "--eval_freq=0", "--num_workers=0", "--log_freq=100"]


def train_state_policy(cfg: StatePolicyConfig) -> Path:
    """The state-only copy, then lerobot-train; returns the final checkpoint's pretrained_model folder (an existing
    one is reused, so an interrupted caller resumes). The state dimensions it reads are written beside the weights of
    every checkpoint once the run has finished, so a final checkpoint without them is unfinished."""
    check_schedule(cfg)
    out, steps = Path(cfg.output_dir), checkpoint_steps(cfg)
    checkpoint = checkpoint_folder(cfg, cfg.steps)
    if (checkpoint / STATE_DIMS_FILE).exists():
        check_finished_run_matches(cfg)
        return checkpoint
    shutil.rmtree(out, ignore_errors=True)  # lerobot-train refuses an existing output folder
    sources = [EpisodeSource(cfg.dataset_root, cfg.repo_id, cfg.episodes), *cfg.extra_sources]
    data_root = state_only_copy(sources, out.with_name(out.name + "_data"), cfg.state_dims)
    env = None if cfg.threads is None else {**os.environ, "OMP_NUM_THREADS": str(cfg.threads),
                                            "MKL_NUM_THREADS": str(cfg.threads)}
    subprocess.run(lerobot_train_command(cfg, data_root), check=True, env=env)
    missing = [str(checkpoint_folder(cfg, step)) for step in steps if not checkpoint_folder(cfg, step).exists()]
    if missing:
        raise RuntimeError(f"lerobot-train finished without {missing}")
    write_json_atomic(out / RUN_CONFIG_FILE, run_settings(cfg))
    for step in steps:  # the final one last: it marks the run finished
        write_json_atomic(checkpoint_folder(cfg, step) / STATE_DIMS_FILE, {"state_dims": cfg.state_dims})
    return checkpoint


def run_settings(cfg: StatePolicyConfig) -> dict:
    """What decides the trained weights: the config without where it is written and how many threads train it."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "threads")}))


def check_finished_run_matches(cfg: StatePolicyConfig) -> None:
    """A finished run in output_dir is reused only if it was trained with this config: a caller rerun with other
    episodes (another arm, another seed) must not get stale weights back. Runs from before the config was
    recorded are reused as they are."""
    recorded_file = Path(cfg.output_dir) / RUN_CONFIG_FILE
    if not recorded_file.exists():
        return
    recorded, asked = json.loads(recorded_file.read_text()), run_settings(cfg)
    differ = [k for k in asked if recorded.get(k) != asked[k]]
    if differ:
        named = "; ".join(f"{k}: {asked[k]!r} asked, {recorded.get(k)!r} recorded" for k in differ)
        raise ValueError(f"output_dir: {cfg.output_dir} holds a policy trained with another config ({named}); "
                         "choose another --output_dir or delete it to retrain")


def load_state_policy(path: str, task: str = "", name: str | None = None) -> LeRobotPolicy:
    """The policy, fed from the env's `observation.state` (the dimensions it was trained on)."""
    dims_file = Path(path) / STATE_DIMS_FILE
    dims = json.loads(dims_file.read_text())["state_dims"] if dims_file.exists() else None
    input_dims = None if dims is None else {key: dims for key in ("observation.state", POLICY_STATE_KEY)}
    return LeRobotPolicy.from_pretrained(str(path), task=task, name=name, key_map=KEY_MAP, input_dims=input_dims)


def main() -> None:
    import draccus

    print(train_state_policy(draccus.parse(StatePolicyConfig)))


if __name__ == "__main__":
    main()
