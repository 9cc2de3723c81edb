"""The training run's configuration, with the paper's defaults (EpmVG / TransVG recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.config_fields import parse_assignments, split_assignment
from pipeline.data.device_batch import AUGMENT_ON
from pipeline.losses import LossConfig
from pipeline.student.config import StudentConfig

DISTILL_MODES = ("none", "cached", "online")
# Exact-view stores: distil toward each replayed view's own embedding, or (today's cache, for the
# comparison) toward the whole image's, or its flip's, whatever view the student sees.
VIEW_TARGETS = ("exact", "whole-image")
FROZEN_DTYPES = ("auto", "bfloat16", "float32")  # --precompute-frozen's storage (engine/frozen_inputs.py)
# RefCOCO+ trains twice as long in the paper (180 epochs, drop at 120); the rest 90 / 60.
PAPER_SCHEDULES = {"refcoco+": (180, 120)}
DEFAULT_SCHEDULE = (90, 60)


def paper_schedule(dataset: str) -> tuple[int, int]:
    """(epochs, lr-drop epoch) the paper uses for a dataset."""
    return PAPER_SCHEDULES.get(dataset, DEFAULT_SCHEDULE)


@dataclass
class TrainConfig:
    dataset: str
    data_root: Path = Path("../shared/data")
    out: Path = Path("runs/default")
    student: str = "transvg-r50"  # a student preset name
    student_overrides: dict[str, Any] = field(default_factory=dict)
    distill: str = "cached"  # none | cached | online
    cache: Path | None = None  # the Phase-1 store (distill=cached)
    teacher_model: str = "ViT-B-16"  # distill=online only
    teacher_pretrained: str = "openai"
    allow_random_teacher: bool = False
    teacher_trainable: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int | None = None  # None: the paper's schedule for the dataset
    lr_drop: int | None = None
    batch_size: int = 64
    lr: float = 1e-4
    lr_pretrained: float = 1e-5
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    clip_grad: float = 0.0  # 0 = off
    train_split: str = "train"
    val_split: str = "val"
    eval_splits: tuple[str, ...] = ()  # evaluated at the end, besides val; () = all but train
    max_samples: int | None = None  # per split, for quick runs
    train_fraction: float = 1.0  # a seeded fraction of the train images (data-size experiments)
    augment: bool = True  # False: train on the eval transform (overfitting checks)
    aug_translate: bool = False  # TransVG's --aug_translate: a random place in the padded square
    augment_on: str = "auto"  # where augmentation's pixels are made: AUGMENT_ON (auto: device on CUDA)
    view_targets: str = "exact"  # exact-view stores only: VIEW_TARGETS
    blank_text: bool = False  # the image-only control: every expression replaced by an empty one
    precompute_frozen: bool = False  # run the frozen branches once (no augmentation, or exact views)
    frozen_cache: Path | None = None  # a folder where precomputed tables are kept for later runs
    frozen_dtype: str = "auto"  # the tables' storage: FROZEN_DTYPES ("auto": bf16 on CUDA with amp)
    frozen_budget_gb: float | None = None  # refuse tables above this; None: half the node's RAM
    workers: int = 4
    persistent_workers: bool = True  # keep loader processes across epochs (False: restart them)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on GPU only
    # The CUDA recipe (`setup.cuda_recipe`; each a no-op on CPU): a channels-last student and inputs,
    # cuDNN's autotuner, TF32 for fp32 matmuls and convolutions, the fused AdamW kernel.
    channels_last: bool = True
    cudnn_benchmark: bool = True
    tf32: bool = True
    fused_optimizer: bool = True
    compile: bool = False
    skip_missing: bool = False
    resume: bool = False
    gallery_size: int = 12
    sync_every: int = 50  # steps between reading the loss on the host (NaN check, progress bar)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.distill not in DISTILL_MODES:
            raise ValueError(f"--distill must be one of {DISTILL_MODES}, got {self.distill!r}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be at least 1, got {self.sync_every}")
        if self.distill == "cached" and self.cache is None:
            raise ValueError("--distill cached needs --cache STORE (build one with `epmvg cache build`)")
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {self.augment_on!r}")
        if self.view_targets not in VIEW_TARGETS:
            raise ValueError(f"--view-targets must be one of {VIEW_TARGETS}, got {self.view_targets!r}")
        if self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"--frozen-dtype must be one of {FROZEN_DTYPES}, got {self.frozen_dtype!r}")
        if self.precompute_frozen and (
            self.distill == "online" or (self.augment and self.distill != "cached")
        ):
            raise ValueError(
                "--precompute-frozen needs a cached or no teacher, and --no-augment unless the cache "
                "holds exact views (`cache build --views K`): augmented pixels change every epoch, and "
                "the online teacher reads pixels"
            )
        default_epochs, default_drop = paper_schedule(self.dataset)
        if self.epochs is None:
            self.epochs = default_epochs
        if self.epochs < 1:  # 0 would "finish" at once with no checkpoint; -1 the same, more confusingly
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr_drop is None:
            self.lr_drop = default_drop if self.epochs == default_epochs else max(1, (2 * self.epochs) // 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["eval_splits"] = list(self.eval_splits)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["loss"] = LossConfig(**values.get("loss", {}))
        for key in ("data_root", "out", "cache", "frozen_cache"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        values["eval_splits"] = tuple(values.get("eval_splits", ()))
        return cls(**values)


# `--set SECTION.FIELD=VALUE`: any field of the run's configs from the command line, checked (name
# and type) before any work starts. "train" is TrainConfig's own fields, "loss" LossConfig's, and
# "student" the StudentConfig fields laid over the preset (what `--student-set` sets).
SETTING_SECTIONS: dict[str, type] = {"train": TrainConfig, "loss": LossConfig, "student": StudentConfig}


def parse_settings(assignments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`["loss.align_weight=0.5", "train.warmup_epochs=1"]` → typed values per section."""
    grouped: dict[str, list[str]] = {section: [] for section in SETTING_SECTIONS}
    for assignment in assignments:
        key, value = split_assignment(assignment)
        section, dot, name = key.partition(".")
        if not dot or section not in SETTING_SECTIONS:
            raise ValueError(
                f"--set {assignment!r}: expected SECTION.FIELD=VALUE with SECTION one of "
                f"{sorted(SETTING_SECTIONS)}"
            )
        grouped[section].append(f"{name}={value}")
    return {
        section: parse_assignments(
            SETTING_SECTIONS[section], items, f"{section} ({SETTING_SECTIONS[section].__name__})"
        )
        for section, items in grouped.items()
    }


def apply_settings(config: TrainConfig, settings: dict[str, dict[str, Any]]) -> TrainConfig:
    """`config` with `parse_settings`' values laid over it (and validated again)."""
    train = dict(settings.get("train", {}))
    loss = replace(config.loss, **settings.get("loss", {}))
    overrides = {**train.pop("student_overrides", config.student_overrides), **settings.get("student", {})}
    return replace(config, **train, loss=loss, student_overrides=overrides)
