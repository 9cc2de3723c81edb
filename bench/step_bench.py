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

`--modes` picks the modes (the GPU script times none,cached,cached-views for the distillation overhead
and cached alone for the end-to-end run). The end-to-end report gives `data_wait_fraction`: the share
of the loader-fed steps' wall time the training loop spent blocked on `next(loader)`. MFU uses
`--peak-tflops`, or on CUDA the device's dense bf16 peak from its name (`bench.assets.peak_tflops`); a
device not in that table gets no MFU, and the report says so.
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

from bench.assets import peak_tflops as peak_of_device
from bench.assets import texture_jpegs
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


def time_loader_steps(trainer: Trainer, batches: int) -> tuple[float, float]:
    """Mean seconds per step of `batches` steps fed by the run's own DataLoader (decode + augment), and
    the fraction of that time spent blocked in `next(loader)` (waiting for data).

    The first batch is taken before the clock starts: it pays for starting the worker processes."""
    loader = iter(trainer.train_loader)
    trainer.train_step(next(loader))
    _sync(trainer.config.device)
    waited = 0.0
    started = time.perf_counter()
    for _ in range(batches):
        asked = time.perf_counter()
        batch = next(loader)
        waited += time.perf_counter() - asked
        trainer.train_step(batch)
    _sync(trainer.config.device)
    total = time.perf_counter() - started
    return total / batches, waited / total


def parse_modes(text: str) -> tuple[str, ...]:
    """`none,cached` -> ("none", "cached"), in MODES' order; unknown or empty -> BadParameter."""
    chosen = {mode.strip() for mode in text.split(",") if mode.strip()}
    if not chosen or chosen - set(MODES):
        raise typer.BadParameter(f"modes must be a comma list of {', '.join(MODES)}; got {text!r}")
    return tuple(mode for mode in MODES if mode in chosen)


def resolve_peak(peak_tflops: float, device: str) -> tuple[float | None, str]:
    """The peak for MFU and where it came from: the option, else the CUDA device's name in the table."""
    if peak_tflops:
        return peak_tflops, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "no peak for a CPU run: MFU not reported"
    name = torch.cuda.get_device_name(torch.device(device))
    peak = peak_of_device(name)
    if peak is None:
        return None, f"{name} is not in bench.assets' peak table: MFU not reported"
    return peak, f"{name}: dense bf16 from bench.assets' table"


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
    peak_tflops: float = typer.Option(
        0.0, help="device peak TFLOP/s for MFU; 0 = from the CUDA device's name (bench.assets' table)"
    ),
    modes: str = typer.Option(",".join(MODES), help="comma list of the modes to time"),
    compile: bool = typer.Option(False, help="torch.compile the student in every mode"),
    loader_batches: int = typer.Option(0, help="also time N steps fed by the real DataLoader; 0 = skip"),
    workers: int = typer.Option(4, help="DataLoader processes for --loader-batches"),
    jpeg_size: int = typer.Option(256, help="side of the generated shapes JPEGs (640 ~ a COCO image)"),
    textured: bool = typer.Option(
        False, help="add photo-like noise to the generated JPEGs (their bytes and decode cost near a photo's)"
    ),
    views: int = typer.Option(4, help="K of the cached-views mode's exact-view store"),
    text_encoder: str | None = typer.Option(
        None, help="override the preset's text encoder (a local folder where its package is absent)"
    ),
    workdir: Path | None = typer.Option(None),
) -> None:
    chosen = parse_modes(modes)
    cached_chosen = tuple(mode for mode in CACHED_MODES if mode in chosen)
    root = workdir or Path(tempfile.mkdtemp(prefix="epmvg-stepbench-"))
    data_root = root / "data"
    if not (data_root / "splits").is_dir():
        # ~4 expressions an image, 80% of images in train: enough train samples for every timed batch.
        images = max(40, batch_size, (loader_batches + 2) * batch_size // 3)
        make_shapes(data_root, n=images, seed=0, image_size=jpeg_size)
        if textured:
            texture_jpegs(sorted((data_root / "images").rglob("*.jpg")))
    overrides: dict[str, object] = {"image_size": image_size} if image_size else {}
    if text_encoder:
        overrides["text_encoder"] = text_encoder
    teacher_config = TeacherConfig(model=teacher, pretrained="none", allow_random=True, device=device)
    job = CacheJobConfig(
        dataset="shapes", data_root=data_root, teacher=teacher_config, out=root / "cache", progress=False
    )
    view_spec = ViewSpec(views, student_transform(student, image_size))
    jobs = {
        "cached": job,
        "cached-views": dataclasses.replace(job, out=root / "cache-views", views=view_spec),
    }
    stores = {mode: build_cache(jobs[mode]) for mode in cached_chosen}
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
        for mode in chosen
    }
    # One batch for every mode: the views run's (its replayed views), without `view` where no store has one.
    with_view = next(iter(trainers["cached-views" if "cached-views" in chosen else chosen[0]].train_loader))
    batch = {key: value for key, value in with_view.items() if key != "view"}
    batches = {mode: with_view if mode == "cached-views" else batch for mode in chosen}
    for mode, trainer in trainers.items():  # warm-up
        time_steps(trainer, batches[mode], 1)
    samples: dict[str, list[float]] = {mode: [] for mode in chosen}
    for _ in range(rounds):
        for mode, trainer in trainers.items():
            samples[mode].append(time_steps(trainer, batches[mode], steps))
    first = trainers[chosen[0]]
    flops = step_flops(first, batches[chosen[0]])
    loader_runs = {
        mode: time_loader_steps(trainers[mode], loader_batches) for mode in cached_chosen if loader_batches
    }
    base = statistics.median(samples[chosen[0]])
    results = {}
    for mode in chosen:
        seconds = statistics.median(samples[mode])
        results[mode] = {
            "ms_per_step": round(1000 * seconds, 1),
            "images_per_s": round(batch_size / seconds, 1),
        }
        if "none" in chosen:
            none = statistics.median(samples["none"])
            results[mode]["overhead_vs_none_pct"] = round(100 * (seconds / none - 1), 2)
    achieved = flops / base
    peak, peak_source = resolve_peak(peak_tflops, device)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if device.startswith("cuda") else "CPU only"),
        "student": student,
        "architecture": first.student_config.architecture,
        "image_size": first.student_config.image_size,
        "batch_size": batch_size,
        "teacher": Path(teacher).stem,
        "rounds_x_steps": f"{rounds}x{steps}",
        "compile": compile,
        "results": results,
        "student_step_gflop": round(flops / 1e9, 1),
        "achieved_tflops": round(achieved / 1e12, 3),
        "flops_of_mode": chosen[0],
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": round(achieved / (peak * 1e12), 3) if peak else None,
    }
    report["views"] = views
    for mode, (seconds, waiting) in loader_runs.items():
        compute_only = statistics.median(samples[mode])
        report[f"end_to_end_{mode.replace('-', '_')}"] = {
            "steps": loader_batches,
            "workers": workers,
            "jpeg_size": jpeg_size,
            "textured_jpegs": textured,
            "ms_per_step": round(1000 * seconds, 1),
            "images_per_s": round(batch_size / seconds, 1),
            "vs_compute_only_pct": round(100 * (seconds / compute_only - 1), 1),
            "data_wait_fraction": round(waiting, 4),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
