"""Exact-view caching (issue #12): store size and cache time against K, the views per training record.

K = 0 is the ordinary store (each image as is and flipped). Every K builds a fresh store of the same
dataset with the same teacher, one after the other, in this process.

    python -m bench.views_bench shapes --data-root demo/data --teacher demo/teacher/clip-shapes.json \
        --pretrained demo/teacher/teacher.safetensors --student shapes --views 0,1,2,4
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import typer

import storage
from pipeline.targets.schema import VIEW_PARAMS, VIEWS
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache
from pipeline.teacher.views import ViewSpec, student_transform


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(
    dataset: str = typer.Argument("shapes"),
    data_root: Path = typer.Option(Path("demo/data")),
    teacher: str = typer.Option("ViT-B-16"),
    pretrained: str = typer.Option(
        "none", help="'none' = random weights (speed and size do not depend on them)"
    ),
    student: str = typer.Option("shapes", help="student preset whose train transform the views draw"),
    views: str = typer.Option("0,1,2,4", help="comma-separated K values; 0 = no views"),
    batch_size: int = typer.Option(256),
    workdir: Path | None = typer.Option(None, help="where the stores go [default: a temporary folder]"),
) -> None:
    counts = [int(k) for k in views.split(",")]
    teacher_config = TeacherConfig(model=teacher, pretrained=pretrained, allow_random=pretrained == "none")
    transform = student_transform(student)
    rows = {}
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        for k in counts:
            out = Path(scratch) / f"k{k}"
            config = CacheJobConfig(
                dataset=dataset,
                data_root=data_root,
                teacher=teacher_config,
                out=out,
                batch_size=batch_size,
                decode_workers=0,
                progress=False,
                views=ViewSpec(k, transform) if k else None,
            )
            started = time.perf_counter()
            build_cache(config)
            seconds = time.perf_counter() - started
            store = storage.FeatureStore.open(out)
            view_rows = store.table_spec(VIEWS).rows if VIEWS in store.tables() else 0
            rows[str(k)] = {
                "seconds": round(seconds, 1),
                "store_mb": round(directory_bytes(out) / 1e6, 2),
                "views_mb": round(
                    sum(directory_bytes(out / t) for t in (VIEWS, VIEW_PARAMS) if (out / t).exists()) / 1e6, 2
                ),
                "records_with_views": view_rows,
                "view_embeddings": view_rows * k,
            }
    print(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
                "dataset": dataset,
                "teacher": teacher,
                "student": student,
                "image_size": transform.image_size,
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    typer.run(main)
