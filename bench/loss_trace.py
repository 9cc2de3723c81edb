"""Loss traces of tiny fixed-seed runs: the behaviour check of a refactor.

Runs tiny TransVG and LGR-NET students, with cached distillation and without, on 40 shapes scenes and
a random tiny teacher's store, and writes each run's `metrics.jsonl` under OUT/<student>-<distill>/.
Run it before and after a change and compare the loss columns (`--compare OTHER_OUT`): a refactor that
keeps behaviour writes bitwise-identical losses.

    python -m bench.loss_trace --out /tmp/before
    python -m bench.loss_trace --out /tmp/after --compare /tmp/before
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
RUNS = [
    *((student, distill) for student in ("tiny", "lgrnet-tiny") for distill in ("cached", "none")),
    ("tiny", "online"),
]
# Logged beside the losses, not a loss: the pairs LGR-NET's L_align saw.
DIAGNOSTICS = ("align_batch",)


def loss_columns(path: Path) -> list[dict[str, float]]:
    """Every epoch row's losses and `val/*` values, as written (no rounding)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {
            key: value
            for key, value in row.items()
            if key.startswith("val/") or (key.startswith("loss/") and key[5:] not in DIAGNOSTICS)
        }
        for row in rows
        if row.get("kind") == "epoch"
    ]


def main(
    out: Path = typer.Option(..., help="folder for the data, the store and one run per student/distill"),
    compare: Path | None = typer.Option(None, help="an earlier OUT: fail unless every loss is identical"),
) -> None:
    from pipeline.data import make_shapes
    from pipeline.engine.config import TrainConfig
    from pipeline.engine.train import train
    from pipeline.teacher import TeacherConfig
    from pipeline.teacher.cache_job import CacheJobConfig, build_cache

    warnings.filterwarnings("ignore", message=".*RANDOM")
    data = out / "data"
    if not (data / "splits").is_dir():
        make_shapes(data, n=40, seed=0)
    store = build_cache(
        CacheJobConfig(
            dataset="shapes",
            data_root=data,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=out / "store",
            decode_workers=0,
            progress=False,
        )
    )
    differ = []
    for student, distill in RUNS:
        name = f"{student}-{distill}"
        config = TrainConfig(
            dataset="shapes",
            data_root=data,
            out=out / name,
            student=student,
            student_overrides={"image_size": 64},
            distill=distill,
            cache=store if distill == "cached" else None,
            teacher_model=TINY_TEACHER,
            teacher_pretrained="none",
            allow_random_teacher=True,
            epochs=2,
            lr_drop=2,
            batch_size=4,
            max_samples=8,
            workers=0,
            progress=False,
            gallery_size=0,
            seed=0,
        )
        train(config)
        rows = loss_columns(out / name / "metrics.jsonl")
        print(name, json.dumps(rows))
        if compare is not None:
            before = loss_columns(compare / name / "metrics.jsonl")
            if before != rows:
                differ.append(name)
                print(f"  differs from {compare / name}: {json.dumps(before)}")
    if compare is not None:
        print(f"compared {len(RUNS)} runs with {compare}: {len(differ)} differ {differ}")
        if differ:
            sys.exit(1)


if __name__ == "__main__":
    typer.run(main)
