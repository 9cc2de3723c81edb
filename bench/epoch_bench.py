"""Epoch benchmark: DataLoader workers kept across epochs (`--persistent-workers`, the default) against
workers restarted every epoch, as two trainers timed epoch by epoch, interleaved, in one run.

Each timed epoch is what `Trainer.fit` does per epoch: the training pass, then the val evaluation. Both
trainers share the config, data and seed; only `persistent_workers` differs. The first epoch, which
starts the workers in both, is reported apart.

    python -m bench.epoch_bench --images 300 --image-size 96 --batch-size 32 --workers 1   # the demo's
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import typer

from pipeline.data import make_shapes
from pipeline.engine.config import TrainConfig
from pipeline.engine.train import Trainer

STYLES = {"persistent workers": True, "workers restarted each epoch": False}


def time_epoch(trainer: Trainer, epoch: int) -> float:
    """Seconds for one training pass plus the val evaluation, as `Trainer.fit` runs them."""
    started = time.perf_counter()
    trainer.train_epoch(epoch)
    trainer.evaluate(trainer.config.val_split)
    return time.perf_counter() - started


def main(
    images: int = typer.Option(300, help="shapes images to generate (~4 expressions each)"),
    jpeg_size: int = typer.Option(256),
    student: str = typer.Option("small"),
    image_size: int = typer.Option(96, help="the student's input size"),
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(1),
    epochs: int = typer.Option(4, help="epochs per trainer, the first included"),
    workdir: Path | None = typer.Option(None),
) -> None:
    if workers < 1:
        raise typer.BadParameter("persistence needs worker processes: --workers >= 1")
    root = workdir or Path(tempfile.mkdtemp(prefix="epmvg-epochbench-"))
    data_root = root / "data"
    if not (data_root / "splits").is_dir():
        make_shapes(data_root, n=images, seed=0, image_size=jpeg_size)
    trainers = {
        style: Trainer(
            TrainConfig(
                dataset="shapes",
                data_root=data_root,
                out=root / ("persistent" if persistent else "restarted"),
                student=student,
                student_overrides={"image_size": image_size},
                distill="none",
                epochs=epochs,
                batch_size=batch_size,
                workers=workers,
                persistent_workers=persistent,
                progress=False,
            )
        )
        for style, persistent in STYLES.items()
    }
    seconds: dict[str, list[float]] = {style: [] for style in STYLES}
    for epoch in range(epochs):
        for style, trainer in trainers.items():
            seconds[style].append(time_epoch(trainer, epoch))
    results = {
        style: {
            "first_epoch_s": round(rows[0], 2),
            "later_epoch_s_median": round(statistics.median(rows[1:]), 2) if len(rows) > 1 else None,
        }
        for style, rows in seconds.items()
    }
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "student": student,
        "image_size": image_size,
        "train_samples": len(trainers["persistent workers"].train_set),
        "val_samples": len(trainers["persistent workers"].samples["val"]),
        "batch_size": batch_size,
        "workers": workers,
        "epochs": epochs,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
