"""The student's frozen branches, computed once per run (`TrainConfig.precompute_frozen`).

When the backbone and the text encoder are both frozen (`TransVG.precomputable`) and the inputs are
not augmented, their outputs are a fixed function of each image and of each text. A table holds them:
one backbone pass per image and one text-encoder pass per distinct text, for the whole run. Training
and evaluation steps then run only the trainable rest of the student (input projection, visual
encoder, text projection, fusion, head), which is what makes a CPU demo train thousands of steps in
minutes. The table gives exactly what the full forward pass computes on the eval transform's pixels
(a test checks this), so checkpoints, `eval` and `predict` are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pipeline.data import EvalTransform
from pipeline.data.sample import Sample
from pipeline.data.torch_dataset import open_rgb

PIXEL_INPUTS = ("pixels", "pixel_mask", "token_ids", "token_mask")
FEATURE_INPUTS = ("backbone_features", "feature_pad", "text_states", "token_mask")


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """The student's keyword inputs from a batch of either kind: pixels and tokens, or table rows."""
    keys = FEATURE_INPUTS if "backbone_features" in batch else PIXEL_INPUTS
    return {key: batch[key].to(device, non_blocking=True) for key in keys}


@dataclass
class FrozenInputTable:
    """Backbone maps per image, text-encoder states per distinct text, and each record's rows."""

    backbone_features: Tensor  # [N_img, C, h, w]
    feature_pad: Tensor  # [N_img, h, w] bool, True = padding
    text_states: Tensor  # [N_txt, L, H]
    token_mask: Tensor  # [N_txt, L] bool, True = real token
    image_row: Tensor  # [N] long, per record
    text_row: Tensor  # [N] long
    box: Tensor  # [N, 4] normalized cxcywh, as the eval transform gives it
    index: Tensor  # [N] long, the record's position in its split file
    image_size: Tensor  # [N, 2] long, original (width, height)

    def __len__(self) -> int:
        return len(self.index)

    def collate(self, positions: Sequence[int]) -> dict[str, Any]:
        """A training/eval batch for dataset positions (epoch·n + i, as `EpochSampler` yields them)."""
        rows = torch.as_tensor(positions, dtype=torch.long) % len(self)
        images, texts = self.image_row[rows], self.text_row[rows]
        token_mask = self.token_mask[texts]
        length = max(1, int(token_mask.sum(dim=1).max()))  # drop the padding no text in the batch uses
        return {
            "backbone_features": self.backbone_features[images],
            "feature_pad": self.feature_pad[images],
            "text_states": self.text_states[texts, :length],
            "token_mask": token_mask[:, :length],
            "box": self.box[rows],
            "index": self.index[rows],
            "image_size": self.image_size[rows],
            "flipped": torch.zeros(len(rows), dtype=torch.bool),
            "text_swapped": torch.zeros(len(rows), dtype=torch.bool),
        }


class _Positions(Dataset[int]):
    """Positions only: the table's `collate` gathers the rows."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> int:
        return position


class _FirstRecordOfEachImage(Dataset[dict[str, Any]]):
    def __init__(self, samples: Sequence[Sample], transform: EvalTransform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        image = open_rgb(sample)
        out = self.transform(image, sample.box_xyxy, sample.text)
        return {"pixels": out.pixels, "pixel_mask": out.pixel_mask, "image_size": image.size}


def _collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixels": torch.stack([item["pixels"] for item in items]),
        "pixel_mask": torch.stack([item["pixel_mask"] for item in items]),
        "image_size": [item["image_size"] for item in items],
    }


@torch.no_grad()
def build_frozen_table(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    transform: EvalTransform,
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
) -> FrozenInputTable:
    """Run the frozen backbone once per image and the frozen text encoder once per distinct text."""
    if not model.precomputable:
        raise ValueError(
            "precompute_frozen needs a student whose backbone and text encoder are both frozen "
            "(--student-set frozen_backbone_stages=<all> --student-set freeze_text_encoder=true)"
        )
    was_training = model.training
    model.eval()
    first_of_image: dict[str, Sample] = {}
    for sample in samples:
        first_of_image.setdefault(sample.image_key, sample)
    image_keys = list(first_of_image)
    loader = DataLoader(
        _FirstRecordOfEachImage(list(first_of_image.values()), transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate_images,
    )
    features, pads, sizes = [], [], []
    for batch in loader:
        feature, pad = model.backbone_features(batch["pixels"].to(device), batch["pixel_mask"].to(device))
        features.append(feature.float().cpu())
        pads.append(pad.cpu())
        sizes.extend(batch["image_size"])
    texts = list(dict.fromkeys(sample.text for sample in samples))
    states, masks = [], []
    for start in range(0, len(texts), batch_size):
        token_ids, token_mask = tokenize(texts[start : start + batch_size])
        states.append(model.text_states(token_ids.to(device), token_mask.to(device)).float().cpu())
        masks.append(token_mask.cpu())
    model.train(was_training)
    image_of = {key: row for row, key in enumerate(image_keys)}
    text_of = {text: row for row, text in enumerate(texts)}
    size_of = dict(zip(image_keys, sizes, strict=True))
    return FrozenInputTable(
        backbone_features=torch.cat(features),
        feature_pad=torch.cat(pads),
        text_states=torch.cat(states),
        token_mask=torch.cat(masks),
        image_row=torch.tensor([image_of[s.image_key] for s in samples], dtype=torch.long),
        text_row=torch.tensor([text_of[s.text] for s in samples], dtype=torch.long),
        box=torch.stack([transform.box(s.box_xyxy, size_of[s.image_key]) for s in samples]),
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        image_size=torch.tensor([size_of[s.image_key] for s in samples], dtype=torch.long),
    )


def table_key(model: torch.nn.Module, settings: dict[str, Any], samples: Sequence[Sample]) -> str:
    """What a table is a function of, hashed: the weights of the frozen branches, the settings that
    shape their outputs (the student's and the transform's configs), and each record with its image
    file's size and modification time."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for branch in model.input_branches:
        for name, tensor in branch.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    seen: set[Path] = set()
    for sample in samples:
        record = [sample.image_key, sample.text, list(sample.box_xyxy), sample.index]
        if sample.image_path not in seen:
            seen.add(sample.image_path)
            stat = os.stat(sample.image_path)
            record += [stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps(record).encode())
    return digest.hexdigest()[:24]


def cached_table(folder: Path | None, name: str, build: Callable[[], FrozenInputTable]) -> FrozenInputTable:
    """`folder/name.pt` when an earlier run saved it, else `build()` (saved there for the next run).

    Runs that differ only in what they train (loss, seed, distillation) share one table: the
    experiment's runs and the demo's control compute the frozen branches once. The name carries
    `table_key`, so a table is never reused for other weights, settings or records.
    """
    if folder is None:
        return build()
    path = Path(folder) / f"{name}.pt"
    if path.is_file():
        return FrozenInputTable(**torch.load(path, weights_only=True))
    table = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # DDP ranks may save at once; each renames its own
    torch.save({field.name: getattr(table, field.name) for field in fields(table)}, partial)
    os.replace(partial, path)
    return table


def table_loader(
    table: FrozenInputTable, batch_size: int, sampler: Any, drop_last: bool = False
) -> DataLoader:
    """Batches of table rows in the sampler's order; in-process (the rows are already in RAM)."""
    return DataLoader(
        _Positions(len(table)),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=table.collate,
        num_workers=0,
        drop_last=drop_last,
    )
