"""Cache benchmark: a plain open_clip loop against our cache job's embedding path, same inputs, same run.

Inputs: with --data-root, the COCO JPEGs and RefCOCO expressions there (../shared/data); without it,
`--images` distinct JPEGs made here (varied content and size, longest side `--jpeg-size`) and
`--texts` varied queries (`bench.assets`), so it runs from a clean checkout. Weights do not change the
speed, so an architecture with random weights is timed when no CLIP weights are at hand. The baseline
runs at our precision (bf16 autocast on CUDA, fp32 on the CPU), so the ratio is the pipeline's alone.

    python -m bench.cache_bench --teacher ViT-B-16 --images 2048 --texts 100000 --device cuda
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import open_clip
import torch
import typer
from PIL import Image

from bench.assets import make_jpegs, make_queries
from pipeline.data import load_split
from pipeline.teacher import TeacherConfig, build_teacher
from pipeline.teacher.cache_job import embed_images, embed_texts


def real_inputs(data_root: Path, images: int, texts: int) -> tuple[list[Path], list[str]]:
    jpegs = sorted((data_root / "images").rglob("*.jpg"))
    expressions = [s.text for s in load_split("refcoco", "val", data_root)]
    paths = [jpegs[i % len(jpegs)] for i in range(images)]
    return paths, [expressions[i % len(expressions)] for i in range(texts)]


def synthetic_inputs(workdir: Path, images: int, texts: int, jpeg_size: int) -> tuple[list[Path], list[str]]:
    return make_jpegs(workdir / "images", images, seed=0, max_side=jpeg_size), make_queries(texts, seed=0)


def baseline_precision(device: str) -> torch.dtype | None:
    """The autocast dtype of the plain loops: our teacher's (bf16 on CUDA; None = fp32 on the CPU)."""
    return torch.bfloat16 if device.startswith("cuda") else None


def _precision(device: str) -> contextlib.AbstractContextManager:
    dtype = baseline_precision(device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def plain_images(model, preprocess, paths: list[Path], batch_size: int, device: str) -> None:
    """The loop most repositories write: decode in the main process, full-size decode."""
    for start in range(0, len(paths), batch_size):
        batch = [preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]]
        with torch.inference_mode(), _precision(device):
            model.encode_image(torch.stack(batch).to(device))
    _sync(device)


def plain_texts(model, tokenizer, texts: list[str], batch_size: int, device: str) -> None:
    for start in range(0, len(texts), batch_size):
        with torch.inference_mode(), _precision(device):
            model.encode_text(tokenizer(texts[start : start + batch_size]).to(device))
    _sync(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(
    data_root: Path | None = typer.Option(None, help="real data; default: JPEGs and queries made here"),
    jpeg_size: int = typer.Option(640, help="longest side of the JPEGs made here (no --data-root)"),
    teacher: str = typer.Option("ViT-B-16"),
    pretrained: str = typer.Option("none", help="weights do not change speed; 'none' = random"),
    images: int = typer.Option(64),
    texts: int = typer.Option(2048),
    batch_size: int = typer.Option(64),
    decode_workers: int = typer.Option(2),
    device: str = typer.Option("cuda" if torch.cuda.is_available() else "cpu"),
    repeats: int = typer.Option(2, help="interleaved rounds; the best of each is reported"),
    workdir: Path | None = typer.Option(None, help="where the made JPEGs go (default: a temporary folder)"),
) -> None:
    if data_root is not None:
        paths, queries = real_inputs(data_root, images, texts)
    else:
        paths, queries = synthetic_inputs(
            workdir or Path(tempfile.mkdtemp(prefix="epmvg-cachebench-")), images, texts, jpeg_size
        )
    ours = build_teacher(
        TeacherConfig(model=teacher, pretrained=pretrained, allow_random=pretrained == "none", device=device)
    )
    plain_model, _, plain_preprocess = open_clip.create_model_and_transforms(ours.model_name, device=device)
    plain_model.eval()
    plain_tokenizer = open_clip.get_tokenizer(ours.model_name)

    def runs_on(paths: list[Path], queries: list[str]) -> dict:
        return {
            "plain open_clip images": lambda: plain_images(
                plain_model, plain_preprocess, paths, batch_size, device
            ),
            "epmvg cache images (+flip)": lambda: embed_images(ours, paths, batch_size, decode_workers),
            "plain open_clip texts": lambda: plain_texts(plain_model, plain_tokenizer, queries, 256, device),
            "epmvg cache texts": lambda: embed_texts(ours, queries, 256),
        }

    # Warm-up (workers, kernels, autotuning) on the first batches only, so the timed rounds get the time.
    for run in runs_on(paths[: 2 * batch_size], queries[:1024]).values():
        run()
    runs = runs_on(paths, queries)
    best = {name: min(_timed(run) for _ in range(repeats)) for name, run in runs.items()}
    counts = {name: images if "images" in name else texts for name in runs}
    rows = {
        name: {"seconds": round(best[name], 3), "items_per_s": round(counts[name] / best[name], 1)}
        for name in runs
    }
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if device.startswith("cuda") else "CPU only"),
        "teacher": ours.model_name,
        "device": device,
        "precision": "bf16 autocast, both paths" if baseline_precision(device) else "fp32, both paths",
        "inputs": str(data_root) if data_root else f"made here: distinct JPEGs, longest side {jpeg_size}",
        "images": images,
        "texts": texts,
        "results": rows,
        "note": "epmvg images include the flipped variant (2 embeddings per image)",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
