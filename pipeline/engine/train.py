"""Phase 2: train the TransVG student, distilling from cached (or online) teacher targets.

With `distill="cached"` the teacher module is never imported: targets are gathered from in-RAM
tables by (record index, flipped, text swapped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data import (
    EvalTransform,
    GroundingCollate,
    GroundingDataset,
    TrainTransform,
    TransformConfig,
    image_subset,
    load_split,
    max_query_len,
    select_samples,
    validate_samples,
)
from pipeline.data.sample import Sample
from pipeline.engine.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import (
    DistEnv,
    EpochSampler,
    EvalShardSampler,
    all_reduce_mean,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from pipeline.engine.evaluate import Prediction, eval_loader, format_table, predict_split, summarize
from pipeline.engine.frozen_inputs import (
    FrozenInputTable,
    ImageTable,
    build_frozen_table,
    build_image_table,
    build_view_table,
    cached_table,
    model_inputs,
    table_key,
    table_loader,
)
from pipeline.engine.plots import plot_curves, plot_gallery, read_metrics
from pipeline.engine.resume import check_resume
from pipeline.errors import ExpectedError
from pipeline.student import (
    StudentConfig,
    build_student,
    build_tokenizer,
    load_student_weights,
    param_groups,
    pixel_normalization,
    student_architecture,
    student_preset,
    tokenize,
)


class TrainingDiverged(ExpectedError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0


def student_config_for(config: TrainConfig) -> StudentConfig:
    # A JSON-lines file is not in the registry: `max_query_len` knows both kinds of dataset.
    overrides = {"max_query_len": max_query_len(config.dataset), **config.student_overrides}
    return student_preset(config.student, **overrides)


def transform_config_for(student_config: StudentConfig) -> TransformConfig:
    """The student's input size and the normalization its backbone's pretrained weights expect."""
    mean, std = pixel_normalization(student_config)
    return TransformConfig(image_size=student_config.image_size, mean=mean, std=std)


def make_collate(student_config: StudentConfig) -> GroundingCollate:
    """Batch collation with the student's tokenizer; picklable for DataLoader workers."""
    tokenizer = build_tokenizer(student_config)
    return GroundingCollate(
        functools.partial(tokenize, tokenizer=tokenizer, max_len=student_config.max_query_len)
    )


def prepare_split(config: TrainConfig, split: str) -> list[Sample]:
    """Read a split, refuse or drop bad records, and cap its size for quick runs."""
    samples = load_split(config.dataset, split, config.data_root)
    report = validate_samples(samples, check_images=True)
    kept = select_samples(samples, report, skip_missing=config.skip_missing)
    if split == config.train_split:
        kept = image_subset(kept, config.train_fraction)
    kept = kept[: config.max_samples] if config.max_samples else kept
    if config.blank_text:  # the image-only control: the same records, every expression empty
        kept = [dataclasses.replace(sample, text="") for sample in kept]
    return kept


def _autocast_factory(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    if device.type == "cuda" and enabled:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs`, then the paper's x0.1 step at `lr_drop`."""
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.1 if step >= config.lr_drop * steps_per_epoch else 1.0


class TeacherEncoders(torch.nn.Module):
    """CLIP's two encoders behind one `forward`, so that DDP, which syncs gradients only for what runs
    through its own forward, can wrap a trainable teacher."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(pixels), self.model.encode_text(tokens)


class OnlineTeacher:
    """Runs the frozen (or trainable) teacher on the augmented batch: the `online` comparison mode."""

    def __init__(self, config: TrainConfig, device: torch.device, student_mean_std: tuple):
        from pipeline.teacher import TeacherConfig, build_teacher

        self.teacher = build_teacher(
            TeacherConfig(
                model=config.teacher_model,
                pretrained=config.teacher_pretrained,
                allow_random=config.allow_random_teacher,
                device=str(device),
            )
        )
        self.trainable = config.teacher_trainable
        self.teacher.model.requires_grad_(self.trainable).train(self.trainable)
        self.student_mean_std = student_mean_std
        self.device = device
        self.encoders: torch.nn.Module = TeacherEncoders(self.teacher.model)

    def wrap_for_ddp(self, env: DistEnv) -> None:
        """Under torchrun a trainable teacher must see every rank's gradients, as the student does;
        without it each rank's teacher drifts apart. CLIP's `logit_scale` takes no part in encoding."""
        if self.trainable and env.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.encoders = DistributedDataParallel(
                self.encoders, device_ids=device_ids, find_unused_parameters=True
            )

    def parameters(self):
        return self.teacher.model.parameters()

    def __call__(
        self, pixels: torch.Tensor, pixel_mask: torch.Tensor, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The cache's own preprocessing (centred letterbox of the un-padded image), on the student's pixels.
        # It runs per image on the CPU (PIL, as the cache does): the online mode is a comparison mode,
        # and being the same function as the cache's is what makes the comparison fair.
        clip_pixels = self.teacher.preprocess_student_pixels(
            pixels.cpu(), pixel_mask.cpu(), self.student_mean_std[0], self.student_mean_std[1]
        ).to(self.device)
        tokens = self.teacher.tokenizer(texts).to(self.device)
        grad = torch.enable_grad() if self.trainable else torch.no_grad()
        with grad:
            image, text = self.encoders(clip_pixels, tokens)
        return image.float(), text.float()


def view_replay(targets: Any, config: TrainConfig, transform: TransformConfig) -> Any:
    """An exact-view store: the student replays the views the teacher embedded (after checking that the
    store drew them with this run's train transform)."""
    from pipeline.views import ViewReplay, check_views

    check_views(targets.fingerprint["views"], transform, config.train_split, config.cache)
    view_row = targets.rows[config.train_split]["view_row"].numpy()
    return ViewReplay(targets.view_params, view_row, transform)


def _train_loader(dataset: GroundingDataset, config: TrainConfig, env: DistEnv, collate) -> DataLoader:
    """The run's one training loader; its workers persist across epochs (the sampler carries the epoch)."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=EpochSampler(len(dataset), env, config.seed),
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=len(dataset) > config.batch_size * env.world_size,
        pin_memory=config.device.startswith("cuda"),
        persistent_workers=config.workers > 0 and config.persistent_workers,
        # Its own generator: a loader draws its workers' seed when it starts them, once a run when they
        # persist, and from the global RNG that would shift dropout between a resumed run and a straight one.
        generator=torch.Generator().manual_seed(config.seed),
    )


def _write_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


class Trainer:
    """One run: data, student, optimizer, targets; `fit()` trains, evaluates and writes artefacts."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.env = init_distributed(config.device)
        self.device = torch.device(
            f"cuda:{self.env.local_rank}" if config.device.startswith("cuda") else config.device
        )
        torch.manual_seed(config.seed)  # the same on every rank: the frozen tables and DDP's start agree
        self.out = Path(config.out)
        self.resume_payload, self.resume_changes = self.resume_point()  # before any work or write
        self.student_config = student_config_for(config)
        self.transform_config = transform_config_for(self.student_config)
        self.samples = {config.train_split: prepare_split(config, config.train_split)}
        for split in self.eval_splits():
            self.samples[split] = prepare_split(config, split)
        train_transform = TrainTransform if config.augment else EvalTransform
        train_transform_config = dataclasses.replace(self.transform_config, translate=config.aug_translate)
        self.train_set = GroundingDataset(
            self.samples[config.train_split], train_transform(train_transform_config), seed=config.seed
        )
        self.collate = make_collate(self.student_config)
        self.autocast = _autocast_factory(self.device, config.amp)

        self.targets = None
        self.online_teacher = None
        if config.distill == "cached":
            from pipeline.data import dataset_fingerprint
            from pipeline.targets import load_targets

            self.targets = load_targets(
                config.cache, [config.train_split], dataset_fingerprint(config.dataset, config.data_root)
            )
            if self.targets.view_params is not None and config.augment:
                self.train_set.views = view_replay(self.targets, config, self.transform_config)
        elif config.distill == "online":
            mean_std = (self.transform_config.mean, self.transform_config.std)
            self.online_teacher = OnlineTeacher(config, self.device, mean_std)
            self.online_teacher.wrap_for_ddp(self.env)

        self.model = build_student(self.student_config).to(self.device)
        self.objective = student_architecture(self.student_config.architecture).objective  # its own loss
        groups = param_groups(
            self.model, lr=config.lr, lr_pretrained=config.lr_pretrained, weight_decay=config.weight_decay
        )
        if self.online_teacher is not None and config.teacher_trainable:
            groups.append({"params": list(self.online_teacher.parameters()), "lr": config.lr_pretrained})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.frozen_tables: dict[str, FrozenInputTable] = {}
        if config.precompute_frozen and config.augment and self.train_set.views is None:
            raise ValueError(
                f"--precompute-frozen with augmentation needs an exact-view cache; {config.cache} has "
                "no views (build one with `cache build --views K`, or train with --no-augment)"
            )
        if config.precompute_frozen:
            table = self.frozen_table(config.train_split)
            self.train_loader = table_loader(
                table,
                config.batch_size,
                EpochSampler(len(table), self.env, config.seed),
                drop_last=len(table) > config.batch_size * self.env.world_size,
            )
        else:
            self.train_loader = _train_loader(self.train_set, config, self.env, self.collate)
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
        self.state = RunState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.eval_loaders: dict[str, DataLoader] = {}

    def frozen_table(self, split: str) -> FrozenInputTable:
        """The split's frozen-branch outputs, computed on first use (`precompute_frozen`), or read from
        `frozen_cache` when an earlier run with the same frozen branches and records saved them."""
        if split not in self.frozen_tables:
            samples = self.samples[split]
            settings = {"student": asdict(self.student_config), "transform": asdict(self.transform_config)}
            views = self.train_set.views if split == self.config.train_split else None
            if views is not None:
                settings["views"] = self.targets.fingerprint["views"]

                def build() -> FrozenInputTable:
                    return build_view_table(
                        self.model,
                        self.train_set,
                        views.count,
                        self.collate.tokenize,
                        self.device,
                        self.config.batch_size,
                        self.config.workers,
                    )
            else:

                def build() -> FrozenInputTable:
                    transform = EvalTransform(self.transform_config)
                    images_key = table_key(self.model, settings, samples, images_only=True)
                    images = cached_table(
                        self.config.frozen_cache,
                        f"{split}-images-{images_key}",
                        lambda: build_image_table(
                            self.model,
                            samples,
                            transform,
                            self.device,
                            self.config.batch_size,
                            self.config.workers,
                        ),
                        ImageTable,
                    )
                    return build_frozen_table(
                        self.model,
                        samples,
                        transform,
                        self.collate.tokenize,
                        self.device,
                        self.config.batch_size,
                        images=images,
                    )

            key = table_key(self.model, settings, samples) if self.config.frozen_cache else ""
            self.frozen_tables[split] = cached_table(self.config.frozen_cache, f"{split}-{key}", build)
        return self.frozen_tables[split]

    def eval_splits(self) -> list[str]:
        from pipeline.data import available_splits

        splits = self.config.eval_splits or tuple(
            s
            for s in available_splits(self.config.dataset, self.config.data_root)
            if s != self.config.train_split
        )
        if self.config.val_split not in splits:
            splits = (self.config.val_split, *splits)
        return list(dict.fromkeys(splits))

    # checkpoints ---------------------------------------------------------------------------------

    def resume_point(self) -> tuple[dict[str, Any] | None, dict[str, list[Any]]]:
        """With `resume`: the checkpoint and the safe option changes; refuses a missing or other run."""
        if not self.config.resume:
            return None, {}
        last = self.out / LAST
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last} (drop --resume to start a new run)")
        payload = load_checkpoint(last, required=("model", "optimizer", "train_config", "epoch", "rng"))
        return payload, check_resume(last, payload["train_config"], self.config.to_dict())

    def checkpoint_payload(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything a resumed run needs; `rng_states`: every rank's RNG (default: this process's)."""
        rng_states = rng_states or [rng_state()]
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states[0],
            "rng_ranks": rng_states,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_acc": self.state.best_acc,
            "best_epoch": self.state.best_epoch,
            "train_config": self.config.to_dict(),
            "student_config": self.student_config.to_dict(),
        }
        if self.online_teacher is not None and self.online_teacher.trainable:
            payload["teacher"] = self.online_teacher.teacher.model.state_dict()  # it trains: resume needs it
        return payload

    def resume(self) -> None:
        payload = self.resume_payload or load_checkpoint(self.out / LAST)
        self.resume_payload = None  # its tensors are copied into the model and optimizer below
        load_student_weights(self.model, payload)
        if "teacher" in payload:
            self.online_teacher.teacher.model.load_state_dict(payload["teacher"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        ranks = payload.get("rng_ranks", [])
        # Each rank continues its own stream when the world size is the same; else rank 0's for all.
        set_rng_state(ranks[self.env.rank] if len(ranks) == self.env.world_size else payload["rng"])
        self.state = RunState(
            payload["epoch"],
            payload["step"],
            payload["best_acc"],
            payload.get("best_epoch", payload["epoch"]),
        )

    # loops -----------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        loader = self.train_loader
        loader.sampler.set_epoch(epoch)
        self.ddp_model.train()
        running: dict[str, torch.Tensor] = {}
        count, started = 0, time.perf_counter()
        show = self.config.progress and self.env.is_main
        with tqdm(total=len(loader), desc=f"epoch {epoch + 1}", disable=not show) as bar:
            for batch in loader:
                terms = self.train_step(batch)
                count += 1
                bar.update()
                for key, value in terms.items():
                    running[key] = running[key] + value if key in running else value
                if count % self.config.sync_every == 0 and count < len(loader):
                    self.show_progress(bar, self.synced_means(running, count), count, started)
            epoch_means = self.synced_means(running, count)  # the epoch's last step is read once, here
            rate = self.show_progress(bar, epoch_means, count, started)
        means = {f"loss/{key}": value for key, value in epoch_means.items()}
        means["samples_per_s"] = rate
        return means

    def show_progress(self, bar: tqdm, means: dict[str, float], count: int, started: float) -> float:
        """Put the loss and samples/s on the progress bar; returns samples/s."""
        rate = count * self.config.batch_size * self.env.world_size / max(time.perf_counter() - started, 1e-9)
        if means:
            bar.set_postfix(loss=f"{means['total']:.3f}", samples_s=f"{rate:.1f}")
        return rate

    def synced_means(self, running: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Epoch-so-far mean of each loss term over all ranks; stops the run if any step's loss was not
        finite. The one host-device sync of the loop, every `sync_every` steps and at the epoch's end."""
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

    def teacher_targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.targets is not None:
            image, text = self.targets.lookup(
                self.config.train_split,
                batch["index"],
                batch["flipped"],
                batch["text_swapped"],
                batch.get("view") if self.config.view_targets == "exact" else None,
            )
            return image.to(self.device, non_blocking=True), text.to(self.device, non_blocking=True)
        if self.online_teacher is not None:
            return self.online_teacher(batch["pixels"], batch["pixel_mask"], batch["text"])
        return None, None

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step. Returns the detached loss terms on the device: reading them here would
        make the host wait for the GPU every step (`synced_means` does it every `sync_every` steps)."""
        teacher_image, teacher_text = self.teacher_targets(batch)
        with self.autocast():
            output = self.ddp_model(**model_inputs(batch, self.device))
        terms = self.objective(
            output,
            batch["box"].to(self.device),
            teacher_image,
            teacher_text,
            self.config.loss,
            teacher_grad=self.online_teacher is not None and self.online_teacher.trainable,
        )
        loss = terms["total"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        return {key: value.detach() for key, value in terms.items()}

    def evaluate(self, split: str) -> list[Prediction]:
        if split not in self.eval_loaders and self.config.precompute_frozen:
            table = self.frozen_table(split)
            self.eval_loaders[split] = table_loader(
                table, self.config.batch_size, EvalShardSampler(len(table), self.env)
            )
        if split not in self.eval_loaders:
            dataset = GroundingDataset(self.samples[split], EvalTransform(self.transform_config), seed=0)
            self.eval_loaders[split] = eval_loader(
                dataset,
                self.collate,
                self.env,
                self.config.batch_size,
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
            (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        if config.resume:
            self.resume()
        metrics_path = self.out / "metrics.jsonl"
        if env.is_main:
            self.start_metrics(metrics_path)
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
            rng_states = gather_objects([rng_state()], env)  # a collective: every rank takes part
            if env.is_main:
                row = {"kind": "epoch", "epoch": epoch + 1, "step": self.state.step, **train_terms}
                row.update({f"val/{key}": value for key, value in val.items()})
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                _write_jsonl(metrics_path, row)
                payload = self.checkpoint_payload(rng_states)
                save_checkpoint(self.out / LAST, payload)
                if improved:
                    save_checkpoint(self.out / BEST, payload)
        return self.finish(metrics_path)

    def start_metrics(self, path: Path) -> None:
        """A new run starts a new metrics file; a resumed one drops rows of epochs its checkpoint lacks
        (trained, then lost to a crash before the save: they are trained again) and notes its changes."""
        if not self.config.resume:
            path.write_text("")
            return
        rows = read_metrics(path) if path.is_file() else []
        kept = [row for row in rows if row.get("kind") != "epoch" or row["epoch"] <= self.state.epoch]
        if self.resume_changes:
            kept.append({"kind": "resume", "epoch": self.state.epoch, "changed": self.resume_changes})
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def finish(self, metrics_path: Path) -> dict[str, Any]:
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
            "teacher_built": self.online_teacher is not None,
            "teacher_fingerprint": self.targets.fingerprint if self.targets is not None else None,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "best_val_acc@0.5": self.state.best_acc,
            "results_from": f"best.pt (epoch {self.state.best_epoch})",
            "results": results,
            "student_parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.env.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            (self.out / "results.md").write_text(format_table(results) + "\n")
            if metrics_path.is_file():
                plot_curves(metrics_path, self.out / "curves.png")
            self.write_gallery(predictions[self.config.val_split])
            print(format_table(results))
        return summary

    def write_gallery(self, predictions: list[Prediction]) -> None:
        by_index = {sample.index: sample for sample in self.samples[self.config.val_split]}
        items = [
            {
                "image_path": by_index[p.index].image_path,
                "text": by_index[p.index].text,
                "box": p.box_xyxy,
                "target": by_index[p.index].box_xyxy,
                "iou": p.iou,
            }
            for p in predictions[: self.config.gallery_size]
        ]
        if items:
            plot_gallery(items, self.out / "gallery.png")


def precompute_tables(config: TrainConfig) -> None:
    """Build a `--precompute-frozen` run's tables (train and every eval split) into its `frozen_cache`
    ahead of it: runs started after, and runs that share its images, then read them."""
    trainer = Trainer(config)  # builds the train split's table
    for split in trainer.eval_splits():
        trainer.frozen_table(split)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run and return its summary; under torchrun, leave the process group after."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.env)
