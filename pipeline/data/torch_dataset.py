"""A `torch.utils.data.Dataset` over samples, and the collate function that tokenizes a batch.

Boxes are optional (image-text pairs for weak supervision): an item of a box-less sample has
`"box"` and `"box_xyxy"` None. A batch always has `"has_box"` (bool [B]); where no item has a box,
`"box"` and `"box_xyxy"` are None; in a mixed batch they are tensors with zeros in the rows whose
`has_box` is False, rows that a box loss must leave out (mask or select them by `has_box`). A batch
whose items all have boxes holds the same tensors as before boxes became optional, plus `has_box`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.errors import MissingImagesError
from pipeline.data.images import read_rgb
from pipeline.data.sample import Sample
from pipeline.data.transforms import Transform, TransformedSample

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class ViewSource(Protocol):
    """Stored augmentation choices: the view a record gets in an epoch, and that view's number."""

    def __call__(self, image: Image.Image, sample: Sample, epoch: int) -> tuple[TransformedSample, int]: ...


def open_rgb(sample: Sample) -> Image.Image:
    """The sample's image, decoded, in RGB."""
    try:
        return read_rgb(sample.image_path)
    except FileNotFoundError:
        raise MissingImagesError(
            f"{sample.image_path}: image of {sample.split}[{sample.index}] is missing; "
            "validate samples first (validate_samples / select_samples with --skip-missing)"
        ) from None


class GroundingDataset(Dataset[dict[str, Any]]):
    """Samples through a transform, with randomness seeded by (seed, epoch, sample).

    Position p is sample p % n drawn in epoch p // n. The epoch travels in the position, not in
    dataset state, because DataLoader workers that persist across epochs hold a copy of the dataset
    made when they started; a sampler that yields epoch·n + i (`EpochSampler`) is all it takes.
    """

    def __init__(self, samples: Sequence[Sample], transform: Transform, seed: int = 0) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        # Exact-view mode (pipeline/teacher/views.py): the store's augmentation choices replace `transform`.
        self.views: ViewSource | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if position < 0:
            raise IndexError(f"position {position}: positions count up from 0 (epoch·n + sample)")
        epoch, index = divmod(position, len(self.samples))
        sample = self.samples[index]
        image = open_rgb(sample)
        view = None
        if self.views is not None:
            out, view = self.views(image, sample, epoch)
        else:
            rng = np.random.default_rng((self.seed, epoch, index))
            out = self.transform(image, sample.box_xyxy, sample.text, rng)
        box_xyxy = None if sample.box_xyxy is None else torch.tensor(sample.box_xyxy, dtype=torch.float32)
        item = {
            "pixels": out.pixels,
            "pixel_mask": out.pixel_mask,
            "box": out.box_cxcywh,
            "text": out.text,
            "flipped": out.flipped,
            "text_swapped": out.text_swapped,
            "index": sample.index,
            "box_xyxy": box_xyxy,
            "image_size": image.size,
        }
        if view is not None:
            item["view"] = view
        return item


def stack_optional(values: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The tensors stacked, zeros standing in for the Nones (see the module docstring); None when all
    are None."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if len(present) == len(values):
        return torch.stack(list(present))
    zeros = torch.zeros_like(present[0])
    return torch.stack([zeros if value is None else value for value in values])


def collate_grounding(batch: Sequence[dict[str, Any]], tokenize: Tokenize) -> dict[str, Any]:
    """Stack a list of `GroundingDataset` items and tokenize their texts.

    `tokenize(texts)` must return (token_ids LongTensor [B, L], token_mask BoolTensor [B, L]); the
    mask's meaning is the tokenizer's to define and is passed through unchanged. `"has_box"` says
    which items have a box; `"box"`/`"box_xyxy"` are None when none has (see the module docstring).
    """
    texts = [item["text"] for item in batch]
    token_ids, token_mask = tokenize(texts)
    if token_ids.shape[0] != len(batch) or token_mask.shape != token_ids.shape:
        raise ValueError(
            f"tokenize returned ids {tuple(token_ids.shape)} and mask {tuple(token_mask.shape)} "
            f"for a batch of {len(batch)} texts"
        )
    collated = {
        "pixels": torch.stack([item["pixels"] for item in batch]),
        "pixel_mask": torch.stack([item["pixel_mask"] for item in batch]),
        "box": stack_optional([item["box"] for item in batch]),
        "box_xyxy": stack_optional([item["box_xyxy"] for item in batch]),
        "has_box": torch.tensor([item["box"] is not None for item in batch], dtype=torch.bool),
        "image_size": torch.tensor([item["image_size"] for item in batch], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
        "flipped": torch.tensor([item["flipped"] for item in batch], dtype=torch.bool),
        "text_swapped": torch.tensor([item["text_swapped"] for item in batch], dtype=torch.bool),
        "text": texts,
        "token_ids": token_ids,
        "token_mask": token_mask,
    }
    if "view" in batch[0]:  # exact-view mode: which stored view each sample is
        collated["view"] = torch.tensor([item["view"] for item in batch], dtype=torch.long)
    return collated


class GroundingCollate:
    """`collate_grounding` bound to a tokenizer, as a picklable object for DataLoader workers.

    `tokenize` must be picklable too (a module-level function or an object with `__call__`).
    """

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_grounding(batch, self.tokenize)
