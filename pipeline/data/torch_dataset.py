"""A `torch.utils.data.Dataset` over samples, and the collate function that tokenizes a batch.

Boxes are optional (image-text pairs for weak supervision): an item of a box-less sample has
`"box"` and `"box_xyxy"` None. A batch always has `"has_box"` (bool [B]); where no item has a box,
`"box"` and `"box_xyxy"` are None; in a mixed batch they are tensors with zeros in the rows whose
`has_box` is False, rows that a box loss must leave out (mask or select them by `has_box`). A batch
whose items all have boxes holds the same tensors as before boxes became optional, plus `has_box`.

Pixels leave the workers as uint8: `"pixels"` uint8 [B, 3, S, S] (content at `"pixel_offset"`, of
`"pixel_size"`, zeros elsewhere), or with `augment_on="device"` the files' bytes (`"encoded"`) and each
item's choices (`"augment_params"`). `pipeline/data/device_batch.py`'s `to_device_batch` makes the
student's float pixels and mask on the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.decode import EncodedImage, decode_images, read_encoded
from pipeline.data.device_batch import pad_uint8
from pipeline.data.errors import MissingImagesError
from pipeline.data.images import read_rgb
from pipeline.data.sample import Sample
from pipeline.data.text import swap_left_right
from pipeline.data.transforms import AugmentParams, Transform, apply_augment_params, augment_geometry

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class ViewSource(Protocol):
    """Stored augmentation choices: the choices a record gets in an epoch, and that view's number."""

    def choices(self, sample: Sample, epoch: int) -> tuple[AugmentParams, int]: ...


def _missing(sample: Sample) -> MissingImagesError:
    return MissingImagesError(
        f"{sample.image_path}: image of {sample.split}[{sample.index}] is missing; "
        "validate samples first (validate_samples / select_samples with --skip-missing)"
    )


def open_rgb(sample: Sample) -> Image.Image:
    """The sample's image, decoded, in RGB."""
    try:
        return read_rgb(sample.image_path)
    except FileNotFoundError:
        raise _missing(sample) from None


def open_encoded(sample: Sample) -> EncodedImage:
    """The sample's image file's bytes, its header checked (`read_encoded`)."""
    try:
        return read_encoded(sample.image_path)
    except FileNotFoundError:
        raise _missing(sample) from None


def open_image_tensor(sample: Sample) -> torch.Tensor:
    """The sample's image decoded on the CPU: uint8 [3, H, W] (`read_rgb`'s checks)."""
    return decode_images([open_encoded(sample)], [sample.image_path], torch.device("cpu"))[0]


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
        # "device": ship the file's bytes and the choices; the trainer decodes and applies them on its
        # device (`pipeline/data/device_batch.py`). "workers": decode and apply here, ship uint8.
        self.augment_on = "workers"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if position < 0:
            raise IndexError(f"position {position}: positions count up from 0 (epoch·n + sample)")
        epoch, index = divmod(position, len(self.samples))
        sample = self.samples[index]
        encoded = open_encoded(sample)  # the header's size: the draws need no pixels
        view = None
        if self.views is not None:
            params, view = self.views.choices(sample, epoch)
        else:
            rng = np.random.default_rng((self.seed, epoch, index))
            params = self.transform.draw(encoded.size, sample.box_xyxy, sample.text, rng)
            # As a row (jitter factors in millionths): what "device" mode ships and a view store keeps, so
            # every path applies the very same choices and gives the same pixels.
            params = AugmentParams.from_row(params.to_row())
        config = self.transform.config
        box_xyxy = None if sample.box_xyxy is None else torch.tensor(sample.box_xyxy, dtype=torch.float32)
        item: dict[str, Any] = {"index": sample.index, "box_xyxy": box_xyxy, "image_size": encoded.size}
        if self.augment_on == "device":
            geometry = augment_geometry(encoded.size, sample.box_xyxy, params, config)
            text = swap_left_right(sample.text) if params.flipped else sample.text
            width, height = geometry.final_size
            item |= {
                "encoded": (encoded.data, encoded.size, encoded.format),
                "image_path": str(sample.image_path),
                "augment_params": params.to_row(),
                "source_box": None if sample.box_xyxy is None else list(sample.box_xyxy),
                "content_size": (height, width),
                "offsets": geometry.offsets,
                "box": geometry.box_cxcywh,
                "text": text,
                "flipped": params.flipped,
                "text_swapped": text != sample.text,
            }
        else:
            image = decode_images([encoded], [sample.image_path], torch.device("cpu"))[0]
            out = apply_augment_params(image, sample.box_xyxy, sample.text, params, config)
            item |= {
                "pixels": out.pixels,
                "offsets": out.offsets,
                "box": out.box_cxcywh,
                "text": out.text,
                "flipped": out.flipped,
                "text_swapped": out.text_swapped,
            }
        item["size"] = config.image_size
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


def collate_pixels(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The pixel fields of a batch of `GroundingDataset` items, as uint8 or bytes (module docstring)."""
    if "encoded" in batch[0]:  # "device" augmentation: bytes and choices, pixels made on the device
        return {
            "encoded": [item["encoded"] for item in batch],
            "image_path": [item["image_path"] for item in batch],
            "augment_params": torch.tensor([item["augment_params"] for item in batch], dtype=torch.long),
            "source_box": [item["source_box"] for item in batch],
            "pixel_size": torch.tensor([item["content_size"] for item in batch], dtype=torch.long),
            "pixel_offset": torch.tensor([item["offsets"] for item in batch], dtype=torch.long),
        }
    square, sizes, offsets = pad_uint8(
        [item["pixels"] for item in batch], [item["offsets"] for item in batch], batch[0]["size"]
    )
    return {"pixels": square, "pixel_size": sizes, "pixel_offset": offsets}


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
    collated = collate_pixels(batch) | {
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
