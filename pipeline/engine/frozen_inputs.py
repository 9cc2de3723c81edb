"""The student's frozen branches, computed once per run (`TrainConfig.precompute_frozen`).

When the backbone and the text encoder are both frozen (`TransVG.precomputable`) and the inputs are
not augmented, their outputs are a fixed function of each image and of each text. A table holds them:
one backbone pass per image and one text-encoder pass per distinct text, for the whole run. Training
and evaluation steps then run only the trainable rest of the student (input projection, visual
encoder, text projection, fusion, head), which is what makes a CPU demo train thousands of steps in
minutes. The table gives exactly what the full forward pass computes on the eval transform's pixels
(a test checks this), so checkpoints, `eval` and `predict` are unchanged.

Augmented training can be precomputed too when its augmentations are a finite, stored set: an
exact-view store (pipeline/targets/replay.py) gives each record K views, and `build_view_table` runs the
backbone once per (record, view). Position epoch·n + i then reads view (epoch mod K) of record i, the
view the store's teacher embedded: the same pixels the full forward pass would see in that epoch.

At real scale (RefCOCO at 640 px: ~17k images × 2048 × 20² maps) a table is tens of GB, so:
- `estimate_tables` sizes every table of the run before anything is built (the backbone's and the text
  encoder's output shapes from one dry pass on a blank input, times the distinct images, records × K
  views, and distinct texts), logs one line, and `FrozenTablesTooLarge` refuses a run above the memory
  budget (`TrainConfig.frozen_budget_gb`; default half the node's RAM);
- tables are preallocated and filled in place (no concatenation holding the maps twice), built by each
  node's local rank 0 only, saved once (`--frozen-cache`, or the run's `frozen/` folder), and every
  rank, the builder too, memory-maps the file (`torch.load(mmap=True)`): one copy per node, in the page
  cache;
- the maps and text states are stored in `TrainConfig.frozen_dtype`: "auto" is bfloat16 on CUDA under
  bf16 autocast, where the backbone's output is bf16 anyway and storing it loses nothing, and float32
  elsewhere (the CPU's fp32 training), where the table is exactly the full forward pass. A bfloat16
  table on fp32 training agrees only to bf16 rounding (~4e-3 relative); `model_inputs` widens the rows
  to float32 on the device, so the head sees the dtype it would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pipeline.data import EvalTransform, TransformConfig
from pipeline.data.device_batch import to_device_batch
from pipeline.data.sample import Sample
from pipeline.data.text import swap_left_right
from pipeline.data.torch_dataset import collate_pixels, open_image_tensor
from pipeline.engine.distributed import DistEnv
from pipeline.errors import ExpectedError

log = logging.getLogger(__name__)

Table = TypeVar("Table", "FrozenInputTable", "ImageTable")
PIXEL_INPUTS = ("pixels", "pixel_mask", "token_ids", "token_mask")
FEATURE_INPUTS = ("backbone_features", "feature_pad", "text_states", "token_mask")
STORED_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Per record: image_row, text_row, index (int64), box (4 float32), image_size (2 int64); view tables
# add flipped, text_swapped (bool) and view (int64).
RECORD_BYTES = 8 + 8 + 8 + 4 * 4 + 2 * 8
VIEW_RECORD_BYTES = RECORD_BYTES + 1 + 1 + 8


class FrozenTablesTooLarge(ExpectedError):
    """The run's precomputed tables would not fit the memory budget (`--frozen-budget-gb`)."""


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """The student's keyword inputs from a batch of either kind: pixels and tokens, or table rows.

    Table rows stored in bfloat16 cross to the device as such and are widened there to float32: the
    head's weights are float32 (autocast narrows them again where it runs in bf16, exactly)."""
    keys = FEATURE_INPUTS if "backbone_features" in batch else PIXEL_INPUTS
    inputs = {key: batch[key].to(device, non_blocking=True) for key in keys}
    for key in ("backbone_features", "text_states"):
        if key in inputs:
            inputs[key] = inputs[key].float()
    return inputs


def stored_dtype(name: str, device: torch.device, amp: bool) -> torch.dtype:
    """`TrainConfig.frozen_dtype` → the tables' dtype: "auto" is bfloat16 where the backbone runs under
    bf16 autocast (CUDA with amp), else float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and amp else torch.float32
    return STORED_DTYPES[name]


def memory_budget(budget_gb: float | None) -> int:
    """`TrainConfig.frozen_budget_gb` in bytes; None: half the node's RAM (the table lives in the page
    cache, once per node, beside the loaders, the model and the OS)."""
    if budget_gb is not None:
        return int(budget_gb * 2**30)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@dataclass(frozen=True)
class TableSize:
    """A table's shape before it is built: rows of each part and one row's shape."""

    images: int  # backbone-map rows: distinct images, or records × K views
    texts: int  # text-state rows: distinct texts (an upper bound for view tables: + their swaps)
    records: int  # per-record rows (records × K for view tables)
    feature_shape: tuple[int, int, int]  # (C, h, w)
    text_shape: tuple[int, int]  # (L, H)
    dtype: torch.dtype
    views: bool = False

    @property
    def bytes(self) -> int:
        channels, height, width = self.feature_shape
        length, hidden = self.text_shape
        itemsize = self.dtype.itemsize
        per_record = VIEW_RECORD_BYTES if self.views else RECORD_BYTES
        return (
            self.images * (channels * height * width * itemsize + height * width)  # maps + padding masks
            + self.texts * length * (hidden * itemsize + 1)  # states + token masks
            + self.records * per_record
        )


@torch.no_grad()
def output_shapes(
    model: torch.nn.Module,
    image_size: int,
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
    device: torch.device,
) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((C, h, w), (L, H)): the frozen backbone's map for an `image_size` square input and the text
    encoder's states, from one pass over a blank image [1, 3, S, S] and an empty text."""
    was_training = model.training
    model.eval()
    pixels = torch.zeros(1, 3, image_size, image_size, device=device)
    feature, _ = model.backbone_features(
        pixels, torch.zeros(1, image_size, image_size, dtype=torch.bool, device=device)
    )
    token_ids, token_mask = tokenize([""])
    states = model.text_states(token_ids.to(device), token_mask.to(device))
    model.train(was_training)
    return tuple(feature.shape[1:]), tuple(states.shape[1:])


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
    # Exact-view tables only (N = K·records, row v·records + i = view v of record i); else None.
    flipped: Tensor | None = None  # [N] bool
    text_swapped: Tensor | None = None  # [N] bool
    view: Tensor | None = None  # [N] long

    def __len__(self) -> int:
        """Records, not rows: an epoch visits each record once (in its view of that epoch)."""
        views = 1 if self.view is None else int(self.view.max()) + 1
        return len(self.index) // views

    def collate(self, positions: Sequence[int]) -> dict[str, Any]:
        """A training/eval batch for dataset positions (epoch·n + i, as `EpochSampler` yields them).

        In a view table, (epoch·n + i) mod K·n = (epoch mod K)·n + i: record i's view of that epoch."""
        rows = torch.as_tensor(positions, dtype=torch.long) % len(self.index)
        images, texts = self.image_row[rows], self.text_row[rows]
        token_mask = self.token_mask[texts]
        length = max(1, int(token_mask.sum(dim=1).max()))  # drop the padding no text in the batch uses
        unaugmented = torch.zeros(len(rows), dtype=torch.bool)
        batch = {
            "backbone_features": self.backbone_features[images],
            "feature_pad": self.feature_pad[images],
            "text_states": self.text_states[texts, :length],
            "token_mask": token_mask[:, :length],
            "box": self.box[rows],
            "index": self.index[rows],
            "image_size": self.image_size[rows],
            "flipped": unaugmented if self.flipped is None else self.flipped[rows],
            "text_swapped": unaugmented if self.text_swapped is None else self.text_swapped[rows],
        }
        if self.view is not None:
            batch["view"] = self.view[rows]
        return batch


@dataclass
class ImageTable:
    """The frozen backbone's map of each image: the part of a table that runs differing only in their
    texts share (the demo's image-only control reads the student's)."""

    image_keys: list[str]
    backbone_features: Tensor  # [N_img, C, h, w]
    feature_pad: Tensor  # [N_img, h, w] bool
    image_size: Tensor  # [N_img, 2] long, original (width, height)


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
        image = open_image_tensor(sample)
        out = self.transform(image, sample.box_xyxy, sample.text)
        size = (image.shape[-1], image.shape[-2])
        return {"pixels": out.pixels, "offsets": out.offsets, "size": out.size, "image_size": size}


def _collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_pixels(items) | {"image_size": [item["image_size"] for item in items]}


def _own_generator() -> torch.Generator:
    """A loader draws its workers' base seed from the global RNG unless given a generator: building a
    table would then shift the run's dropout, and a run reading a saved table would train differently."""
    return torch.Generator()


def _check_precomputable(model: torch.nn.Module) -> None:
    if not model.precomputable:
        raise ValueError(
            "precompute_frozen needs a student whose backbone and text encoder are both frozen "
            "(--student-set frozen_backbone_stages=<all> --student-set freeze_text_encoder=true)"
        )


def _loader(
    dataset: Dataset, collate: Callable, batch_size: int, workers: int, sampler: Any = None
) -> DataLoader:
    """Each item once, in order; `collate` makes a few stacked tensors of a batch (a loader worker
    hands each tensor over as a file descriptor)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=_own_generator(),
    )


def _run_backbone(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    config: TransformConfig,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """The frozen backbone over every batch: (maps [N, C, h, w] in `dtype`, their padding masks [N, h, w],
    each batch's other fields). The outputs are allocated once, at the first batch, and filled in
    place: concatenating batches would hold every map twice at the end."""
    features = pads = torch.empty(0)
    batches: list[dict[str, Any]] = []
    start = 0
    with _channels_last(model.backbone):
        for batch in loader:
            batch = to_device_batch(batch, config, device)
            pixels = batch["pixels"].contiguous(memory_format=torch.channels_last)
            feature, pad = model.backbone_features(pixels, batch["pixel_mask"])
            if start == 0:
                total = len(loader.sampler)
                features = torch.empty((total, *feature.shape[1:]), dtype=dtype)
                pads = torch.empty((total, *pad.shape[1:]), dtype=torch.bool)
            features[start : start + len(feature)] = feature
            pads[start : start + len(pad)] = pad
            start += len(feature)
            # Copied out of a worker's shared memory: each kept shared tensor holds a descriptor open.
            batches.append(
                {
                    key: value.clone() if isinstance(value, Tensor) else value
                    for key, value in batch.items()
                    if key not in ("pixels", "pixel_mask", "pixel_size", "pixel_offset", "augment_params")
                }
            )
    return features[:start], pads[:start], batches


@contextlib.contextmanager
def _channels_last(module: torch.nn.Module) -> Iterator[None]:
    """The module's convolutions in NHWC for the block: on a CPU, EfficientNet-Lite0 at 256 px runs
    about 1.6x faster so (measured: 81 against 126 ms an image, one thread); the weights come back to
    the default layout after, and the maps agree with NCHW's to ~3e-6 relative."""
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def _text_table(
    model: torch.nn.Module,
    texts: Sequence[str],
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
    device: torch.device,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """The frozen text encoder's states for each distinct text: (states [N_txt, L, H] in `dtype`, token
    masks [N_txt, L], row of a text), allocated once and filled in place."""
    distinct = list(dict.fromkeys(texts))
    states = masks = torch.empty(0)
    for start in range(0, len(distinct), batch_size):
        token_ids, token_mask = tokenize(distinct[start : start + batch_size])
        state = model.text_states(token_ids.to(device), token_mask.to(device))
        if start == 0:
            states = torch.empty((len(distinct), *state.shape[1:]), dtype=dtype)
            masks = torch.empty((len(distinct), *token_mask.shape[1:]), dtype=torch.bool)
        states[start : start + len(state)] = state
        masks[start : start + len(state)] = token_mask
    return states, masks, {text: row for row, text in enumerate(distinct)}


@torch.no_grad()
def build_image_table(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    transform: EvalTransform,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ImageTable:
    """Run the frozen backbone once per image (of the records, in order of first appearance); maps
    stored in `dtype`."""
    _check_precomputable(model)
    was_training = model.training
    model.eval()
    first_of_image: dict[str, Sample] = {}
    for sample in samples:
        first_of_image.setdefault(sample.image_key, sample)
    first_records = _FirstRecordOfEachImage(list(first_of_image.values()), transform)
    loader = _loader(first_records, _collate_images, batch_size, workers)
    features, pads, batches = _run_backbone(model, loader, device, transform.config, dtype)
    model.train(was_training)
    sizes = [size for batch in batches for size in batch["image_size"]]
    return ImageTable(list(first_of_image), features, pads, torch.tensor(sizes, dtype=torch.long))


@torch.no_grad()
def build_frozen_table(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    transform: EvalTransform,
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    images: ImageTable | None = None,
    dtype: torch.dtype = torch.float32,
) -> FrozenInputTable:
    """The frozen backbone once per image (or `images`, built before for these records' images) and
    the frozen text encoder once per distinct text; maps and states stored in `dtype`."""
    _check_precomputable(model)
    if images is None:
        images = build_image_table(model, samples, transform, device, batch_size, workers, dtype)
    was_training = model.training
    model.eval()
    texts = [s.text for s in samples]
    states, masks, text_of = _text_table(model, texts, tokenize, device, batch_size, dtype)
    model.train(was_training)
    image_of = {key: row for row, key in enumerate(images.image_keys)}
    image_row = torch.tensor([image_of[s.image_key] for s in samples], dtype=torch.long)
    image_size = images.image_size[image_row]
    return FrozenInputTable(
        backbone_features=images.backbone_features,
        feature_pad=images.feature_pad,
        text_states=states,
        token_mask=masks,
        image_row=image_row,
        text_row=torch.tensor([text_of[s.text] for s in samples], dtype=torch.long),
        box=torch.stack(
            [
                transform.box(s.box_xyxy, tuple(size.tolist()))
                for s, size in zip(samples, image_size, strict=True)
            ]
        ),
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        image_size=image_size,
    )


def _collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_pixels(items) | {
        "box": torch.stack([item["box"] for item in items]),
        "text": [item["text"] for item in items],
        **{
            key: torch.tensor([item[key] for item in items])
            for key in ("index", "image_size", "flipped", "text_swapped", "view")
        },
    }


@torch.no_grad()
def build_view_table(
    model: torch.nn.Module,
    dataset: Dataset[dict[str, Any]],
    views: int,
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dtype: torch.dtype = torch.float32,
) -> FrozenInputTable:
    """Exact-view mode: the frozen backbone once per (record, stored view), the text encoder once per
    distinct (possibly left/right-swapped) text.

    `dataset` is the run's `GroundingDataset` replaying the store's views: its position v·n + i is
    view v of record i, so reading positions 0 .. K·n - 1 renders every stored view once."""
    _check_precomputable(model)
    was_training = model.training
    model.eval()
    loader = _loader(dataset, _collate_views, batch_size, workers, sampler=range(views * len(dataset)))
    features, pads, batches = _run_backbone(model, loader, device, dataset.transform.config, dtype)
    texts = [text for batch in batches for text in batch["text"]]
    states, masks, text_of = _text_table(model, texts, tokenize, device, batch_size, dtype)
    model.train(was_training)
    column = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0] if key != "text"}
    return FrozenInputTable(
        backbone_features=features,
        feature_pad=pads,
        text_states=states,
        token_mask=masks,
        image_row=torch.arange(len(texts), dtype=torch.long),
        text_row=torch.tensor([text_of[text] for text in texts], dtype=torch.long),
        box=column["box"],
        index=column["index"].long(),
        image_size=column["image_size"].long(),
        flipped=column["flipped"].bool(),
        text_swapped=column["text_swapped"].bool(),
        view=column["view"].long(),
    )


def table_key(
    model: torch.nn.Module, settings: dict[str, Any], samples: Sequence[Sample], images_only: bool = False
) -> str:
    """What a table is a function of, hashed: the weights of the frozen branches, the settings that
    shape their outputs (the student's and the transform's configs), and each record with its image
    file's size and modification time. `images_only`: what an `ImageTable` is a function of (the
    backbone, the settings, each image in order)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for branch in (model.backbone,) if images_only else model.input_branches:
        for name, tensor in branch.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    seen: set[Path] = set()
    for sample in samples:
        record = (
            [sample.image_key]
            if images_only
            else [sample.image_key, sample.text, sample.box_xyxy and list(sample.box_xyxy), sample.index]
        )
        if images_only and sample.image_path in seen:
            continue
        if sample.image_path not in seen:
            seen.add(sample.image_path)
            stat = os.stat(sample.image_path)
            record += [stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps(record).encode())
    return digest.hexdigest()[:24]


def cached_table(
    folder: Path | None, name: str, build: Callable[[], Table], kind: type[Table] = FrozenInputTable
) -> Table:
    """`folder/name.pt` when an earlier run saved it, else `build()` (saved there for the next run);
    a saved table comes back memory-mapped (the builder's own copy is dropped for the file's).

    Runs that differ only in what they train (loss, seed, distillation) share one table, and runs
    that differ only in their texts share its `ImageTable`: the experiment's runs and the demo's
    control compute the backbone once. The name carries `table_key`, so a table is never reused for
    other weights, settings or records.
    """
    if folder is None:
        return build()
    path = Path(folder) / f"{name}.pt"
    if not path.is_file():
        table = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")  # nodes sharing a folder: each renames its own
        torch.save({field.name: getattr(table, field.name) for field in fields(table)}, partial)
        del table
        os.replace(partial, path)
    return load_table(path, kind)


def load_table(path: Path, kind: type[Table] = FrozenInputTable) -> Table:
    """A saved table, memory-mapped: its pages are the file's, shared by every process of the node."""
    return kind(**torch.load(path, weights_only=True, mmap=True))


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


class FrozenTables:
    """A run's tables, one per split, built on first use (`precompute_frozen`), or read from
    `folder` (`frozen_cache`, or the run's own) when an earlier run with the same frozen branches and
    records saved them. The train split of a run that replays stored views gets a view table.

    The first use sizes every split's table (`estimate_tables`) and refuses a run above `budget`
    bytes. Under torchrun a table is built by each node's local rank 0 only, saved in `folder`, and
    memory-mapped by every rank after a barrier (`folder` None: built in this process, in RAM)."""

    def __init__(
        self,
        model: torch.nn.Module,
        samples: dict[str, list[Sample]],
        train_set: Any,
        train_split: str,
        transform: Any,
        settings: dict[str, Any],
        train_settings: dict[str, Any],
        tokenize: Callable,
        device: torch.device,
        batch_size: int,
        workers: int,
        folder: Path | None,
        env: DistEnv | None = None,
        dtype: torch.dtype = torch.float32,
        budget: int | None = None,
    ) -> None:
        """`transform`: the student's eval transform config; `settings`: what every table depends
        on besides the weights (the student's and the transform's configs); `train_settings`: what the
        train split's table depends on besides them (the target source's views)."""
        self.model, self.samples, self.train_set, self.train_split = model, samples, train_set, train_split
        self.transform, self.settings, self.train_settings = transform, settings, train_settings
        self.tokenize, self.device, self.batch_size, self.workers = tokenize, device, batch_size, workers
        self.folder, self.env, self.dtype, self.budget = folder, env or DistEnv(), dtype, budget
        self.tables: dict[str, FrozenInputTable] = {}
        self.sized = False

    def estimate(self) -> dict[str, TableSize]:
        """Every split's table size, from the records alone and one dry pass (`output_shapes`)."""
        feature_shape, text_shape = output_shapes(
            self.model, self.transform.image_size, self.tokenize, self.device
        )
        sizes = {}
        for split, samples in self.samples.items():
            views = self.train_set.views if split == self.train_split else None
            texts = {s.text for s in samples}
            if views is not None:  # each view may swap "left"/"right": at most both variants
                count = views.count * len(self.train_set)
                texts |= {swap_left_right(text) for text in texts}
                sizes[split] = TableSize(
                    count, len(texts), count, feature_shape, text_shape, self.dtype, True
                )
            else:
                images = len({s.image_key for s in samples})
                sizes[split] = TableSize(
                    images, len(texts), len(samples), feature_shape, text_shape, self.dtype
                )
        return sizes

    def check_size(self) -> None:
        """One line with the estimate; `FrozenTablesTooLarge` above the budget, before any build."""
        sizes = self.estimate()
        total = sum(size.bytes for size in sizes.values())
        parts = ", ".join(f"{split} {size.bytes / 2**30:.2f}" for split, size in sizes.items())
        if self.env.is_main:
            log.info(
                "precomputed frozen tables: %.2f GiB in %s (%s GiB), one copy per node",
                total / 2**30,
                str(self.dtype).removeprefix("torch."),
                parts,
            )
        if self.budget is not None and total > self.budget:
            raise FrozenTablesTooLarge(
                f"--precompute-frozen: the tables need about {total / 2**30:.1f} GiB ({parts} GiB), over the "
                f"{self.budget / 2**30:.1f} GiB budget; raise --frozen-budget-gb, store --frozen-dtype "
                "bfloat16, or train without --precompute-frozen"
            )

    def __getitem__(self, split: str) -> FrozenInputTable:
        if not self.sized:
            self.check_size()
            self.sized = True
        if split not in self.tables:
            samples = self.samples[split]
            views = self.train_set.views if split == self.train_split else None
            settings = {**self.settings, "dtype": str(self.dtype)}
            if views is not None:
                settings.update(self.train_settings)

                def build() -> FrozenInputTable:
                    return build_view_table(
                        self.model,
                        self.train_set,
                        views.count,
                        self.tokenize,
                        self.device,
                        self.batch_size,
                        self.workers,
                        self.dtype,
                    )
            else:

                def build() -> FrozenInputTable:
                    transform = EvalTransform(self.transform)
                    images_key = table_key(self.model, settings, samples, images_only=True)
                    images = cached_table(
                        self.folder,
                        f"{split}-images-{images_key}",
                        lambda: build_image_table(
                            self.model,
                            samples,
                            transform,
                            self.device,
                            self.batch_size,
                            self.workers,
                            self.dtype,
                        ),
                        ImageTable,
                    )
                    return build_frozen_table(
                        self.model,
                        samples,
                        transform,
                        self.tokenize,
                        self.device,
                        self.batch_size,
                        images=images,
                        dtype=self.dtype,
                    )

            self.tables[split] = self._build_once_per_node(split, settings, samples, build)
        return self.tables[split]

    def _build_once_per_node(
        self,
        split: str,
        settings: dict[str, Any],
        samples: list[Sample],
        build: Callable[[], FrozenInputTable],
    ) -> FrozenInputTable:
        """Local rank 0 builds (or finds) the table's file; the node's other ranks wait, then map it."""
        if self.folder is None:
            return build()
        name = f"{split}-{table_key(self.model, settings, samples)}"

        def build_here() -> FrozenInputTable:
            log.info("frozen table %s: built by rank %d (local rank 0)", name, self.env.rank)
            return build()

        if self.env.local_rank == 0:
            table = cached_table(self.folder, name, build_here)
        if self.env.enabled:
            dist.barrier()
        if self.env.local_rank != 0:
            table = load_table(Path(self.folder) / f"{name}.pt")
        return table
