"""Training-step benchmark: distill none / cached / cached-views / online, timed interleaved in one run.

It times the trainer's own `train_step` (compute only: one pre-collated batch of real shapes images,
reused) and, with `--loader-batches N`, N steps of the cached runs fed by their real DataLoader (JPEG
decoding and augmentation in `--workers` processes), against the compute-only figure. `cached-views`
trains on an exact-view store (`cache build --views K`): its step looks the target up by the replayed
view, and its loader renders the stored choices instead of drawing new ones. Teacher and
student have random weights (`transvg-r50-random` is the paper's student, `lgrnet-r50` LGR-NET's, both
buildable offline): speed does not depend on them. Any student preset works; run it once per student
to compare them (`bash bench/gpu.sh run step` and `run step-lgrnet`).

    python -m bench.step_bench --student transvg-r50-random --image-size 640 --batch-size 64 \
        --teacher ViT-B-16 --loader-batches 50 --workers 14 --peak-tflops 989 --device cuda
    python -m bench.step_bench --student lgrnet-r50 --image-size 640 --batch-size 64 \
        --teacher ViT-B-16 --loader-batches 50 --workers 14 --peak-tflops 989 --device cuda
    python -m bench.step_bench --student small --image-size 96 --batch-size 16      # CPU
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import typer
from torch.utils.flop_counter import FlopCounterMode

from pipeline.data import make_shapes
from pipeline.engine.config import TrainConfig
from pipeline.engine.train import Trainer
from pipeline.studies.demo import TINY_TEACHER
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache
from pipeline.teacher.views import ViewSpec, student_transform

MODES = ("none", "cached", "cached-views", "online")
CACHED_MODES = ("cached", "cached-views")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(trainer: Trainer, batch: dict, steps: int) -> float:
    """Mean seconds per training step over `steps` steps."""
    _sync(trainer.config.device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    _sync(trainer.config.device)
    return (time.perf_counter() - started) / steps


def time_loader_steps(trainer: Trainer, batches: int) -> float:
    """Mean seconds per step of `batches` steps fed by the run's own DataLoader (decode + augment).

    The first batch is taken before the clock starts: it pays for starting the worker processes."""
    loader = iter(trainer.train_loader)
    trainer.train_step(next(loader))
    _sync(trainer.config.device)
    started = time.perf_counter()
    for _ in range(batches):
        trainer.train_step(next(loader))
    _sync(trainer.config.device)
    return (time.perf_counter() - started) / batches


def step_flops(trainer: Trainer, batch: dict) -> int:
    """FLOPs of one training step (forward + backward), counted by torch on the eager model (the
    counter does not see inside compiled graphs; compiling does not change the FLOPs)."""
    compiled, trainer.ddp_model = trainer.ddp_model, trainer.model
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            trainer.train_step(batch)
    finally:
        trainer.ddp_model = compiled
    return counter.get_total_flops()


def main(
    student: str = typer.Option("small"),
    image_size: int | None = typer.Option(96),
    batch_size: int = typer.Option(16),
    teacher: str = typer.Option(str(TINY_TEACHER), help="open_clip name or config JSON (random weights)"),
    steps: int = typer.Option(5),
    rounds: int = typer.Option(3),
    device: str = typer.Option("cuda" if torch.cuda.is_available() else "cpu"),
    peak_tflops: float = typer.Option(0.0, help="device peak (e.g. 989 for H100 bf16 dense) for MFU"),
    compile: bool = typer.Option(False, help="torch.compile the student in every mode"),
    loader_batches: int = typer.Option(0, help="also time N steps fed by the real DataLoader; 0 = skip"),
    workers: int = typer.Option(4, help="DataLoader processes for --loader-batches"),
    jpeg_size: int = typer.Option(256, help="side of the generated shapes JPEGs (640 ~ a COCO image)"),
    views: int = typer.Option(4, help="K of the cached-views mode's exact-view store"),
    text_encoder: str | None = typer.Option(
        None, help="override the preset's text encoder (a local folder where its package is absent)"
    ),
    workdir: Path | None = typer.Option(None),
) -> None:
    root = workdir or Path(tempfile.mkdtemp(prefix="epmvg-stepbench-"))
    data_root = root / "data"
    if not (data_root / "splits").is_dir():
        # ~4 expressions an image, 80% of images in train: enough train samples for every timed batch.
        images = max(40, batch_size, (loader_batches + 2) * batch_size // 3)
        make_shapes(data_root, n=images, seed=0, image_size=jpeg_size)
    overrides: dict[str, object] = {"image_size": image_size} if image_size else {}
    if text_encoder:
        overrides["text_encoder"] = text_encoder
    teacher_config = TeacherConfig(model=teacher, pretrained="none", allow_random=True, device=device)
    job = CacheJobConfig(
        dataset="shapes", data_root=data_root, teacher=teacher_config, out=root / "cache", progress=False
    )
    view_spec = ViewSpec(views, student_transform(student, image_size))
    stores = {
        "cached": build_cache(job),
        "cached-views": build_cache(dataclasses.replace(job, out=root / "cache-views", views=view_spec)),
    }
    trainers = {
        mode: Trainer(
            TrainConfig(
                dataset="shapes",
                data_root=data_root,
                out=root / mode,
                student=student,
                student_overrides=overrides,
                distill="cached" if mode in CACHED_MODES else mode,
                cache=stores.get(mode),
                teacher_model=teacher,
                teacher_pretrained="none",
                allow_random_teacher=True,
                batch_size=batch_size,
                workers=workers if mode in CACHED_MODES else 0,
                device=device,
                compile=compile,
                progress=False,
            )
        )
        for mode in MODES
    }
    # One batch for every mode: the views run's (its replayed views), without `view` where no store has one.
    with_view = next(iter(trainers["cached-views"].train_loader))
    batch = {key: value for key, value in with_view.items() if key != "view"}
    batches = {mode: with_view if mode == "cached-views" else batch for mode in MODES}
    for mode, trainer in trainers.items():  # warm-up
        time_steps(trainer, batches[mode], 1)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, trainer in trainers.items():
            samples[mode].append(time_steps(trainer, batches[mode], steps))
    flops = step_flops(trainers["none"], batch)
    loader_seconds = {
        mode: time_loader_steps(trainers[mode], loader_batches) for mode in CACHED_MODES if loader_batches
    }
    base = statistics.median(samples["none"])
    results = {}
    for mode in MODES:
        seconds = statistics.median(samples[mode])
        results[mode] = {
            "ms_per_step": round(1000 * seconds, 1),
            "images_per_s": round(batch_size / seconds, 1),
            "overhead_vs_none_pct": round(100 * (seconds / base - 1), 1),
        }
    achieved = flops / base
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if device.startswith("cuda") else "CPU only"),
        "student": student,
        "architecture": trainers["none"].student_config.architecture,
        "image_size": trainers["none"].student_config.image_size,
        "batch_size": batch_size,
        "teacher": Path(teacher).stem,
        "rounds_x_steps": f"{rounds}x{steps}",
        "compile": compile,
        "results": results,
        "student_step_gflop": round(flops / 1e9, 1),
        "achieved_tflops": round(achieved / 1e12, 3),
        "mfu": round(achieved / (peak_tflops * 1e12), 3) if peak_tflops else None,
    }
    report["views"] = views
    for mode, seconds in loader_seconds.items():
        compute_only = statistics.median(samples[mode])
        report[f"end_to_end_{mode.replace('-', '_')}"] = {
            "steps": loader_batches,
            "workers": workers,
            "jpeg_size": jpeg_size,
            "ms_per_step": round(1000 * seconds, 1),
            "images_per_s": round(batch_size / seconds, 1),
            "vs_compute_only_pct": round(100 * (seconds / compute_only - 1), 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
