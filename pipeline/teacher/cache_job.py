"""Phase 1: run the frozen CLIP teacher once over a dataset and keep [DIE]/[DTE] in a feature store.

data (which images and expressions) + teacher (how to embed them) + storage (where they go).
Rows: one image row per unique image (variant 0 as is, 1 horizontally flipped), one text row per
unique normalized expression and per left/right-swapped variant; index arrays map every record of
every split to its rows (-1 for records that were skipped).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import storage
from pipeline.data import (
    available_splits,
    dataset_fingerprint,
    load_split,
    normalize_expression,
    select_samples,
    swap_left_right,
    validate_samples,
)
from pipeline.targets.schema import IMAGES, INDEX_FIELDS, TEXTS, VIEW_PARAMS, VIEW_ROW, VIEWS
from pipeline.teacher import Teacher, TeacherConfig, build_teacher
from pipeline.teacher.clip import compute_fingerprint
from pipeline.teacher.views import (
    ViewPlan,
    ViewSpec,
    embed_views,
    params_table,
    plan_views,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheJobConfig:
    dataset: str
    data_root: Path
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    out: Path | None = None  # default: cache/<dataset>/<fingerprint prefix>
    dtype: str = "float16"
    batch_size: int = 256  # images per teacher batch
    text_batch_size: int = 4096  # texts per teacher batch (the text tower is small: big batches)
    decode_workers: int | None = None  # image-decoding processes per teacher process; None: usable CPUs
    workers: int = 1  # >1: that many dask workers on a LocalCluster
    scheduler: str | None = None  # address of an existing dask scheduler
    skip_missing: bool = False
    force: bool = False
    image_shard_rows: int = 2048
    text_shard_rows: int = 8192
    progress: bool = True
    views: ViewSpec | None = None  # exact-view mode: K embedded train-augmentation views per record


@dataclass
class CachePlan:
    """What the store will hold, decided from the data alone (no teacher needed)."""

    image_keys: list[str]
    image_paths: list[Path]
    text_keys: list[str]
    indices: dict[str, np.ndarray]
    dataset_fingerprint: dict[str, Any]
    report: dict[str, Any]


def plan_cache(dataset: str, data_root: Path, skip_missing: bool) -> CachePlan:
    """Decide the rows and index arrays of a dataset's store; refuse or count bad samples."""
    splits = available_splits(dataset, data_root)
    if not splits:
        raise FileNotFoundError(f"no split files for {dataset!r} under {data_root}")
    records = {split: load_split(dataset, split, data_root) for split in splits}
    every_sample = [sample for split in splits for sample in records[split]]
    validation = validate_samples(every_sample, check_images=True)
    kept = select_samples(every_sample, validation, skip_missing=skip_missing)

    image_paths = {sample.image_key: sample.image_path for sample in kept}
    image_keys = sorted(image_paths)
    texts = {normalize_expression(sample.text) for sample in kept}
    text_keys = sorted(texts | {swap_left_right(text) for text in texts})
    image_row = {key: row for row, key in enumerate(image_keys)}
    text_row = {key: row for row, key in enumerate(text_keys)}

    indices = {}
    for split in splits:
        size = len(records[split])
        rows = {name: np.full(size, -1, dtype=np.int32) for name in INDEX_FIELDS}
        for sample in (s for s in kept if s.split == split):
            text = normalize_expression(sample.text)
            rows["image_row"][sample.index] = image_row[sample.image_key]
            rows["text_row"][sample.index] = text_row[text]
            rows["text_swapped_row"][sample.index] = text_row[swap_left_right(text)]
        indices.update({f"{split}/{name}": array for name, array in rows.items()})

    report = {
        "splits": {split: len(records[split]) for split in splits},
        "kept": len(kept),
        "skipped": len(every_sample) - len(kept),
        "problems": dict(validation.counts),
        "dropped": dict(validation.dropped),
    }
    return CachePlan(
        image_keys=image_keys,
        image_paths=[image_paths[key] for key in image_keys],
        text_keys=text_keys,
        indices=indices,
        dataset_fingerprint=dataset_fingerprint(dataset, data_root),
        report=report,
    )


class _DecodedImages(Dataset):
    """Decode + preprocess in DataLoader workers, so the teacher never waits on JPEG decoding."""

    def __init__(self, paths: Sequence[Path], teacher: Teacher):
        self.paths = list(paths)
        self.load = teacher.load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(self.paths[index])


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_decode_workers(teacher_processes: int) -> int:
    """Decode processes per teacher: the usable CPUs shared by the teacher processes, one CPU each left
    to the teacher itself."""
    return max(1, usable_cpus() // max(1, teacher_processes) - 1)


@functools.lru_cache(maxsize=1)
def _note_daemonic_decoding() -> None:
    # Once per process: every shard of a dask worker would say it again.
    log.warning(
        "this process is daemonic (a dask worker started by a nanny) and cannot start DataLoader "
        "processes: images are decoded by threads in it instead"
    )


def _threaded_batches(
    dataset: Dataset, batches: Sequence[Sequence[int]], threads: int, pin: bool
) -> Iterator[torch.Tensor]:
    """The loader's batches [B, 3, S, S], decoded by a thread pool one batch ahead (PIL's decoding and
    resampling release the GIL), for processes that may not have child processes."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ahead = None
        for rows in [*batches, None]:
            submitted = None if rows is None else [pool.submit(dataset.__getitem__, row) for row in rows]
            if ahead is not None:
                pixels = torch.stack([future.result() for future in ahead])
                yield pixels.pin_memory() if pin else pixels
            ahead = submitted


def _image_batches(
    dataset: Dataset, batches: list[list[int]], decode_workers: int, pin: bool
) -> Iterator[torch.Tensor]:
    if decode_workers > 0 and multiprocessing.current_process().daemon:
        _note_daemonic_decoding()
        return _threaded_batches(dataset, batches, decode_workers, pin)
    return iter(DataLoader(dataset, batch_sampler=batches, num_workers=decode_workers, pin_memory=pin))


def embed_image_shards(
    teacher: Teacher, shards: Sequence[Sequence[Path]], batch_size: int, decode_workers: int
) -> Iterator[np.ndarray]:
    """[DIE] of each shard's images and of their horizontal flips, shard by shard: [n, 2, d] float32.

    ONE loader serves every shard (its decode processes start once, not per shard); its batches never
    cross a shard boundary, so each shard's rows are complete as soon as its last batch is encoded.
    The flip is made on the teacher's device, and each shard comes back to the host in one copy.
    """
    paths = [path for shard in shards for path in shard]
    batches, per_shard, start = [], [], 0
    for shard in shards:
        rows = list(range(start, start + len(shard)))
        shard_batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        batches += shard_batches
        per_shard.append(len(shard_batches))
        start += len(shard)
    pin = teacher.device.type == "cuda"
    loaded = _image_batches(_DecodedImages(paths, teacher), batches, decode_workers, pin)
    for count in per_shard:
        parts = []
        for _ in range(count):
            pixels = next(loaded).to(teacher.device, non_blocking=True)
            embeddings = teacher.encode_images(torch.cat([pixels, pixels.flip(-1)]))
            parts.append(torch.stack(embeddings.split(len(pixels)), dim=1))
        if not parts:
            yield np.empty((0, 2, teacher.embedding_dim), dtype=np.float32)
            continue
        yield torch.cat(parts).cpu().numpy()


def embed_images(teacher: Teacher, paths: Sequence[Path], batch_size: int, decode_workers: int) -> np.ndarray:
    """[DIE] of each image and of its horizontal flip: [N, 2, d] float32."""
    return next(embed_image_shards(teacher, [paths], batch_size, decode_workers))


def embed_texts(teacher: Teacher, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """[DTE] of each text: [N, d] float32.

    The texts are tokenized once on the host and batched by token length, so each batch's trimmed
    context is short and known without reading anything back from the device; the rows come back to
    the host in one copy.
    """
    if not texts:
        return np.empty((0, teacher.embedding_dim), dtype=np.float32)
    tokens = teacher.tokenize(texts)
    order = torch.argsort((tokens != 0).sum(dim=1), stable=True)
    parts = [teacher.encode_tokens(tokens[rows]) for rows in order.split(batch_size)]
    embeddings = torch.empty(len(texts), teacher.embedding_dim, dtype=torch.float32)
    embeddings[order] = torch.cat(parts).cpu()
    return embeddings.numpy()


@dataclass(frozen=True)
class ShardTask:
    """One shard's worth of work, small enough to send to a dask worker."""

    store: Path
    table: str
    shard: int
    items: tuple[str, ...]  # image paths or texts


def decode_workers_for(config: CacheJobConfig) -> int:
    if config.decode_workers is not None:
        return config.decode_workers
    return default_decode_workers(config.workers if config.workers > 1 and not config.scheduler else 1)


def compute_shard(teacher: Teacher, task: ShardTask, config: CacheJobConfig) -> None:
    """Embed one shard's rows and write them as one whole shard."""
    if task.table == IMAGES:
        values = embed_images(
            teacher, [Path(p) for p in task.items], config.batch_size, decode_workers_for(config)
        )
    elif task.table == VIEWS:
        values = embed_views(
            teacher, task.items, config.views.transform, config.batch_size, decode_workers_for(config)
        )
    elif task.table == VIEW_PARAMS:
        values = params_table(task.items)
    else:
        values = embed_texts(teacher, list(task.items), config.text_batch_size)
    storage.write_shard(task.store, task.table, task.shard, values)


def fingerprint_for(
    teacher: Teacher, plan: CachePlan, dtype: str, device: str | None = None
) -> dict[str, Any]:
    """The store's fingerprint; `device`: where the rows are computed, when not on `teacher`'s device
    (the dask driver's teacher, on the CPU, only plans)."""
    fingerprint = {**teacher.fingerprint(), "dtype": dtype, "dataset": plan.dataset_fingerprint}
    if device is not None:
        fingerprint["compute"] = compute_fingerprint(torch.device(device))
    return fingerprint


def uses_dask(config: CacheJobConfig) -> bool:
    return config.workers > 1 or config.scheduler is not None


def driver_teacher_config(config: CacheJobConfig) -> TeacherConfig:
    """The driver's teacher: on the job's device when it computes the rows itself; on the CPU when dask
    workers do (it only gives the fingerprint and the embedding size; a model on cuda:0 would hold
    memory on a GPU that a worker needs)."""
    return replace(config.teacher, device="cpu") if uses_dask(config) else config.teacher


def default_store_path(dataset: str, fingerprint: dict[str, Any]) -> Path:
    return Path("cache") / dataset / storage.fingerprint_id(fingerprint)[:12]


def build_cache(config: CacheJobConfig) -> Path:
    """Run the cache job; resumes an interrupted store; returns the store's path."""
    plan = plan_cache(config.dataset, config.data_root, config.skip_missing)
    teacher = build_teacher(driver_teacher_config(config))
    fingerprint = fingerprint_for(teacher, plan, config.dtype, device=config.teacher.device)
    view_plan = None
    if config.views is not None:
        # Only in exact-view stores: the fingerprints (and paths) of other stores stay as they were.
        fingerprint["views"] = config.views.fingerprint()
        image_row = plan.indices[f"{config.views.split}/image_row"]
        view_plan = plan_views(config.dataset, config.data_root, image_row, config.views)
    out = config.out or default_store_path(config.dataset, fingerprint)
    tables = {
        IMAGES: storage.TableSpec(
            rows=len(plan.image_keys),
            row_shape=(2, teacher.embedding_dim),
            dtype=config.dtype,
            shard_rows=config.image_shard_rows,
        ),
        TEXTS: storage.TableSpec(
            rows=len(plan.text_keys),
            row_shape=(teacher.embedding_dim,),
            dtype=config.dtype,
            shard_rows=config.text_shard_rows,
        ),
    }
    extra = {
        "random_teacher": teacher.is_random,
        "dataset": config.dataset,
        "report": plan.report,
        "teacher_config": {"model": config.teacher.model, "pretrained": config.teacher.pretrained},
    }
    keys = {IMAGES: plan.image_keys, TEXTS: plan.text_keys}
    indices = dict(plan.indices)
    index_tables = {name: IMAGES if name.endswith("image_row") else TEXTS for name in plan.indices}
    if view_plan is not None:
        tables[VIEWS] = storage.TableSpec(
            rows=len(view_plan.keys),
            row_shape=(config.views.count, teacher.embedding_dim),
            dtype=config.dtype,
            shard_rows=max(1, config.image_shard_rows // config.views.count),
        )
        tables[VIEW_PARAMS] = storage.TableSpec(
            rows=len(view_plan.keys),
            row_shape=view_plan.params.shape[1:],
            dtype="float32",
            shard_rows=tables[VIEWS].shard_rows,
        )
        keys[VIEWS] = keys[VIEW_PARAMS] = view_plan.keys
        indices[f"{config.views.split}/{VIEW_ROW}"] = view_plan.view_row
        index_tables[f"{config.views.split}/{VIEW_ROW}"] = VIEWS
    with storage.StoreWriter.open(
        out,
        fingerprint=fingerprint,
        tables=tables,
        keys=keys,
        indices=indices,
        extra=extra,
        force=config.force,
        index_tables=index_tables,
    ) as writer:
        tasks = list(_pending_tasks(writer, out, plan, view_plan))
        log.info("%s: %d shards to compute", out, len(tasks))
        if uses_dask(config):
            _run_on_dask(tasks, config)
        else:
            _run_here(teacher, tasks, config)
        writer.finalize()
    return out


def _pending_tasks(
    writer: storage.StoreWriter, out: Path, plan: CachePlan, view_plan: ViewPlan | None = None
) -> Iterable[ShardTask]:
    sources = {IMAGES: [str(p) for p in plan.image_paths], TEXTS: plan.text_keys}
    if view_plan is not None:
        sources[VIEWS] = sources[VIEW_PARAMS] = view_plan.items
    for table, items in sources.items():
        for shard in writer.pending_shards(table):
            start, stop = writer.shard_range(table, shard)
            yield ShardTask(out, table, shard, tuple(items[start:stop]))


def compute_shards(
    teacher: Teacher, tasks: Sequence[ShardTask], config: CacheJobConfig
) -> Iterator[ShardTask]:
    """Compute and write `tasks`, yielding each as its shard is written. All image shards go through
    one loader (its decode processes start once, not per shard)."""
    image_tasks = [task for task in tasks if task.table == IMAGES]
    shards = [[Path(p) for p in task.items] for task in image_tasks]
    embedded = embed_image_shards(teacher, shards, config.batch_size, decode_workers_for(config))
    for task, values in zip(image_tasks, embedded, strict=True):
        storage.write_shard(task.store, task.table, task.shard, values)
        yield task
    for task in tasks:
        if task.table != IMAGES:
            compute_shard(teacher, task, config)
            yield task


def _run_here(teacher: Teacher, tasks: list[ShardTask], config: CacheJobConfig) -> None:
    with tqdm(total=sum(len(t.items) for t in tasks), unit="item", disable=not config.progress) as bar:
        for task in compute_shards(teacher, tasks, config):
            bar.set_description(f"{task.table} shard {task.shard}")
            bar.update(len(task.items))


def task_groups(tasks: Sequence[ShardTask], workers: int) -> list[tuple[ShardTask, ...]]:
    """The shards in dask tasks: about two groups per worker of consecutive shards of one table, so
    each worker's image loader serves many shards, and a slow worker still leaves others work."""
    groups: list[tuple[ShardTask, ...]] = []
    for table in dict.fromkeys(task.table for task in tasks):
        of_table = [task for task in tasks if task.table == table]
        size = max(1, -(-len(of_table) // (2 * max(1, workers))))
        groups += [tuple(of_table[i : i + size]) for i in range(0, len(of_table), size)]
    return groups


@functools.lru_cache(maxsize=1)
def _worker_teacher(teacher_config: TeacherConfig) -> Teacher:
    # One teacher per worker process, built on the first shard and reused for the rest.
    return build_teacher(teacher_config)


def gpu_for_workers(addresses: Iterable[str]) -> dict[str, int]:
    """Each dask worker's GPU: the workers of one host, in address order, take its GPUs 0, 1, ...

    Worker names play no part (a LocalCluster's are not promised to be 0..n-1, an external cluster's
    are anything); a host's GPUs are only counted on it (`_pin_gpu` wraps around them).
    """
    by_host: dict[str, list[str]] = {}
    for address in sorted(addresses):
        host = address.split("://")[-1].rsplit(":", 1)[0]
        by_host.setdefault(host, []).append(address)
    return {address: rank for workers in by_host.values() for rank, address in enumerate(workers)}


def capped_workers(requested: int, gpus: int) -> int:
    """At most one dask worker per GPU: two teachers on one GPU only contend for it."""
    if requested > gpus:
        log.warning("--workers %d lowered to %d, one per visible GPU", requested, gpus)
        return gpus
    return requested


def _pin_gpu(assignment: dict[str, int]) -> int:
    """On a dask worker: make its assigned GPU the current device (`torch.cuda.set_device`)."""
    from distributed import get_worker

    device = assignment[get_worker().address] % torch.cuda.device_count()
    torch.cuda.set_device(device)
    return device


def _dask_shards(tasks: tuple[ShardTask, ...], config: CacheJobConfig) -> int:
    """On a dask worker: compute a group of shards; returns how many items they held."""
    teacher_config = config.teacher
    if torch.device(teacher_config.device).type == "cuda":
        # The worker's pinned device (`_pin_gpu`; under dask_cuda, its only visible GPU).
        teacher_config = replace(teacher_config, device=f"cuda:{torch.cuda.current_device()}")
    return sum(len(task.items) for task in compute_shards(_worker_teacher(teacher_config), tasks, config))


def _local_cluster(config: CacheJobConfig, on_gpus: bool) -> tuple[Any, bool]:
    """The LocalCluster to run on, and whether it is dask_cuda's (each worker sees one GPU)."""
    import dask
    from distributed import LocalCluster

    workers = capped_workers(config.workers, max(1, torch.cuda.device_count())) if on_gpus else config.workers
    # Non-daemonic workers may start the DataLoader processes that decode images.
    with dask.config.set({"distributed.worker.daemon": False}):
        if on_gpus:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                pass
            else:
                # One worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES): the optional
                # `gpu` extra.
                return LocalCUDACluster(n_workers=workers, threads_per_worker=1, dashboard_address=None), True
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return cluster, False


def _run_on_dask(tasks: list[ShardTask], config: CacheJobConfig) -> None:
    from distributed import Client, as_completed

    on_gpus = torch.device(config.teacher.device).type == "cuda"
    cluster, one_gpu_each = (None, False) if config.scheduler else _local_cluster(config, on_gpus)
    client = Client(config.scheduler or cluster)
    try:
        if on_gpus:
            client.wait_for_workers(1)
            assignment = gpu_for_workers(client.scheduler_info()["workers"])
            if one_gpu_each:
                assignment = dict.fromkeys(assignment, 0)  # each worker sees its own GPU as cuda:0
            log.info("dask workers on GPUs: %s", client.run(_pin_gpu, assignment))
        groups = task_groups(tasks, len(client.scheduler_info()["workers"]))
        futures = client.map(_dask_shards, groups, config=config, pure=False)
        with tqdm(total=sum(len(t.items) for t in tasks), unit="item", disable=not config.progress) as bar:
            for future in as_completed(futures):
                bar.update(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
