"""What the GPU benchmarks need, made in code, so `bench/gpu.sh` runs from a clean checkout on a bare machine.

- `make_jpegs`: varied JPEGs (each its own content, size and aspect, longest side `max_side`), written in
  parallel processes: decode cost is measured on distinct files, not a few images cycled.
- `texture_jpegs`: per-pixel noise on generated scenes (e.g. the shapes data the step benchmark trains on),
  so they compress and decode like photographs.
- `make_queries`: varied referring-expression-like texts of 2-15 words.
- `random_bert`: a folder with BERT-base's config and a made-up word-piece vocabulary (30,522 entries, as
  bert-base-uncased), which `AutoConfig`/`AutoTokenizer` read: a random text encoder of the real shape
  with no download (weights do not change speed).
- `peak_tflops`: the device's dense bf16 peak from its name, for MFU; unknown devices give None.

    python -m bench.assets bert DIR       # the random BERT-base folder, for --text-encoder DIR
    python -m bench.assets peak           # this machine's GPU name and its peak (or that it is unknown)
    python -m bench.assets setup DIR      # both (what bench/gpu.sh runs)
"""

from __future__ import annotations

import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; the first pattern that
# matches the device name wins, so the PCIe / NVL variants come before the plain names.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH[12]00\b.*\bNVL\b", 835.0),
    (r"\bG?H[12]00\b", 989.0),  # H100 SXM, H200 SXM, GH200
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"\bRTX 4090\b", 165.0),
)

BERT_BASE_VOCAB = 30522  # bert-base-uncased's vocabulary size: the embedding table a real run trains

_COLOURS = [
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "brown",
    "grey",
    "orange",
    "pink",
    "purple",
    "dark",
    "light",
]
_NOUNS = [
    "man",
    "woman",
    "person",
    "child",
    "dog",
    "cat",
    "car",
    "bus",
    "chair",
    "table",
    "cup",
    "bottle",
    "horse",
    "bike",
    "sign",
    "tree",
    "plate",
]
_WORDS = [
    "left",
    "right",
    "middle",
    "front",
    "back",
    "top",
    "bottom",
    "near",
    "far",
    "big",
    "small",
    "tall",
    "short",
    "the",
    "a",
    "of",
    "on",
    "in",
    "with",
]
_RELATIONS = ("left of", "right of", "next to", "behind", "in front of", "on top of", "under", "near")


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a device called `device_name`, or None where the table lacks it."""
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def _write_jpeg(job: tuple[Path, int, int, int]) -> None:
    path, seed, number, max_side = job
    rng = np.random.default_rng((seed, number))
    # Landscape or portrait, short side 50-100% of the long one (COCO's range); 8-bit content from a coarse
    # random field (smooth regions), shapes (edges) and per-pixel noise (texture), so files compress and
    # decode like photographs rather than like flat colour.
    short = int(max_side * rng.uniform(0.5, 1.0))
    width, height = (max_side, short) if rng.random() < 0.5 else (short, max_side)
    coarse = rng.integers(0, 256, (int(rng.integers(3, 24)), int(rng.integers(3, 24)), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        fill = tuple(rng.integers(0, 256, 3).tolist())
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, rng.uniform(2, 12), (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def make_jpegs(
    out: Path, n: int, seed: int = 0, max_side: int = 640, processes: int | None = None
) -> list[Path]:
    """Write `n` distinct JPEGs (longest side `max_side`) under `out`; returns their paths in order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{number:06d}.jpg" for number in range(n)]
    jobs = [(path, seed, number, max_side) for number, path in enumerate(paths)]
    processes = processes or min(16, os.cpu_count() or 1)
    if processes <= 1 or n < 32:
        for job in jobs:
            _write_jpeg(job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_jpeg, jobs, chunksize=16))
    return paths


def _texture_jpeg(job: tuple[Path, int, int]) -> None:
    path, seed, number = job
    rng = np.random.default_rng((seed, 1, number))
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    pixels = image + rng.normal(0, rng.uniform(4, 12), image.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def texture_jpegs(paths: list[Path], seed: int = 0, processes: int | None = None) -> None:
    """Add per-pixel noise to JPEGs in place (same size, same content, so boxes stay right): flat synthetic
    scenes compress to a fraction of a photograph's bytes and decode faster, which would flatter the
    loader; with texture their size and decode cost come closer to a photograph's."""
    jobs = [(path, seed, number) for number, path in enumerate(paths)]
    processes = processes or min(16, os.cpu_count() or 1)
    if processes <= 1 or len(jobs) < 32:
        for job in jobs:
            _texture_jpeg(job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_texture_jpeg, jobs, chunksize=16))


def make_queries(n: int, seed: int = 0) -> list[str]:
    """`n` referring-expression-like texts of 2-15 words (varied lengths: the cache batches by length)."""
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n):
        words = [str(rng.choice(_COLOURS)), str(rng.choice(_NOUNS))]
        if rng.random() < 0.6:
            words += [str(rng.choice(_RELATIONS)), "the", str(rng.choice(_NOUNS))]
        words += [str(word) for word in rng.choice(_WORDS, int(rng.integers(0, 9)))]
        queries.append(" ".join(words[:15]))
    return queries


def random_bert(out: Path) -> Path:
    """A folder holding BERT-base's config and a 30,522-entry word-piece vocabulary; returns `out`.

    The vocabulary is made up (special tokens, the words above, letters and digits as words and as
    `##` pieces, then `[unused]` fillers), so any text tokenizes; the sequence length, not the words,
    sets the cost."""
    from transformers import BertConfig  # deferred: heavy, and only this helper needs it

    out.mkdir(parents=True, exist_ok=True)
    BertConfig().save_pretrained(out)  # the defaults are BERT-base: 12 layers, 768 wide, 12 heads
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    words = sorted({*_COLOURS, *_NOUNS, *_WORDS, *" ".join(_RELATIONS).split()})
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *".,'-!?",
        *chars,
        *(f"##{c}" for c in chars),
        *words,
    ]
    vocab = list(dict.fromkeys(vocab))  # "a" is a letter and a word: one entry, or the ids shift
    vocab += [f"[unused{i}]" for i in range(BERT_BASE_VOCAB - len(vocab))]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512})
    )
    return out


def device_line() -> str:
    """This machine's GPU and the peak MFU will use, or that it has none in the table."""
    import torch  # deferred: `bert` alone needs no torch import

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    peak = peak_tflops(name)
    return f"{name}: " + (f"{peak:g} TFLOP/s dense bf16" if peak else "not in the table, MFU not reported")


def main(argv: list[str]) -> int:
    # `setup DIR` does both in one process: one interpreter start less for the GPU script.
    if len(argv) == 2 and argv[0] in ("bert", "setup"):
        if argv[0] == "setup":
            print(device_line())
        random_bert(Path(argv[1]))
        return 0
    if argv == ["peak"]:
        print(device_line())
        return 0
    print("usage: python -m bench.assets bert DIR | setup DIR | peak", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
