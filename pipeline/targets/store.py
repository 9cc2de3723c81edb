"""A Phase-1 store's teacher targets, on the training device, and the lookup of a batch's rows.

No per-sample Zarr reads happen during training: the image and text tables are small next to the
images (RefCOCOg with ViT-B-16: ~25k images x 2 x 512 fp16 = 50 MB); a cached source moves them to
its device once and each batch is a gather there. The exact-view table is larger (records x K views);
its zstd shards cannot be memory-mapped, so it is decompressed once into a `.npy` file in the system
temp directory, keyed by the table's shard checksums, and memory-mapped: every rank on a machine maps
the same file and the OS keeps ONE host copy (a GPU copy per rank is made from it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import storage
from pipeline.targets.schema import IMAGES, INDEX_FIELDS, TEXTS, VIEW_PARAMS, VIEW_ROW, VIEWS


class TargetsMismatchError(ValueError):
    """The store was made for other data than the run trains on."""


@dataclass
class TeacherTargets:
    """[DIE] / [DTE] tables and, per split, each record's rows in them."""

    image_embeddings: torch.Tensor  # [N_img, 2, d]: variant 0 as is, 1 flipped
    text_embeddings: torch.Tensor  # [N_txt, d]
    rows: dict[str, dict[str, torch.Tensor]]  # split -> image_row / text_row / text_swapped_row (/ view_row)
    fingerprint: dict[str, Any]
    # Exact-view stores (`cache build --views K`, pipeline/targets/replay.py): [DIE] of K views per record.
    view_embeddings: torch.Tensor | None = None  # [N_rec, K, d]
    view_params: np.ndarray | None = None  # [N_rec, K, 13] int64: each view's augmentation choices

    def lookup(
        self,
        split: str,
        index: torch.Tensor,
        flipped: torch.Tensor,
        text_swapped: torch.Tensor,
        view: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The variant matching each augmented sample: flipped image (or the replayed `view`'s own
        embedding), left/right-swapped text: ([B, d], [B, d]) float32 on the tables' device.

        `index`, `flipped`, `text_swapped`, `view` [B] are the loader's host tensors: the rows are
        found and checked on the host (no device sync), then sent (non-blocking) to gather on the
        tables' device.
        """
        rows = self.rows[split]
        index, flipped, text_swapped = index.cpu(), flipped.cpu(), text_swapped.cpu()
        if view is not None:
            if self.view_embeddings is None or VIEW_ROW not in rows:
                raise TargetsMismatchError(
                    f"the batch replays stored views but the store has none for {split}"
                )
            image_row = rows[VIEW_ROW][index]
        else:
            image_row = rows["image_row"][index]
        text_row = torch.where(text_swapped, rows["text_swapped_row"][index], rows["text_row"][index])
        if bool((image_row < 0).any() or (text_row < 0).any()):
            raise TargetsMismatchError(
                f"the store has no rows for some {split} samples (it skipped them); "
                "train with --skip-missing too, or rebuild the cache"
            )
        device = self.text_embeddings.device
        image_row, text_row = image_row.to(device, non_blocking=True), text_row.to(device, non_blocking=True)
        if view is not None:
            image = self.view_embeddings[image_row, view.to(device, non_blocking=True).long()]
        else:
            image = self.image_embeddings[image_row, flipped.to(device, non_blocking=True).long()]
        text = self.text_embeddings[text_row]
        return image.float(), text.float()

    def to(self, device: torch.device) -> TeacherTargets:
        """The tables on `device` (once per process: a copy per GPU rank); the row arrays stay on the
        host, where the loader's index tensors are. On the CPU the tables are not copied (the view
        table stays memory-mapped)."""
        return replace(
            self,
            image_embeddings=self.image_embeddings.to(device),
            text_embeddings=self.text_embeddings.to(device),
            view_embeddings=None if self.view_embeddings is None else self.view_embeddings.to(device),
        )


class BadTargetsError(ValueError):
    """A store whose rows cannot be distillation targets: not finite, or all zeros (never written)."""


def check_rows(path: Path, table: str, values: np.ndarray, keys: list[str]) -> None:
    """Refuse a table with a non-finite or all-zero row (per variant), naming the first one.

    A complete store should hold neither (writes refuse NaN, finalize refuses unwritten shards), but a
    copied, edited or half-synced store can; one such row would turn the cosine loss into NaN, or
    silently into a pull towards nothing.
    """
    embeddings = values.reshape(len(values), -1, values.shape[-1])  # [rows, variants, d]
    not_finite = ~np.isfinite(embeddings).all(axis=-1).all(axis=-1)
    all_zero = ~(embeddings != 0).any(axis=-1).all(axis=-1)
    bad = np.flatnonzero(not_finite | all_zero)
    if len(bad):
        row = int(bad[0])
        what = "is not finite" if not_finite[row] else "is all zeros"
        key = keys[row] if row < len(keys) else "?"
        raise BadTargetsError(
            f"{path}: {table} row {row} ({key!r}) {what} ({len(bad)} bad row(s) in {table}); "
            f"check it with `epmvg cache verify {path}` and rebuild it with `epmvg cache build --force`"
        )


def open_store(path: Path) -> storage.FeatureStore:
    """Open a complete store read-only, warning when its teacher had random weights."""
    store = storage.FeatureStore.open(path)
    if store.extra.get("random_teacher"):
        warnings.warn(
            f"{path}: made by a RANDOM-weight teacher (--pretrained none); its targets carry no knowledge",
            stacklevel=2,
        )
    return store


def mapped_table(store: storage.FeatureStore, table: str) -> np.ndarray:
    """A whole table `[rows, *row_shape]`, memory-mapped from a decompressed `.npy` copy shared by every
    process on the machine (made once, atomically; keyed by the table's shard checksums, so a rebuilt
    store never maps a stale copy). Copy-on-write: writable for torch, never written back."""
    checksums = json.dumps(store.manifest.shard_checksums[table]).encode()
    key = hashlib.sha256(checksums).hexdigest()[:24]
    target = Path(tempfile.gettempdir()) / f"epmvg-{table}-{key}.npy"
    if not target.is_file():
        spec = store.table_spec(table)
        partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.npy")
        out = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.dtype(spec.dtype), shape=(spec.rows, *spec.row_shape)
        )
        for shard in range(spec.num_shards):
            start, stop = spec.shard_range(shard)
            out[start:stop] = store.read_shard(table, shard)
        out.flush()
        del out
        os.replace(partial, target)  # other ranks see the whole file or none
    return np.load(target, mmap_mode="c")


def load_targets(path: Path, splits: list[str], dataset_fingerprint: dict[str, Any]) -> TeacherTargets:
    """Load the tables and the named splits' index arrays; check the store matches the data."""
    store = open_store(path)
    stored = store.fingerprint.get("dataset")
    if stored != dataset_fingerprint:
        raise TargetsMismatchError(
            f"{path} was built for dataset {stored and stored.get('name')!r} with other split files than "
            f"this run's ({dataset_fingerprint['name']!r}): rebuild it with `epmvg cache build`"
        )
    rows = {}
    for split in splits:
        names = [f"{split}/{field}" for field in INDEX_FIELDS]
        missing = [name for name in names if name not in store.index_names()]
        if missing:
            raise TargetsMismatchError(f"{path} has no index for split {split!r}")
        if f"{split}/{VIEW_ROW}" in store.index_names():
            names.append(f"{split}/{VIEW_ROW}")
        rows[split] = {
            name.split("/", 1)[1]: torch.from_numpy(store.load_index(name).astype(np.int64)) for name in names
        }
    tables = {table: store.load_table(table) for table in (IMAGES, TEXTS)}
    for table, values in tables.items():
        check_rows(path, table, values, store.table_keys(table))
    view_embeddings = view_params = None
    if VIEWS in store.tables():
        view_embeddings = torch.from_numpy(mapped_table(store, VIEWS))
        view_params = np.rint(store.load_table(VIEW_PARAMS)).astype(np.int64)  # exact integers
    return TeacherTargets(
        image_embeddings=torch.from_numpy(tables[IMAGES]),
        text_embeddings=torch.from_numpy(tables[TEXTS]),
        rows=rows,
        fingerprint=store.fingerprint,
        view_embeddings=view_embeddings,
        view_params=view_params,
    )
