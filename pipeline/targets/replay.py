"""Exact-view stores, the trainer's side: replay the views the teacher embedded (`cache build --views K`,
drawn and embedded by `pipeline/teacher/views.py`), after checking they were drawn with the run's transform.

Record i in epoch e gets view e mod K; its [DIE] target is that view's own embedding.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.data import TransformConfig
from pipeline.data.sample import Sample
from pipeline.data.transforms import AugmentParams, TransformedSample, apply_augment_params
from pipeline.targets.store import TargetsMismatchError


class ViewsMismatchError(TargetsMismatchError):
    """The store's views were drawn for another train transform (or split) than the run's."""


def transform_fingerprint(transform: TransformConfig) -> dict[str, Any]:
    """The transform config as the store's manifest keeps it (JSON: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(transform)))


def render_view(
    image: torch.Tensor | Image.Image,
    box_xyxy: Sequence[float] | None,
    text: str,
    row: Sequence[int],
    transform: TransformConfig,
) -> TransformedSample:
    """One stored view: the train transform's apply step, the student's loader's own, with its choices
    read from `row`; `image` uint8 [3, H, W] (any device) or PIL."""
    return apply_augment_params(image, box_xyxy, text, AugmentParams.from_row(row), transform)


class ViewReplay:
    """What `GroundingDataset` calls in exact-view mode: record `index` at `epoch` gets view epoch mod K."""

    def __init__(self, params: np.ndarray, view_row: np.ndarray, transform: TransformConfig) -> None:
        self.params = params
        self.view_row = view_row
        self.transform = transform

    @property
    def count(self) -> int:
        return int(self.params.shape[1])

    def choices(self, sample: Sample, epoch: int) -> tuple[AugmentParams, int]:
        """The stored choices of record `sample` in `epoch`, and the view's number."""
        row = int(self.view_row[sample.index])
        if row < 0:
            raise ViewsMismatchError(
                f"the store has no views for {sample.split} record {sample.index} (it skipped it)"
            )
        view = epoch % self.count
        return AugmentParams.from_row(self.params[row, view]), view

    def __call__(
        self, image: torch.Tensor | Image.Image, sample: Sample, epoch: int
    ) -> tuple[TransformedSample, int]:
        params, view = self.choices(sample, epoch)
        return render_view(image, sample.box_xyxy, sample.text, params.to_row(), self.transform), view


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
