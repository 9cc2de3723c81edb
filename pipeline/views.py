"""Exact-view mode: the teacher embeds the very augmented pixels the student will train on.

`cache build --views K` draws K seeded sets of train-augmentation choices per training record, keeps
them in the store (an int32 index array) with the fingerprint of the transform config, and embeds
each view's pixels through the online teacher's own preprocessing. The trainer, seeing a `views`
table in its store, replays view (epoch mod K) of each record, so its [DIE] target is the teacher's
embedding of exactly the student's input. Flips follow the drawn choices, and the text target follows
the flip's left/right swap through the ordinary text rows.

Importing this module does not import the teacher (nor open_clip): the cached trainer uses it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipeline.data import TransformConfig, load_split
from pipeline.data.sample import Sample
from pipeline.data.transforms import (
    AugmentParams,
    TransformedSample,
    apply_augment_params,
    draw_augment_params,
)
from pipeline.targets import TargetsMismatchError

if TYPE_CHECKING:
    from pipeline.teacher import Teacher

VIEWS = "views"
# The choices as a float32 table beside the embeddings, so that resume, verify, dask and HDF5 treat
# them like any table; every value is an integer below 2**24, which float32 holds exactly.
VIEW_PARAMS = "view_params"
_EXACT_FLOAT32 = 2**24
VIEW_ROW = "view_row"  # index/<split>/view_row: a record's row in the views table, -1 = none


class ViewsMismatchError(TargetsMismatchError):
    """The store's views were drawn for another train transform (or split) than the run's."""


def transform_fingerprint(transform: TransformConfig) -> dict[str, Any]:
    """The transform config as the store's manifest keeps it (JSON: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(transform)))


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
        items.append(json.dumps([str(sample.image_path), list(sample.box_xyxy), sample.text, rows]))
        params.append(rows)
    shape = (len(keys), spec.count, AugmentParams.ROW_LENGTH)
    array = np.asarray(params, dtype=np.int64).reshape(shape)
    if array.size and np.abs(array).max() >= _EXACT_FLOAT32:
        raise ValueError("an augmentation choice exceeds 2**24 and would not survive the float32 table")
    return ViewPlan(keys, items, array, view_row)


def params_table(items: Sequence[str]) -> np.ndarray:
    """[rows, K, ROW_LENGTH] float32: the stored choices of a shard of `embed_views` items."""
    return np.asarray([json.loads(item)[3] for item in items], dtype=np.float32)


def render_view(
    image: Image.Image, box_xyxy: Sequence[float], text: str, row: Sequence[int], transform: TransformConfig
) -> TransformedSample:
    """One stored view: the train transform with its choices read from `row`."""
    return apply_augment_params(image, box_xyxy, text, AugmentParams.from_row(row), transform)


def embed_views(teacher: Teacher, items: Sequence[str], transform: TransformConfig) -> np.ndarray:
    """[rows, K, d] float32: the teacher's [DIE] of each view's pixels, framed as the online teacher
    frames the student's input (`Teacher.preprocess_student_pixels`)."""
    out = []
    for item in items:
        path, box, text, rows = json.loads(item)
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        views = [render_view(rgb, box, text, row, transform) for row in rows]
        pixels = teacher.preprocess_student_pixels(
            torch.stack([v.pixels for v in views]),
            torch.stack([v.pixel_mask for v in views]),
            transform.mean,
            transform.std,
        )
        out.append(teacher.encode_images(pixels).cpu())
    return torch.stack(out).numpy()


class ViewReplay:
    """What `GroundingDataset` calls in exact-view mode: record `index` at `epoch` gets view epoch mod K."""

    def __init__(self, params: np.ndarray, view_row: np.ndarray, transform: TransformConfig) -> None:
        self.params = params
        self.view_row = view_row
        self.transform = transform

    @property
    def count(self) -> int:
        return int(self.params.shape[1])

    def __call__(self, image: Image.Image, sample: Sample, epoch: int) -> tuple[TransformedSample, int]:
        row = int(self.view_row[sample.index])
        if row < 0:
            raise ViewsMismatchError(
                f"the store has no views for {sample.split} record {sample.index} (it skipped it)"
            )
        view = epoch % self.count
        return render_view(image, sample.box_xyxy, sample.text, self.params[row, view], self.transform), view


def check_views(stored: dict[str, Any], transform: TransformConfig, split: str, store: Path) -> None:
    """Refuse a run whose train transform or split differs from the one the store's views were drawn with."""
    ours = transform_fingerprint(transform)
    theirs = stored["transform"]
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differing:
        details = ", ".join(f"{k}: store {theirs.get(k)!r} vs run {ours.get(k)!r}" for k in differing)
        raise ViewsMismatchError(
            f"{store} holds exact views drawn with another train transform ({details}); train with the "
            "store's settings, or rebuild it with `cache build --views` for this student"
        )
    if stored["split"] != split:
        raise ViewsMismatchError(
            f"{store} holds views of split {stored['split']!r}, the run trains on {split!r}"
        )


def student_transform(student: str, image_size: int | None = None) -> TransformConfig:
    """The train transform a student preset trains on (its size and its backbone's normalization)."""
    from pipeline.engine.train import transform_config_for
    from pipeline.student import student_preset

    overrides = {"image_size": image_size} if image_size else {}
    return transform_config_for(student_preset(student, **overrides))
