"""EpmVG's ablation grid: every variant trained from one baseline config against one teacher cache.

The baseline is a whole TrainConfig, so the grid runs with whatever the baseline run uses (DETR
initialisation, schedule, DDP under torchrun, `--resume` of an interrupted grid).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.engine.checkpoint import LAST
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv, shutdown_distributed
from pipeline.engine.train import Trainer


def ablation_grid() -> dict[str, dict[str, Any]]:
    """EpmVG's ablations: name → changes to the baseline run (the paper's full method)."""
    grid: dict[str, dict[str, Any]] = {
        "epmvg (cosine)": {},
        "l1 distillation": {"loss": {"distill": "l1"}},
        "image term only": {"loss": {"text_term": False}},
        "text term only": {"loss": {"image_term": False}},
        "no distillation": {"distill": "none"},
    }
    for giou_weight in (0.0, 0.5, 1.0, 1.5, 2.0):
        grid[f"lambda={giou_weight}"] = {"loss": {"giou_weight": giou_weight}}
    return grid


def ablation_config(base: TrainConfig, name: str, changes: dict[str, Any]) -> TrainConfig:
    """The baseline with one variant's changes, in its own run folder under the baseline's."""
    loss = replace(base.loss, **changes.get("loss", {}))
    slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    updates = {key: value for key, value in changes.items() if key != "loss"}
    out = Path(base.out) / slug
    # A grid resumed after a crash: variants that never saved a checkpoint start afresh.
    resume = base.resume and (out / LAST).is_file()
    return replace(base, loss=loss, out=out, resume=resume, **updates)


def run_ablations(base: TrainConfig) -> Path:
    """Train every variant of the grid; write results.md and results.csv into `base.out`.

    Under torchrun the variants share one process group, which is left only after the last.
    """
    accuracies: dict[str, dict[str, float]] = {}
    env = DistEnv()
    try:
        for name, changes in ablation_grid().items():
            trainer = Trainer(ablation_config(base, name, changes))
            env = trainer.env
            summary = trainer.fit()
            del trainer  # its model, optimizer state and workers go before the next variant's are built
            accuracies[name] = {split: result["acc@0.5"] for split, result in summary["results"].items()}
    finally:
        shutdown_distributed(env)
    out = Path(base.out)
    if env.is_main:
        write_ablation_tables(accuracies, out, f"# Ablations on {base.dataset}\n\nCache: `{base.cache}`\n")
    return out / "results.md"


def write_ablation_tables(accuracies: dict[str, dict[str, float]], out: Path, header: str) -> None:
    """results.csv (fractions) and results.md (percentages), one row per variant."""
    out.mkdir(parents=True, exist_ok=True)
    splits = list(next(iter(accuracies.values())))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", *splits])
        writer.writeheader()
        writer.writerows({"variant": name, **row} for name, row in accuracies.items())
    table = ["| variant | " + " | ".join(f"{s} Acc@0.5" for s in splits) + " |"]
    table.append("|---" * (len(splits) + 1) + "|")
    table += [
        f"| {name} | " + " | ".join(f"{100 * row[s]:.2f}" for s in splits) + " |"
        for name, row in accuracies.items()
    ]
    (out / "results.md").write_text(header + "\n" + "\n".join(table) + "\n")
