"""The one record type every reader produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One referring expression and the box it refers to.

    `index` is the record's position in its split file, so a sample can be matched to rows of the
    teacher cache even after samples with missing images were dropped.
    """

    image_path: Path
    image_key: str  # path relative to the dataset's image directory; the cache's image key
    box_xyxy: tuple[float, float, float, float]  # pixels, x1 y1 x2 y2
    text: str
    split: str
    sample_id: str  # the source's own id (COCO ann id, ReferIt "<img>_<n>", ...), else the index
    index: int
