"""Phase 2: the training loop. The trainer owns the loop and no more: set-up is `setup.py`, the
targets a `TargetSource` (`pipeline/targets/sources.py`), the loss the student's `Criterion`
(`pipeline/criterion.py`), checkpoints `run_checkpoint.py`, the written record `reports.py`, the
precomputed frozen branches `frozen_inputs.FrozenTables`.

With `distill="cached"` the teacher module is never imported: targets are gathered from in-RAM
tables by (record index, flipped, text swapped).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.criterion import LossTargets
from pipeline.data import EvalTransform, GroundingDataset, TrainTransform, check_supervision
from pipeline.data.device_batch import resolve_augment_on, to_device_batch
from pipeline.engine.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import (
    EpochSampler,
    EvalShardSampler,
    all_reduce_mean,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from pipeline.engine.evaluate import Prediction, eval_loader, predict_split, summarize
from pipeline.engine.frozen_inputs import (
    FrozenTables,
    memory_budget,
    model_inputs,
    stored_dtype,
    table_loader,
)
from pipeline.engine.reports import (
    METRICS,
    append_jsonl,
    open_live_signals,
    start_metrics,
    write_run_report,
    write_scalars,
)
from pipeline.engine.run_checkpoint import RunParts, RunState, checkpoint_payload, restore, resume_point
from pipeline.engine.setup import (
    autocast_factory,
    build_optimizer,
    cuda_recipe,
    eval_splits,
    lr_factor,
    per_rank_batch,
    prepare_split,
    student_config_for,
    train_device,
    train_loader,
)
from pipeline.errors import ExpectedError
from pipeline.student import build_student, make_collate, student_architecture, transform_config_for
from pipeline.targets.source import SourceContext
from pipeline.targets.sources import build_target_source


class TrainingDiverged(ExpectedError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """One run: data, student, optimizer, target source; `fit()` trains, evaluates and writes artefacts."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.env = init_distributed(config.device)
        self.batch_size = per_rank_batch(config.batch_size, self.env.world_size)  # before any work
        self.device = train_device(config.device, self.env)
        if self.device.type == "cuda":  # `--device cuda:N` alone: N's stream and allocator by default
            torch.cuda.set_device(self.device)
        cuda_recipe(self.device, config)
        torch.manual_seed(config.seed)  # the same on every rank: the frozen tables and DDP's start agree
        self.out = Path(config.out)
        self.resume_payload, self.resume_changes = resume_point(config)  # before any work or write
        self.student_config = student_config_for(config)
        self.transform_config = transform_config_for(self.student_config)
        self.samples = {config.train_split: prepare_split(config, config.train_split)}
        for split in self.eval_splits():
            self.samples[split] = prepare_split(config, split)
        # Before any image is read: a record without what the student's training needs (a box) stops
        # the run with one line naming it; evaluation scores boxes whatever the mode.
        architecture = student_architecture(self.student_config.architecture)
        architecture.supervision.check(self.samples[config.train_split], config.train_split)
        for split in self.eval_splits():
            check_supervision(self.samples[split], True, split, "evaluation")
        train_transform = TrainTransform if config.augment else EvalTransform
        train_transform_config = dataclasses.replace(self.transform_config, translate=config.aug_translate)
        self.train_set = GroundingDataset(
            self.samples[config.train_split], train_transform(train_transform_config), seed=config.seed
        )
        self.train_set.augment_on = resolve_augment_on(config.augment_on, self.device)
        self.collate = make_collate(self.student_config)
        self.autocast = autocast_factory(self.device, config.amp)

        self.source = build_target_source(SourceContext(config, self.device, self.env, self.transform_config))
        self.train_set.views = self.source.views

        self.model = build_student(self.student_config).to(self.device)
        self.criterion = architecture.criterion(config.loss)
        self.optimizer = build_optimizer(self.model, self.source.parameters(), config)
        if config.precompute_frozen and config.augment and self.train_set.views is None:
            raise ValueError(
                f"--precompute-frozen with augmentation needs an exact-view cache; {config.cache} has "
                "no views (build one with `cache build --views K`, or train with --no-augment)"
            )
        self.frozen_tables = FrozenTables(
            self.model,
            self.samples,
            self.train_set,
            config.train_split,
            self.transform_config,
            {"student": asdict(self.student_config), "transform": asdict(self.transform_config)},
            self.source.table_settings(),
            self.collate.tokenize,
            self.device,
            self.batch_size,
            config.workers,
            config.frozen_cache or self.out / "frozen",  # a file every rank of the node maps
            self.env,
            stored_dtype(config.frozen_dtype, self.device, config.amp),
            memory_budget(config.frozen_budget_gb),
        )
        if config.precompute_frozen:
            table = self.frozen_tables[config.train_split]
            self.train_loader = table_loader(
                table,
                self.batch_size,
                EpochSampler(len(table), self.env, config.seed),
                drop_last=len(table) > config.batch_size,
            )
        else:
            self.train_loader = train_loader(self.train_set, config, self.env, self.collate)
        self.steps_per_epoch = max(1, len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            # Not a lambda over self: that cycle would keep a finished trainer, and its persistent loader
            # workers, alive until the garbage collector runs.
            self.optimizer,
            functools.partial(lr_factor, steps_per_epoch=self.steps_per_epoch, config=config),
        )
        self.scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling; kept for fp16 runs
        self.ddp_model = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.env.enabled
            else self.model
        )
        if config.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        if self.env.rank:  # rank 0 keeps the single-process stream; the others their own dropout
            torch.manual_seed(config.seed + self.env.rank)
        self.parts = RunParts(
            config,
            self.student_config,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.source,
        )
        self.state = RunState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.eval_loaders: dict[str, DataLoader] = {}
        self.live = None  # rank 0's TensorBoard writer while `fit` runs

    def eval_splits(self) -> list[str]:
        return eval_splits(self.config)

    def resume(self) -> None:
        payload = self.resume_payload or load_checkpoint(self.out / LAST)
        self.resume_payload = None  # its tensors are copied into the model and optimizer below
        self.state = restore(self.parts, payload, self.env, self.device)

    # loops -----------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        loader = self.train_loader
        loader.sampler.set_epoch(epoch)
        self.ddp_model.train()
        running: dict[str, torch.Tensor] = {}
        count, started, waited = 0, time.perf_counter(), 0.0
        show = self.config.progress and self.env.is_main
        batches = iter(loader)
        with tqdm(total=len(loader), desc=f"epoch {epoch + 1}", disable=not show) as bar:
            while True:
                # Time blocked on the loader, read on the host clock: no device sync is added. Between
                # syncs the host runs ahead of the GPU, so over a window this is the share of the
                # step time spent waiting for data.
                asked = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - asked
                if batch is None:
                    break
                terms = self.train_step(batch)
                count += 1
                bar.update()
                for key, value in terms.items():
                    running[key] = running[key] + value if key in running else value
                if count % self.config.sync_every == 0 and count < len(loader):
                    means = self.synced_means(running, count)
                    signals = self.show_progress(bar, means, count, started, waited)
                    write_scalars(self.live, {**means, **signals}, self.state.step)
            epoch_means = self.synced_means(running, count)  # the epoch's last step is read once, here
            signals = self.show_progress(bar, epoch_means, count, started, waited)
        return {**epoch_means, **signals}

    def show_progress(
        self, bar: tqdm, means: dict[str, float], count: int, started: float, waited: float
    ) -> dict[str, float]:
        """Put the loss, samples/s and the data-wait fraction on the progress bar; returns the last two."""
        elapsed = max(time.perf_counter() - started, 1e-9)
        rate = count * self.config.batch_size / elapsed  # the global batch
        wait = min(1.0, waited / elapsed)
        if means:
            bar.set_postfix(
                loss=f"{means['loss/total']:.3f}", samples_s=f"{rate:.1f}", data_wait=f"{wait:.0%}"
            )
        return {"samples_per_s": rate, "data_wait_fraction": wait}

    def synced_means(self, running: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Epoch-so-far mean of each loss term (and diagnostic) over all ranks; stops the run if any
        step's loss was not finite. The one host-device sync of the loop, every `sync_every` steps
        and at the epoch's end."""
        if not running:
            return {}
        keys = sorted(running)
        sums = torch.stack([running[key] for key in keys]).float()
        means = all_reduce_mean(sums / count, self.env).tolist()
        if not all(math.isfinite(value) for value in means):
            raise TrainingDiverged(
                f"the loss became {dict(zip(keys, means, strict=True))} in epoch {self.state.epoch + 1} "
                f"(by step {self.state.step}); the last good checkpoint is {self.out / LAST} "
                "(try a lower --lr or --clip-grad)"
            )
        return dict(zip(keys, means, strict=True))

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step. Returns the detached loss terms ("loss/<name>") and diagnostics
        ("diag/<name>") on the device: reading them here would make the host wait for the GPU every
        step (`synced_means` does it every `sync_every` steps)."""
        batch = to_device_batch(batch, self.transform_config, self.device)
        teacher_image, teacher_text = self.source.targets(batch)
        with self.autocast():
            output = self.ddp_model(**model_inputs(batch, self.device))
        box = batch["box"]
        targets = LossTargets(
            box.to(self.device, non_blocking=True) if box is not None else None,  # pinned: no host wait
            teacher_image,
            teacher_text,
            self.source.teacher_grad,
        )
        losses, diagnostics = self.criterion(output, targets)
        loss = losses["total"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        terms = {f"loss/{key}": value.detach() for key, value in losses.items()}
        return terms | {f"diag/{key}": value for key, value in diagnostics.items()}

    def evaluate(self, split: str) -> list[Prediction]:
        if split not in self.eval_loaders and self.config.precompute_frozen:
            table = self.frozen_tables[split]
            self.eval_loaders[split] = table_loader(
                table, self.batch_size, EvalShardSampler(len(table), self.env)
            )
        if split not in self.eval_loaders:
            dataset = GroundingDataset(self.samples[split], EvalTransform(self.transform_config), seed=0)
            self.eval_loaders[split] = eval_loader(
                dataset,
                self.collate,
                self.env,
                self.batch_size,
                self.config.workers,
                persistent=self.config.persistent_workers,
            )
        return predict_split(
            self.model, self.eval_loaders[split], self.env, self.device, self.autocast, self.transform_config
        )

    def fit(self) -> dict[str, Any]:
        config, env = self.config, self.env
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # The effective batch beside the options: --batch-size is global, each rank takes a share.
            batch = {"world_size": env.world_size, "batch_size_per_rank": self.batch_size}
            (self.out / "config.json").write_text(json.dumps({**config.to_dict(), **batch}, indent=2))
            print(f"batch: {config.batch_size} global = {env.world_size} rank(s) x {self.batch_size}")
        if config.resume:
            self.resume()
        metrics_path = self.out / METRICS
        if env.is_main:
            start_metrics(metrics_path, self.state.epoch if config.resume else None, self.resume_changes)
            print(f"targets: {self.source.describe()}")
            self.live = open_live_signals(self.out)
        try:
            self.train_epochs(metrics_path)
        finally:
            if self.live is not None:
                self.live.close()
                self.live = None
        return self.finish()

    def train_epochs(self, metrics_path: Path) -> None:
        """The epochs still to run, each followed by val, the metrics row and the checkpoints."""
        config, env = self.config, self.env
        for epoch in range(self.state.epoch, config.epochs):
            train_terms = self.train_epoch(epoch)
            val = summarize(self.evaluate(config.val_split))
            self.state.epoch = epoch + 1
            improved = val["acc@0.5"] > self.state.best_acc
            if improved:
                self.state.best_acc = val["acc@0.5"]
                self.state.best_epoch = epoch + 1
                # Every rank keeps its own host copy (equal under DDP): no rank waits for rank 0's best.pt,
                # and no second model sits in GPU memory.
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
            rng_states = gather_objects([rng_state(self.device)], env)  # a collective: every rank takes part
            if env.is_main:
                row = {"kind": "epoch", "epoch": epoch + 1, "step": self.state.step, **train_terms}
                row.update({f"val/{key}": value for key, value in val.items()})
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                if self.device.type == "cuda":  # the epoch's peak, then counted afresh
                    row["gpu/peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    torch.cuda.reset_peak_memory_stats(self.device)
                append_jsonl(metrics_path, row)
                write_scalars(self.live, row, self.state.step)
                payload = checkpoint_payload(self.parts, self.state, rng_states)
                save_checkpoint(self.out / LAST, payload)
                if improved:
                    save_checkpoint(self.out / BEST, payload)

    def finish(self) -> dict[str, Any]:
        """Every split evaluated with the best-val weights (`best.pt`): val and test from one model."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        elif (self.out / BEST).is_file():  # a resumed run that improved on nothing: written before it started
            self.model.load_state_dict(load_checkpoint(self.out / BEST)["model"])
        results, predictions = {}, {}
        for split in self.eval_splits():
            predictions[split] = self.evaluate(split)
            results[split] = summarize(predictions[split])
        self.eval_loaders.clear()  # stops their persistent workers
        summary = {
            "dataset": self.config.dataset,
            "distill": self.config.distill,
            **self.source.summary(),
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "best_val_acc@0.5": self.state.best_acc,
            "results_from": f"best.pt (epoch {self.state.best_epoch})",
            "results": results,
            "student_parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.env.is_main:
            val = self.config.val_split
            write_run_report(self.out, summary, predictions[val], self.samples[val], self.config.gallery_size)
        return summary


def precompute_tables(config: TrainConfig) -> None:
    """Build a `--precompute-frozen` run's tables (train and every eval split) into its `frozen_cache`
    ahead of it: runs started after, and runs that share its images, then read them."""
    trainer = Trainer(config)  # builds the train split's table
    for split in trainer.eval_splits():
        trainer.frozen_tables[split]


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run and return its summary; under torchrun, leave the process group after."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.env)
