"""The dataset registry and the one entry point that loads a split from whichever source exists.

A DATA_ROOT holds `splits/<split_dir>/<split_dir>_<split>.pth` (ReSC/TransVG split files), the image
directories, and optionally `refer/<name>/refs(<splitBy>).p` + `instances.json` (refer toolkit).
A dataset may also be given as the path of a `.jsonl` file (see `readers.read_jsonl`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.data.errors import SplitNotFoundError, UnknownDatasetError
from pipeline.data.readers import BoxFormat, jsonl_splits, read_jsonl, read_refer_split, read_resc_split
from pipeline.data.sample import Sample

COCO_TRAIN_IMAGES = "images/mscoco/train2014"
DEFAULT_MAX_QUERY_LEN = 20  # TransVG's default, for datasets outside the registry


@dataclass(frozen=True)
class DatasetSpec:
    """Where a registered dataset lives under a DATA_ROOT and how its records are laid out."""

    name: str
    split_dir: str
    image_dir: str  # relative to DATA_ROOT
    splits: tuple[str, ...]
    max_query_len: int  # student text length (tokens, incl. [CLS]/[SEP]) used by TransVG for it
    box_format: BoxFormat = "xyxy"  # of the boxes in the split files
    refer_name: str | None = None  # refer toolkit folder, e.g. "refcoco"
    refer_split_by: str | None = None  # refer toolkit splitBy, e.g. "unc"

    def split_file(self, data_root: Path, split: str) -> Path:
        """The ReSC/TransVG split file for `split`."""
        return Path(data_root) / "splits" / self.split_dir / f"{self.split_dir}_{split}.pth"

    def image_root(self, data_root: Path) -> Path:
        """The directory image keys are relative to."""
        return Path(data_root) / self.image_dir

    def refer_files(self, data_root: Path) -> tuple[Path, Path] | None:
        """(refs pickle, COCO instances.json) of the refer toolkit layout, if this dataset has one."""
        if self.refer_name is None or self.refer_split_by is None:
            return None
        folder = Path(data_root) / "refer" / self.refer_name
        return folder / f"refs({self.refer_split_by}).p", folder / "instances.json"

    def has_refer_source(self, data_root: Path) -> bool:
        """True when both refer toolkit files exist."""
        files = self.refer_files(data_root)
        return files is not None and all(path.is_file() for path in files)


def _coco_spec(
    name: str, split_dir: str, splits: tuple[str, ...], max_len: int, refer: tuple[str, str]
) -> DatasetSpec:
    """A RefCOCO-family dataset: COCO train2014 images, xywh boxes, refer toolkit fallback."""
    return DatasetSpec(
        name=name,
        split_dir=split_dir,
        image_dir=COCO_TRAIN_IMAGES,
        splits=splits,
        max_query_len=max_len,
        box_format="xywh",
        refer_name=refer[0],
        refer_split_by=refer[1],
    )


_REGISTRY: MappingProxyType[str, DatasetSpec] = MappingProxyType(
    {
        "refcoco": _coco_spec("refcoco", "unc", ("train", "val", "testA", "testB"), 20, ("refcoco", "unc")),
        "refcoco+": _coco_spec(
            "refcoco+", "unc+", ("train", "val", "testA", "testB"), 20, ("refcoco+", "unc")
        ),
        "refcocog": _coco_spec("refcocog", "gref_umd", ("train", "val", "test"), 40, ("refcocog", "umd")),
        "refcocog-google": _coco_spec(
            "refcocog-google", "gref", ("train", "val"), 40, ("refcocog", "google")
        ),
        "referit": DatasetSpec("referit", "referit", "images/referit", ("train", "val", "test"), 20),
        "flickr": DatasetSpec("flickr", "flickr", "images/flickr30k", ("train", "val", "test"), 20),
        "shapes": DatasetSpec("shapes", "shapes", "images/shapes", ("train", "val", "test"), 20),
    }
)
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def is_jsonl_dataset(dataset: str | Path) -> bool:
    """True when `dataset` names a custom JSON-lines file rather than a registered dataset."""
    return str(dataset).endswith(".jsonl")


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset `name`; the error lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} (or a path to a .jsonl file)"
        ) from None


def max_query_len(dataset: str | Path) -> int:
    """The student's text length (tokens) for `dataset`: the registry's, or TransVG's default for JSONL."""
    if is_jsonl_dataset(dataset):
        return DEFAULT_MAX_QUERY_LEN
    return dataset_spec(str(dataset)).max_query_len


def _require_data_root(data_root: Path | str | None, dataset: str) -> Path:
    if data_root is None:
        raise SplitNotFoundError(f"dataset {dataset!r} needs a data root (--data-root)")
    root = Path(data_root)
    if not root.is_dir():
        raise SplitNotFoundError(f"data root {root} is not a directory")
    return root


def available_splits(dataset: str | Path, data_root: Path | str | None = None) -> list[str]:
    """The splits of `dataset` whose source exists under `data_root` (registry order).

    With the refer toolkit files present every registered split counts as available (which of them
    the refs file really holds is only known after loading it).
    """
    if is_jsonl_dataset(dataset):
        return jsonl_splits(Path(dataset))
    spec = dataset_spec(str(dataset))
    root = _require_data_root(data_root, spec.name)
    if spec.has_refer_source(root):
        return list(spec.splits)
    return [split for split in spec.splits if spec.split_file(root, split).is_file()]


def dataset_files(dataset: str | Path, data_root: Path | str | None = None) -> list[Path]:
    """The source files `load_split` reads for the available splits of `dataset` (for fingerprints)."""
    if is_jsonl_dataset(dataset):
        return [Path(dataset)]
    spec = dataset_spec(str(dataset))
    root = _require_data_root(data_root, spec.name)
    files: list[Path] = []
    for split in spec.splits:
        split_file = spec.split_file(root, split)
        if split_file.is_file():
            files.append(split_file)
        elif spec.has_refer_source(root):
            files.extend(spec.refer_files(root) or ())
    return list(dict.fromkeys(files))  # the refer files serve every split: list them once


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dataset_fingerprint(dataset: str | Path, data_root: Path | str | None = None) -> dict[str, Any]:
    """What a teacher cache was built from: the dataset's name and the hash of every source file."""
    files = dataset_files(dataset, data_root)
    return {"name": str(dataset), "files": {path.name: file_sha256(path) for path in files}}


def load_split(dataset: str | Path, split: str, data_root: Path | str | None = None) -> list[Sample]:
    """All samples of one split, from the first source that exists.

    Sources, in order: the ReSC split file, the refer toolkit files, or (when `dataset` is a path
    ending in `.jsonl`) that file, whose image paths are relative to its folder (`data_root` unused).
    Images are not opened; see `validate.validate_samples`.
    """
    if is_jsonl_dataset(dataset):
        return read_jsonl(Path(dataset), split)
    spec = dataset_spec(str(dataset))
    if split not in spec.splits:
        raise SplitNotFoundError(
            f"dataset {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}"
        )
    root = _require_data_root(data_root, spec.name)
    split_file = spec.split_file(root, split)
    if split_file.is_file():
        return read_resc_split(split_file, split, spec.image_root(root), spec.box_format)
    refer_files = spec.refer_files(root)
    if refer_files is not None and spec.has_refer_source(root):
        refs_path, instances_path = refer_files
        return read_refer_split(refs_path, instances_path, split, spec.image_root(root))
    looked_at = [str(split_file), *(str(path) for path in refer_files or ())]
    raise SplitNotFoundError(f"no source for {spec.name} {split}: looked for {' and '.join(looked_at)}")
