"""Does the training data cover the held-out tours? A probe that needs no world model: a small MLP state model
(the state change over one world-model frame from the state and the frame's actions) fitted on a subset of the
training episodes, scored one frame ahead on the held-out tours against holding the object still.

    python -m eval.state_data_probe --dataset.root=outputs/recipe_cpu/datasets/metaworld_push \\
        --long_dataset.root=outputs/recipe_cpu/datasets/metaworld_push_long --subsets='{"push": 200, "push + play": 240}'

Each subset is the first N episodes of the training set (the recipe records the push episodes first, then the play
tours). If a model of the state alone cannot predict the object in the tours from a subset better than holding it
still, a video model trained on that subset will not either: that is a data problem, not a design one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from eval.fidelity import HAND, OBJECT, frame_transitions
from eval.report import write_result
from worldmodel.dataset import ClipDataset, DatasetConfig


@dataclass
class ProbeConfig:
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        root="outputs/recipe_cpu/datasets/metaworld_push", repo_id="local/metaworld_push"))
    long_dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        root="outputs/recipe_cpu/datasets/metaworld_push_long", repo_id="local/metaworld_push_long"))
    long_episodes: int = 8
    subsets: dict[str, int] = field(default_factory=lambda: {"push": 200, "push + play": 240})
    steps: int = 6000
    seed: int = 0
    run: str = "cpu"
    results_dir: str = "eval/results"


VIEW = dict(camera_keys=["corner", "corner2", "gripperPOV"], image_size=64, frame_stride=4, memory_frames=0,
            clip_frames=2)


def fit_mlp(states, chunks, nexts, steps: int, seed: int):
    """An MLP (2 x 256) regressing the standardised state change on standardised (state, action chunk)."""
    torch.manual_seed(seed)
    x = np.concatenate([states, chunks], 1)
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    y = nexts - states
    y_mean, y_std = y.mean(0), y.std(0) + 1e-6
    inputs = torch.tensor((x - x_mean) / x_std, dtype=torch.float32)
    targets = torch.tensor((y - y_mean) / y_std, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.SiLU(), torch.nn.Linear(256, 256),
                              torch.nn.SiLU(), torch.nn.Linear(256, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(inputs), (256,), generator=generator)
        loss = (net(inputs[batch]) - targets[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def predict(state, chunk):
        z = torch.tensor((np.concatenate([state, chunk], 1) - x_mean) / x_std, dtype=torch.float32)
        return state + net(z).numpy() * y_std + y_mean

    return predict


def probe(cfg: ProbeConfig) -> dict:
    started = time.time()
    tours = frame_transitions(ClipDataset(replace(cfg.long_dataset, episodes=list(range(cfg.long_episodes)), **VIEW)))
    states, chunks, nexts = tours
    held_still = np.linalg.norm(states[:, OBJECT] - nexts[:, OBJECT], axis=1).mean()
    rows = {}
    for name, n in cfg.subsets.items():
        train = frame_transitions(ClipDataset(replace(cfg.dataset, episodes=list(range(n)), **VIEW)))
        predicted = fit_mlp(*train, cfg.steps, cfg.seed)(states, chunks)
        rows[name] = {"episodes": n, "transitions": len(train[0]),
                      "object_error_m": float(np.linalg.norm(predicted[:, OBJECT] - nexts[:, OBJECT], axis=1).mean()),
                      "hand_error_m": float(np.linalg.norm(predicted[:, HAND] - nexts[:, HAND], axis=1).mean())}
    result = {"run": cfg.run, "subsets": rows, "object_held_still_m": float(held_still),
              "tour_transitions": len(states), "seconds": time.time() - started,
              "command": f"python -m eval.state_data_probe --dataset.root={cfg.dataset.root} "
                         f"--long_dataset.root={cfg.long_dataset.root} --subsets='{json.dumps(cfg.subsets)}'"}
    lines = [f"# Does the training data cover the tours? {cfg.run}", "",
             f"An MLP state model fitted on the first N training episodes, scored one world-model frame ahead on "
             f"{len(states)} transitions of {cfg.long_episodes} held-out tours (teacher forced, cm).", "",
             "| training episodes | transitions | object error | hand error |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} ({r['episodes']}) | {r['transitions']} | {100 * r['object_error_m']:.2f} | "
              f"{100 * r['hand_error_m']:.2f} |" for name, r in rows.items()]
    lines += [f"| object held still | - | {100 * held_still:.2f} | - |", "",
              f"`{result['command']}` ({result['seconds']:.0f} s)."]
    write_result(f"{cfg.results_dir}/state_data_probe_{cfg.run}.json", result, lines)
    return result


def main() -> None:
    import draccus

    probe(draccus.parse(ProbeConfig))


if __name__ == "__main__":
    main()
