"""The ablation grids: every variant trained from one baseline config against one teacher cache.

The baseline is a whole TrainConfig, so the grid runs with whatever the baseline run uses (DETR
initialisation, schedule, DDP under torchrun, `--resume` of an interrupted grid). Which grid runs
follows the baseline's student architecture: each architecture names its grid in the student registry
(`pipeline/student/registry.py`): EpmVG's distillation grid for TransVG, LGR-NET's paper ablations for
LGR-NET. A grid function takes (base, unfrozen_teacher) and returns variant name → changes.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.engine.checkpoint import LAST
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv, shutdown_distributed
from pipeline.engine.setup import student_config_for
from pipeline.engine.train import Trainer
from pipeline.losses import LossConfig
from pipeline.student import student_architecture

LGRNET_LAYERS = (1, 2, 4, 6)
GIOU_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
UNFROZEN_TEACHER = "unfrozen teacher"


def ablation_grid(
    base: TrainConfig | None = None, unfrozen_teacher: bool = False
) -> dict[str, dict[str, Any]]:
    """EpmVG's ablations: name → changes to the baseline run (the paper's full method).

    The λ sweep leaves out the baseline's own λ (1 by default): the baseline already trains it.
    unfrozen_teacher adds Table 4's online distillation from a trainable teacher, which needs the
    baseline's teacher weights at hand (`check_teacher_at_hand`).
    """
    baseline_lambda = base.loss.giou_weight if base is not None else LossConfig().giou_weight
    grid: dict[str, dict[str, Any]] = {
        "epmvg (cosine)": {},
        "l1 distillation": {"loss": {"distill": "l1"}},
        "image term only": {"loss": {"text_term": False}},
        "text term only": {"loss": {"image_term": False}},
        "no distillation": {"distill": "none"},
    }
    for giou_weight in GIOU_WEIGHTS:
        if giou_weight != baseline_lambda:
            grid[f"lambda={giou_weight}"] = {"loss": {"giou_weight": giou_weight}}
    if unfrozen_teacher:
        if base is None:
            raise ValueError("the unfrozen-teacher variant needs the baseline run's teacher")
        check_teacher_at_hand(base)
        grid[UNFROZEN_TEACHER] = {"distill": "online", "teacher_trainable": True}
    return grid


def check_teacher_at_hand(base: TrainConfig) -> None:
    """Refuse, in one line, a baseline whose teacher would need a download: its weights must be a local
    file (`--pretrained FILE`) or random on purpose (`--pretrained none --allow-random-teacher`), the
    two kinds `pipeline.teacher` loads without the hub; an open_clip tag is refused."""
    weights = base.teacher_pretrained
    if weights == "none" and base.allow_random_teacher:
        return
    if weights != "none" and Path(weights).is_file():
        return
    raise ValueError(
        f"the unfrozen-teacher variant trains the teacher online, but the baseline's teacher weights "
        f"{weights!r} are not at hand: pass --pretrained FILE (a local open_clip checkpoint) with "
        "--teacher MODEL"
    )


def lgrnet_ablation_grid(base: TrainConfig, unfrozen_teacher: bool = False) -> dict[str, dict[str, Any]]:
    """LGR-NET's ablations around the baseline run (its preset's N layers, λ = loss.align_weight):
    coordinate embedding off, concat instead of add, L_align off (λ = 0) at the baseline batch and at
    half of it (L_align's negatives are the batch), N ∈ {1, 2, 4, 6}, two prediction tokens.

    "student" changes are StudentConfig fields, merged over the baseline's own overrides. The
    unfrozen-teacher variant is EpmVG's (Table 4) and is refused here.
    """
    if unfrozen_teacher:
        raise ValueError("the unfrozen-teacher variant belongs to EpmVG's grid (transvg), not LGR-NET's")
    layers = student_config_for(base).vl_layers
    weight, batch = base.loss.align_weight, base.batch_size
    half = max(2, batch // 2)
    grid: dict[str, dict[str, Any]] = {
        f"lgrnet N={layers} lambda={weight} batch={batch}": {},
        "no coord embedding": {"student": {"coord_embedding": False}},
        "coord concat": {"student": {"coord_fusion": "concat"}},
        f"lambda=0 batch={batch}": {"loss": {"align_weight": 0.0}},
        f"lambda={weight} batch={half}": {"batch_size": half},
        f"lambda=0 batch={half}": {"loss": {"align_weight": 0.0}, "batch_size": half},
    }
    for count in LGRNET_LAYERS:
        if count != layers:
            grid[f"N={count}"] = {"student": {"vl_layers": count}}
    grid["2 prediction tokens"] = {"student": {"prediction_tokens": 2}}
    return grid


def grid_for(base: TrainConfig, unfrozen_teacher: bool = False) -> dict[str, dict[str, Any]]:
    """The ablation grid the baseline's student architecture registers."""
    grid = student_architecture(student_config_for(base).architecture).ablation_grid
    return grid(base, unfrozen_teacher=unfrozen_teacher)


def ablation_config(base: TrainConfig, name: str, changes: dict[str, Any]) -> TrainConfig:
    """The baseline with one variant's changes, in its own run folder under the baseline's.

    changes: "loss" (LossConfig fields), "student" (student-config fields over the baseline's),
    "preset" (another student preset), or any other TrainConfig field.
    """
    loss = replace(base.loss, **changes.get("loss", {}))
    student = {**base.student_overrides, **changes.get("student", {})}
    slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "").replace(",", "")
    updates = {key: value for key, value in changes.items() if key not in ("loss", "student", "preset")}
    if "preset" in changes:
        updates["student"] = changes["preset"]
    out = Path(base.out) / slug
    # A grid resumed after a crash: variants that never saved a checkpoint start afresh.
    resume = base.resume and (out / LAST).is_file()
    return replace(base, loss=loss, student_overrides=student, out=out, resume=resume, **updates)


def run_ablations(base: TrainConfig, unfrozen_teacher: bool = False) -> Path:
    """Train every variant of the baseline's grid (`grid_for`; `unfrozen_teacher` adds EpmVG's online
    distillation with a trainable teacher); write results.md and results.csv into `base.out`.

    Every variant's config is built (and checked) before the first one trains. Under torchrun the
    variants share one process group, which is left only after the last.
    """
    accuracies: dict[str, dict[str, float]] = {}
    configs = {
        name: ablation_config(base, name, changes)
        for name, changes in grid_for(base, unfrozen_teacher).items()
    }
    env = DistEnv()
    try:
        for name, config in configs.items():
            trainer = Trainer(config)
            env = trainer.env
            summary = trainer.fit()
            del trainer  # its model, optimizer state and workers go before the next variant's are built
            accuracies[name] = {split: result["acc@0.5"] for split, result in summary["results"].items()}
    finally:
        shutdown_distributed(env)
    out = Path(base.out)
    if env.is_main:
        header = f"# Ablations of {base.student} on {base.dataset}\n\nCache: `{base.cache}`\n"
        write_ablation_tables(accuracies, out, header)
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
