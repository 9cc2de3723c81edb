"""The loader side of the training data path, before and after issue #20, side by side in one run.

For each path it reports samples/s on ONE CPU core (a loader worker's work per sample: read, decode,
draw, augment, collate) and the bytes per sample a worker hands over IPC for the pixels:

- `before`: the code at `--old-ref` (default 44ffb7b, main before uint8 IPC), materialised with
  `git archive` into a temp dir and run in a subprocess with that tree first on PYTHONPATH: PIL
  decode + augment, float32 [3, S, S] + bool mask shipped.
- `workers`: this tree, `augment_on="workers"`: torchvision decode + v2 augmentation on uint8
  tensors, uint8 [3, S, S] + sizes/offsets shipped.
- `device`: this tree, `augment_on="device"`: the worker reads the file's bytes and draws the choices;
  decoding and augmenting happen on the training device (not measured here: a GPU's work).

Every path runs the same TrainTransform recipe over the same varied JPEGs it makes itself (a new
image per sample, not a cycled few), in one process per path pinned to one thread.

    python bench/data_path_bench.py --images 300 --size 640 --batch 32 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_REF = "44ffb7b"

# Run by each subprocess with its own `pipeline` first on sys.path; uses only the API both trees share.
MEASURE = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline.data import GroundingCollate, GroundingDataset, Sample, TrainTransform, TransformConfig

images = sorted(Path(sys.argv[1]).glob("*.jpg"))
size, batch, mode = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def tokenize(texts):
    return torch.ones((len(texts), 4), dtype=torch.long), torch.ones((len(texts), 4), dtype=torch.bool)

samples = [Sample(p, p.name, (40.0, 30.0, 40.0 + size / 3, 30.0 + size / 4), "the cat on the grass",
                  "train", str(i), i) for i, p in enumerate(images)]
dataset = GroundingDataset(samples, TrainTransform(TransformConfig(image_size=size)), seed=0)
if mode != "before":
    dataset.augment_on = mode
collate = GroundingCollate(tokenize)
collate([dataset[0]])  # warm-up: imports, first allocations
pixel_keys = ("pixels", "pixel_mask", "pixel_size", "pixel_offset", "encoded", "augment_params")
sent = 0
start = time.perf_counter()
for first in range(0, len(samples), batch):
    out = collate([dataset[i] for i in range(first, min(first + batch, len(samples)))])
    for key in pixel_keys:
        value = out.get(key)
        if isinstance(value, torch.Tensor):
            sent += value.numel() * value.element_size()
        elif isinstance(value, list):  # the encoded files: (bytes, size, format) per sample
            sent += sum(item[0].numel() for item in value)
elapsed = time.perf_counter() - start
print(json.dumps({"path": mode, "samples": len(samples), "seconds": elapsed,
                  "samples_per_s_per_core": len(samples) / elapsed,
                  "ipc_bytes_per_sample": sent / len(samples)}))
"""


def make_jpegs(folder: Path, count: int, size: int) -> None:
    """`count` different photos-like JPEGs around `size` px (varied aspect ratios, gradients + noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        long_side = int(size * rng.uniform(0.9, 1.0))
        short_side = int(long_side * rng.uniform(0.6, 1.0))
        width, height = (long_side, short_side) if i % 3 else (short_side, long_side)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack(
            [128 + 90 * np.sin(xs / (20 + 7 * c) + ys / (31 + 5 * c) + phase[c]) for c in range(3)], -1
        )
        pixels = np.clip(base + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def old_tree(ref: str, into: Path) -> Path:
    """The `pipeline` package at `ref`, extracted under `into` (git archive: nothing copied into the repo)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "pipeline"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"error: cannot read {ref} from {REPO} ({archive.stderr.decode().strip()})")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(path: str, tree: Path, images: Path, size: int, batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    mode = "before" if path == "before" else path
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(images), str(size), str(batch), mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"error: the {path} path failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="samples per path (one new JPEG each)")
    parser.add_argument("--size", type=int, default=640, help="the student's input size (and the JPEGs')")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--old-ref", default=OLD_REF, help="git commit of the path before")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        make_jpegs(images, args.images, args.size)
        before = old_tree(args.old_ref, Path(tmp) / "old")
        rows = [
            measure("before", before, images, args.size, args.batch),
            measure("workers", REPO, images, args.size, args.batch),
            measure("device", REPO, images, args.size, args.batch),
        ]
    base = rows[0]
    print(f"{'path':<8} {'samples/s/core':>15} {'IPC KB/sample':>14} {'vs before (speed, bytes)':>26}")
    for row in rows:
        speed = row["samples_per_s_per_core"] / base["samples_per_s_per_core"]
        size = base["ipc_bytes_per_sample"] / row["ipc_bytes_per_sample"]
        rate, kilobytes = row["samples_per_s_per_core"], row["ipc_bytes_per_sample"] / 1024
        print(f"{row['path']:<8} {rate:>15.1f} {kilobytes:>14.1f} {speed:>12.2f}x {size:>10.1f}x smaller")
    report = {"size": args.size, "batch": args.batch, "old_ref": args.old_ref, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
