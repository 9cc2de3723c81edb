"""The one record type every reader produces."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One referring expression and the box it refers to, or an image-text pair with no box.

    `index` is the record's position in its split file, so a sample can be matched to rows of the
    teacher cache even after samples with missing images were dropped. `box_xyxy` is None for a
    box-less pair (weak supervision: a JSONL line without "box", a split record whose box is None);
    what a training mode needs is checked by `pipeline.data.supervision.check_supervision`.
    """

    image_path: Path
    image_key: str  # path relative to the dataset's image directory; the cache's image key
    box_xyxy: tuple[float, float, float, float] | None  # pixels, x1 y1 x2 y2; None: no box
    text: str
    split: str
    sample_id: str  # the source's own id (COCO ann id, ReferIt "<img>_<n>", ...), else the index
    index: int

    @property
    def has_box(self) -> bool:
        """True when the record carries a box."""
        return self.box_xyxy is not None


def image_subset(samples: list[Sample], fraction: float, seed: int = 0) -> list[Sample]:
    """The samples of a seeded random `fraction` of the images (all of each kept image's expressions).

    Subsetting by image, not by expression, keeps a smaller training set a set of whole scenes. The
    subset depends on `seed` and the image keys only, so every run and every rank draws the same one.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the training fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(samples)
    keys = sorted({sample.image_key for sample in samples})
    random.Random(seed).shuffle(keys)
    kept = set(keys[: max(1, math.ceil(fraction * len(keys)))])
    return [sample for sample in samples if sample.image_key in kept]
