"""The main job: rank the MetaWorld policy family inside the shipped world model, check the ranking
against the real simulator, print the table and correlations, and write an HTML report.

    python -m eval.demo                              # shipped tiny model, 5 episodes per policy on a CPU
    python -m eval.demo --model=small --episodes=20  # the full benchmark's size (GPU)

Uses only what is in git: `pretrained/metaworld_push/<model>` and `pretrained/metaworld_push/judge`.
It is `eval.rank` with fewer episodes per policy than the full benchmark, said so in the output; the
full benchmark's committed numbers are in eval/results/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.rank import RankConfig, rank
from worldmodel.sampler import SamplerConfig

ASSETS = Path(__file__).resolve().parent.parent / "pretrained" / "metaworld_push"


@dataclass
class DemoConfig:
    assets: str = str(ASSETS)
    model: str | None = None  # a folder of `assets` (tiny, small); None: small on a GPU if shipped, else tiny
    episodes: int | None = None  # per policy; None: 5 on a CPU (about 2 minutes on 2 cores), 20 on a GPU
    policies: list[str] | None = None  # None: the whole family (policies/metaworld.py)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    output_dir: str = "outputs/demo"
    device: str | None = None


def demo(cfg: DemoConfig) -> dict:
    started = time.time()
    assets = Path(cfg.assets)
    on_gpu = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    name = cfg.model or ("small" if on_gpu and (assets / "small" / "config.json").exists() else "tiny")
    model_dir, judge_dir = assets / name, assets / "judge"
    for path in (model_dir, judge_dir):
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no shipped model there; expected the folders of pretrained/metaworld_push "
                                    "(see its README.md, or rebuild them with eval/recipes/metaworld_push.sh)")
    episodes = cfg.episodes or (20 if on_gpu else 5)
    print(f"worldmodel demo: the MetaWorld push policy family ranked inside the `{name}` world model "
          f"({model_dir}) and in the real simulator, {episodes} episodes per policy "
          f"(the full benchmark uses 20 or more: eval/results/).")
    out = Path(cfg.output_dir)
    result = rank(RankConfig(model=str(model_dir), judge=str(judge_dir), policies=cfg.policies, episodes=episodes,
                             sampler=cfg.sampler, run=f"demo_{name}", output_dir=str(out),
                             results_dir=str(out / "results"), device=cfg.device))
    print(f"\nReport: {out / 'report.html'}  ({time.time() - started:.0f} s in all)")
    return result


def main() -> None:
    import draccus

    demo(draccus.parse(DemoConfig))


if __name__ == "__main__":
    main()
