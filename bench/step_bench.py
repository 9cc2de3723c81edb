"""Training-step benchmark: distill none / cached / online, timed interleaved in one run.

It times the trainer's own `train_step` (compute only: one pre-collated batch of real shapes images,
reused) and, with `--loader-batches N`, N steps of the cached run fed by its real DataLoader (JPEG
decoding and augmentation in `--workers` processes), against the compute-only figure. Teacher and
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

from pipeline.cache_job import CacheJobConfig, build_cache
from pipeline.data import make_shapes
from pipeline.demo import TINY_TEACHER
from pipeline.engine.config import TrainConfig
from pipeline.engine.train import Trainer
from pipeline.teacher import TeacherConfig

MODES = ("none", "cached", "online")


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
    teacher_config = TeacherConfig(model=teacher, pretrained="none", allow_random=True, device=device)
    store = build_cache(
        CacheJobConfig(
            dataset="shapes", data_root=data_root, teacher=teacher_config, out=root / "cache", progress=False
        )
    )
    overrides: dict[str, object] = {"image_size": image_size} if image_size else {}
    if text_encoder:
        overrides["text_encoder"] = text_encoder
    trainers = {
        mode: Trainer(
            TrainConfig(
                dataset="shapes",
                data_root=data_root,
                out=root / mode,
                student=student,
                student_overrides=overrides,
                distill=mode,
                cache=store if mode == "cached" else None,
                teacher_model=teacher,
                teacher_pretrained="none",
                allow_random_teacher=True,
                batch_size=batch_size,
                workers=workers if mode == "cached" else 0,
                device=device,
                compile=compile,
                progress=False,
            )
        )
        for mode in MODES
    }
    batch = next(iter(trainers["none"].train_loader))
    for trainer in trainers.values():  # warm-up
        time_steps(trainer, batch, 1)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, trainer in trainers.items():
            samples[mode].append(time_steps(trainer, batch, steps))
    flops = step_flops(trainers["none"], batch)
    loader_seconds = time_loader_steps(trainers["cached"], loader_batches) if loader_batches else None
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
    if loader_seconds is not None:
        compute_only = statistics.median(samples["cached"])
        report["end_to_end_cached"] = {
            "steps": loader_batches,
            "workers": workers,
            "jpeg_size": jpeg_size,
            "ms_per_step": round(1000 * loader_seconds, 1),
            "images_per_s": round(batch_size / loader_seconds, 1),
            "vs_compute_only_pct": round(100 * (loader_seconds / compute_only - 1), 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
