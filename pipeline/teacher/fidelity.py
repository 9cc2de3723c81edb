"""How well a cached [DIE] stands in for the teacher's embedding of the pixels the student sees.

The cache embeds each image once as is and once flipped; the student trains on crops, scale jitter,
colour jitter and flips. For sampled training records and one kind of augmentation at a time this
compares cos(cached target, online target), where the online target is the teacher run on exactly
the augmented pixels (`Teacher.preprocess_view`, equal to the online trainer's path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data import (
    TrainTransform,
    TransformConfig,
    dataset_fingerprint,
    has_spatial_word,
    load_split,
    select_samples,
    validate_samples,
)
from pipeline.data.sample import Sample
from pipeline.data.torch_dataset import open_image_tensor
from pipeline.teacher import Teacher
from pipeline.teacher.cache_job import embed_images

# Each kind switches on one augmentation of the train transform (at its training strength) and
# fixes the longest side at the student's size; "all" is the train transform as the trainer runs it.
KINDS = ("none", "scale", "crop", "flip", "jitter", "all")


def kind_config(base: TransformConfig, kind: str) -> TransformConfig:
    """The train-transform config that applies only `kind` of `base`'s augmentations."""
    if kind == "all":
        return base
    off = dataclasses.replace(base, num_scales=1, crop_prob=0.0, color_jitter=0.0, flip_prob=0.0)
    switch_on = {
        "none": {},
        "scale": {"num_scales": base.num_scales},
        "crop": {"crop_prob": 1.0},
        "flip": {"flip_prob": 1.0},
        "jitter": {"color_jitter": base.color_jitter},
    }
    if kind not in switch_on:
        raise ValueError(f"unknown augmentation kind {kind!r}; kinds: {', '.join(KINDS)}")
    return dataclasses.replace(off, **switch_on[kind])


@dataclass(frozen=True)
class FidelityConfig:
    dataset: str
    data_root: Path
    transform: TransformConfig
    split: str = "train"
    samples: int = 200  # images (one record each)
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    store: Path | None = None  # cached targets from this store; None: computed by the cache's code

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"augmentation kinds must be among {', '.join(KINDS)}; got {unknown or 'none'}")


def sample_records(config: FidelityConfig) -> list[Sample]:
    """One record per image, `samples` images drawn with `seed`; records with a missing image dropped."""
    records = load_split(config.dataset, config.split, config.data_root)
    usable = select_samples(records, validate_samples(records, check_images=True), skip_missing=True)
    first_per_image: dict[str, Sample] = {}
    for sample in usable:
        first_per_image.setdefault(sample.image_key, sample)
    keys = sorted(first_per_image)
    rng = np.random.default_rng(config.seed)
    chosen = rng.choice(len(keys), size=min(config.samples, len(keys)), replace=False)
    return [first_per_image[keys[i]] for i in sorted(chosen)]


def cached_targets(teacher: Teacher, records: list[Sample], config: FidelityConfig) -> torch.Tensor:
    """[N, 2, d] cached [DIE] of each record's image (as is, flipped), read from the store or computed
    by the cache job's own `embed_images` (the store holds these, rounded to its dtype)."""
    if config.store is None:
        paths = [sample.image_path for sample in records]
        return torch.from_numpy(embed_images(teacher, paths, batch_size=32, decode_workers=0))
    from pipeline.targets import TargetsMismatchError, load_targets

    targets = load_targets(
        config.store, [config.split], dataset_fingerprint(config.dataset, config.data_root)
    )
    stored = {k: v for k, v in targets.fingerprint.items() if k not in ("dtype", "dataset", "views")}
    if stored != teacher.fingerprint():
        raise TargetsMismatchError(
            f"{config.store} was made by another teacher or preprocessing than the one given: "
            "pass the store's --teacher and --pretrained"
        )
    rows = targets.rows[config.split]["image_row"][torch.tensor([s.index for s in records])]
    return targets.image_embeddings[rows].float()


def online_targets(
    teacher: Teacher, records: list[Sample], transform: TransformConfig, seed: int, kind_number: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's [DIE] of each record's augmented view, and whether the view is flipped."""
    augment = TrainTransform(transform)
    embeddings, flipped = [], []
    for sample in records:
        rng = np.random.default_rng((seed, kind_number, sample.index))
        view = augment(open_image_tensor(sample), sample.box_xyxy, sample.text, rng)
        pixels = teacher.preprocess_view(view)[None]
        embeddings.append(teacher.encode_images(pixels)[0])
        flipped.append(view.flipped)
    return torch.stack(embeddings), torch.tensor(flipped)


def _summary(cos: torch.Tensor) -> dict[str, float | int]:
    values = cos.double().numpy()
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "p5": float(np.percentile(values, 5)),
        "min": float(values.min()),
    }


def measure_fidelity(teacher: Teacher, config: FidelityConfig) -> dict[str, Any]:
    """Per kind of augmentation: median, 5th percentile and minimum of cos(cached, online) over records."""
    records = sample_records(config)
    if not records:
        raise ValueError(f"no usable {config.split} records in {config.dataset}")
    cached = cached_targets(teacher, records, config)
    results = {}
    for number, kind in enumerate(config.kinds):
        chosen = list(range(len(records)))
        if kind == "crop":
            # The train transform never crops a record with a spatial word: only the others can show it.
            chosen = [i for i, sample in enumerate(records) if not has_spatial_word(sample.text)]
            if not chosen:
                continue
        online, flipped = online_targets(
            teacher, [records[i] for i in chosen], kind_config(config.transform, kind), config.seed, number
        )
        target = cached[torch.tensor(chosen), flipped.long()]
        cos = torch.nn.functional.cosine_similarity(online.double(), target.double(), dim=-1)
        results[kind] = _summary(cos)
    return {
        "dataset": config.dataset,
        "split": config.split,
        "images": len(records),
        "seed": config.seed,
        "store": str(config.store) if config.store else None,
        "teacher": teacher.fingerprint(),
        "transform": dataclasses.asdict(config.transform),
        "kinds": results,
    }


def format_fidelity(report: dict[str, Any]) -> str:
    """A Markdown table of the report's kinds."""
    lines = ["| augmentation | records | median cos | 5th percentile | min |", "|---|---:|---:|---:|---:|"]
    for kind, row in report["kinds"].items():
        lines.append(f"| {kind} | {row['n']} | {row['median']:.4f} | {row['p5']:.4f} | {row['min']:.4f} |")
    return "\n".join(lines)
