"""Exact-view mode: the teacher embeds the very augmented pixels the student will train on.

`cache build --views K` draws K seeded sets of train-augmentation choices per training record, keeps
them in the store (an int32 index array) with the fingerprint of the transform config, and embeds
each view's pixels through the online teacher's own preprocessing. The trainer, seeing a `views`
table in its store, replays view (epoch mod K) of each record, so its [DIE] target is the teacher's
embedding of exactly the student's input. Flips follow the drawn choices, and the text target follows
the flip's left/right swap through the ordinary text rows.

The trainer's side, replaying the stored views, is `pipeline/targets/replay.py`.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.data import TransformConfig, load_split
from pipeline.data.decode import read_image_tensor
from pipeline.data.transforms import AugmentParams, draw_augment_params
from pipeline.student import student_preset, transform_config_for
from pipeline.targets.replay import render_view, transform_fingerprint

if TYPE_CHECKING:
    from pipeline.teacher import Teacher

_EXACT_FLOAT32 = 2**24  # the view_params table is float32: every choice must be an exact integer


@dataclass(frozen=True)
class ViewSpec:
    """How many views each record gets, from which seed, of which split, under which train transform."""

    count: int
    transform: TransformConfig
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--views must be at least 1, got {self.count}")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seed": self.seed,
            "split": self.split,
            "transform": transform_fingerprint(self.transform),
        }


@dataclass
class ViewPlan:
    keys: list[str]  # one per row: the record's split index
    items: list[str]  # one per row: JSON of what `embed_views` needs (path, box, text, choices)
    params: np.ndarray  # [rows, K, AugmentParams.ROW_LENGTH] int64
    view_row: np.ndarray  # [records of the split] int32, -1 for skipped records


def plan_views(dataset: str, data_root: Path, image_row: np.ndarray, spec: ViewSpec) -> ViewPlan:
    """Draw every view's choices; `image_row` (the split's image index) says which records are kept."""
    records = [s for s in load_split(dataset, spec.split, data_root) if image_row[s.index] >= 0]
    keys, items, params = [], [], []
    view_row = np.full(len(image_row), -1, dtype=np.int32)
    sizes: dict[Path, tuple[int, int]] = {}
    for sample in records:
        if sample.image_path not in sizes:
            with Image.open(sample.image_path) as image:  # reads the header only
                sizes[sample.image_path] = image.size
        rows = [
            draw_augment_params(
                sizes[sample.image_path],
                sample.box_xyxy,
                sample.text,
                spec.transform,
                np.random.default_rng((spec.seed, sample.index, view)),
            ).to_row()
            for view in range(spec.count)
        ]
        view_row[sample.index] = len(keys)
        keys.append(str(sample.index))
        items.append(
            json.dumps([str(sample.image_path), sample.box_xyxy and list(sample.box_xyxy), sample.text, rows])
        )
        params.append(rows)
    shape = (len(keys), spec.count, AugmentParams.ROW_LENGTH)
    array = np.asarray(params, dtype=np.int64).reshape(shape)
    if array.size and np.abs(array).max() >= _EXACT_FLOAT32:
        raise ValueError("an augmentation choice exceeds 2**24 and would not survive the float32 table")
    return ViewPlan(keys, items, array, view_row)


def params_table(items: Sequence[str]) -> np.ndarray:
    """[rows, K, ROW_LENGTH] float32: the stored choices of a shard of `embed_views` items."""
    return np.asarray([json.loads(item)[3] for item in items], dtype=np.float32)


class _RenderedViews(Dataset):
    """Item i: the K views of record `items[i]`, rendered and framed for the teacher in a loader
    worker: [K, 3, S, S] float32."""

    def __init__(self, items: Sequence[str], teacher: Teacher, transform: TransformConfig) -> None:
        self.items = list(items)
        self.teacher = teacher
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        path, box, text, rows = json.loads(self.items[index])
        image = read_image_tensor(Path(path))  # read_rgb's checks: a bad file gives one line
        views = [render_view(image, box, text, row, self.transform) for row in rows]
        return torch.stack([self.teacher.preprocess_view(view) for view in views])


def embed_views(
    teacher: Teacher,
    items: Sequence[str],
    transform: TransformConfig,
    batch_size: int = 256,
    decode_workers: int = 0,
) -> np.ndarray:
    """[rows, K, d] float32: the teacher's [DIE] of each view's pixels, framed as the online teacher
    frames the student's input (`Teacher.preprocess_view`).

    Records x K views are rendered by `decode_workers` loader processes (none inside a daemonic dask
    worker, which may not start them) and encoded about `batch_size` views at a time.
    """
    if not items:
        return np.empty((0, 0, teacher.embedding_dim), dtype=np.float32)
    count = len(json.loads(items[0])[3])
    workers = 0 if multiprocessing.current_process().daemon else decode_workers
    loader = DataLoader(
        _RenderedViews(items, teacher, transform),
        batch_size=max(1, batch_size // count),
        num_workers=workers,
        pin_memory=teacher.device.type == "cuda",
    )
    out = []
    for pixels in loader:  # [B, K, 3, S, S]
        embeddings = teacher.encode_images(pixels.flatten(0, 1).to(teacher.device, non_blocking=True))
        out.append(embeddings.unflatten(0, pixels.shape[:2]))
    return torch.cat(out).cpu().numpy()


def student_transform(student: str, image_size: int | None = None) -> TransformConfig:
    """The train transform a student preset trains on (its size and its backbone's normalization)."""
    overrides = {"image_size": image_size} if image_size else {}
    return transform_config_for(student_preset(student, **overrides))
