"""Train a tiny open_clip CLIP contrastively on a grounding dataset's train (image, expression) pairs.

No CLIP weights can ship with the project, so without this the shapes demo's teacher is random. This
trains one that knows its domain in under a minute on 2 CPU cores, with open_clip's own model
(`open_clip.create_model` on a JSON config, registered as `pipeline.teacher` registers it) and
open_clip's own `ClipLoss`:

- images are preprocessed exactly as the cache preprocesses them (`Teacher.load_image`: letterbox,
  the model's size, mean and std), each train image decoded once into memory;
- expressions are normalized as the cache normalizes them and tokenized by open_clip's tokenizer;
- a horizontally flipped image goes with its left↔right-swapped expression (`swap_left_right`), the
  pairing the cache stores as the flipped variants;
- batches hold no known false negative (`clean_batches`): one expression such as "the circle"
  belongs to many images, and ClipLoss would otherwise push it away from them.

The checkpoint is the plain model state_dict as safetensors, so the ordinary path reads it::

    epmvg cache build shapes --data-root DIR \
        --teacher OUT/clip-shapes.json --pretrained OUT/teacher.safetensors

and the store's manifest fingerprints it by sha256 (weights kind "file"). Zero-shot retrieval on the
val split (`grounding_retrieval_at_1`) is reported for the trained model, for the same architecture
with random weights (seeded as `pipeline.teacher` seeds random teachers) and for chance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip_train.scheduler import cosine_lr

from pipeline.data import (
    Sample,
    file_sha256,
    load_split,
    normalize_expression,
    select_samples,
    swap_left_right,
    validate_samples,
)
from pipeline.teacher import (
    RANDOM_TEACHER_SEED,
    Teacher,
    TeacherConfig,
    create_random_model,
    encode_text_trimmed,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = Path(__file__).parents[1] / "configs" / "teacher" / "clip-shapes.json"
CHECKPOINT_NAME = "teacher.safetensors"
REPORT_NAME = "teacher.json"
LOGIT_SCALE_MAX = math.log(100)  # open_clip's training clamps the learned temperature here


@dataclass(frozen=True)
class TeacherTrainingConfig:
    """What to train on and how; the defaults fit the shapes data on 2 CPU cores.

    `model` is an open_clip model-config JSON (or an open_clip model name); training starts from
    random weights seeded by `seed`. An epoch is one pass over the train (image, expression) pairs in
    batches without false negatives (`clean_batches`). `max_seconds` stops training early (checked
    after every step); a run cut short by it is not bitwise reproducible, one that runs all `epochs`
    is (on CPU, for a given number of threads). `threads` sets torch's CPU threads for the run
    (default: torch's own choice).
    """

    dataset: str = "shapes"
    data_root: Path = Path("../shared/data")
    out: Path = Path("runs/teacher")
    model: str = str(DEFAULT_MODEL_CONFIG)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1  # of all steps, linear; then cosine to zero
    flip_prob: float = 0.5  # flip the image and swap left/right in its expression
    seed: int = 0
    max_seconds: float | None = None
    threads: int | None = None
    crop: str = "letterbox"
    train_split: str = "train"
    eval_split: str = "val"
    skip_missing: bool = False
    eval_batch_size: int = 256

    def check(self) -> None:
        """Raise ValueError (one line) for settings that cannot work, before any data is read."""
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            problems.append(f"batch size must be at least 2 (a contrastive batch), got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.flip_prob <= 1:
            problems.append(f"flip probability must be in [0, 1], got {self.flip_prob}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            problems.append(f"max seconds must be positive, got {self.max_seconds}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be at least 1, got {self.threads}")
        if self.eval_batch_size < 1:
            problems.append(f"eval batch size must be at least 1, got {self.eval_batch_size}")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# The metric


@dataclass(frozen=True)
class RetrievalScores:
    """R@1 both ways over one split's distinct images and distinct (normalized) expressions."""

    image_to_text: float
    text_to_image: float

    def as_dict(self) -> dict[str, float]:
        return {"image_to_text_r1": self.image_to_text, "text_to_image_r1": self.text_to_image}


def grounding_retrieval_at_1(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, relevant: torch.Tensor
) -> RetrievalScores:
    """Zero-shot retrieval R@1 for grounding data, where one image has several expressions.

    `image_embeddings` [I, d] are a split's distinct images, `text_embeddings` [T, d] its distinct
    expressions, and `relevant` [I, T] (bool) says which expression was written for which image (an
    expression such as "the circle" can belong to several images). Embeddings are compared by cosine.

    - image→text R@1: the fraction of the I images whose most similar expression, among all T, is one
      of that image's own expressions;
    - text→image R@1: the fraction of the T expressions whose most similar image, among all I, is an
      image the expression was written for.

    Ties go to the lower index (argmax). Every image and every expression needs at least one relevant
    partner. `chance_retrieval_at_1(relevant)` gives the expected figures of a random ranking.
    """
    _check_relevance(relevant, len(image_embeddings), len(text_embeddings))
    images = F.normalize(image_embeddings.double(), dim=-1)
    texts = F.normalize(text_embeddings.double(), dim=-1)
    similarity = images @ texts.T
    return RetrievalScores(
        image_to_text=_top1_hit_rate(similarity, relevant),
        text_to_image=_top1_hit_rate(similarity.T, relevant.T),
    )


def chance_retrieval_at_1(relevant: torch.Tensor) -> RetrievalScores:
    """The expected R@1 of a uniformly random ranking: each query's share of relevant candidates.

    Both directions equal the density of `relevant` (its mean), but are kept apart for clarity.
    """
    _check_relevance(relevant, *relevant.shape)
    share = relevant.double()
    return RetrievalScores(
        image_to_text=float(share.mean(dim=1).mean()),
        text_to_image=float(share.mean(dim=0).mean()),
    )


def _top1_hit_rate(similarity: torch.Tensor, relevant: torch.Tensor) -> float:
    top = similarity.argmax(dim=1)
    return float(relevant[torch.arange(len(top)), top].double().mean())


def _check_relevance(relevant: torch.Tensor, images: int, texts: int) -> None:
    if relevant.dtype != torch.bool or tuple(relevant.shape) != (images, texts):
        raise ValueError(
            f"relevant must be a bool [{images}, {texts}] matrix, "
            f"got {relevant.dtype} {tuple(relevant.shape)}"
        )
    if images == 0 or texts == 0 or not relevant.any(dim=1).all() or not relevant.any(dim=0).all():
        raise ValueError("every image and every expression needs at least one relevant partner")


@dataclass(frozen=True)
class RetrievalSet:
    """A split's distinct images and expressions, and which expression belongs to which image."""

    image_paths: list[Path]
    texts: list[str]
    relevant: torch.Tensor  # [images, texts] bool

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> RetrievalSet:
        image_paths = sorted({sample.image_path for sample in samples})
        texts = sorted({normalize_expression(sample.text) for sample in samples})
        image_row = {path: row for row, path in enumerate(image_paths)}
        text_column = {text: column for column, text in enumerate(texts)}
        relevant = torch.zeros(len(image_paths), len(texts), dtype=torch.bool)
        for sample in samples:
            relevant[image_row[sample.image_path], text_column[normalize_expression(sample.text)]] = True
        return cls(image_paths, texts, relevant)


def teacher_retrieval(
    teacher: Teacher, pixels: torch.Tensor, retrieval_set: RetrievalSet, batch_size: int = 256
) -> RetrievalScores:
    """`grounding_retrieval_at_1` of a teacher's cache-time outputs ([DIE], [DTE]).

    `pixels` are `retrieval_set.image_paths` preprocessed by `Teacher.load_image`.
    """
    texts = retrieval_set.texts
    images = torch.cat([teacher.encode_images(chunk) for chunk in pixels.split(batch_size)])
    text_embeddings = torch.cat(
        [
            teacher.encode_texts(texts[start : start + batch_size])
            for start in range(0, len(texts), batch_size)
        ]
    )
    return grounding_retrieval_at_1(images, text_embeddings, retrieval_set.relevant)


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class _TrainPairs:
    """Every distinct train (image, expression) pair; images decoded once, texts tokenized once."""

    pixels: torch.Tensor  # [images, 3, S, S], preprocessed as the cache preprocesses them
    tokens: torch.Tensor  # [texts, context]
    swapped_tokens: torch.Tensor  # [texts, context]: the left/right-swapped expressions
    image_of_pair: list[int]  # row of pixels
    text_of_pair: list[int]  # row of tokens
    stats: dict[str, int]


def _usable_samples(config: TeacherTrainingConfig, split: str) -> list[Sample]:
    samples = load_split(config.dataset, split, config.data_root)
    if not samples:
        raise ValueError(f"the {split!r} split of {config.dataset!r} under {config.data_root} has no records")
    return select_samples(samples, validate_samples(samples), skip_missing=config.skip_missing)


def _decode(teacher: Teacher, paths: Sequence[Path]) -> torch.Tensor:
    return torch.stack([teacher.load_image(path) for path in paths])


def _train_pairs(samples: Sequence[Sample], teacher: Teacher) -> _TrainPairs:
    pairs = sorted({(sample.image_path, normalize_expression(sample.text)) for sample in samples})
    image_paths = sorted({path for path, _ in pairs})
    texts = sorted({text for _, text in pairs})
    image_row = {path: row for row, path in enumerate(image_paths)}
    text_row = {text: row for row, text in enumerate(texts)}
    return _TrainPairs(
        pixels=_decode(teacher, image_paths),
        tokens=teacher.tokenizer(texts),
        swapped_tokens=teacher.tokenizer([swap_left_right(text) for text in texts]),
        image_of_pair=[image_row[path] for path, _ in pairs],
        text_of_pair=[text_row[text] for _, text in pairs],
        stats={"records": len(samples), "pairs": len(pairs), "images": len(image_paths), "texts": len(texts)},
    )


def clean_batches(
    image_of_pair: Sequence[int], text_of_pair: Sequence[int], order: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Full batches of pair indices, filled greedily in `order`, that hold no known false negative.

    One expression ("the circle") belongs to many images, and ClipLoss counts every other pair of a
    batch as a negative: "the circle" would be pushed away from the other images it describes as hard
    as it is pulled toward its own. So a pair joins a batch only if its image is not there yet, its
    expression belongs to no image there, and no expression there belongs to its image: within a
    batch the relevance of images to expressions is exactly the diagonal. Pairs left out wait for
    another epoch's order, so very common expressions are seen less often per epoch.
    """
    expressions_of: dict[int, set[int]] = {}
    for image, text in zip(image_of_pair, text_of_pair, strict=True):
        expressions_of.setdefault(image, set()).add(text)
    batches, pending = [], list(order)
    while len(pending) >= batch_size:
        batch: list[int] = []
        images: set[int] = set()
        texts: set[int] = set()
        described: set[int] = set()  # every expression of the batch's images
        for pair in pending:
            image, text = image_of_pair[pair], text_of_pair[pair]
            if image in images or text in described or not texts.isdisjoint(expressions_of[image]):
                continue
            batch.append(pair)
            images.add(image)
            texts.add(text)
            described |= expressions_of[image]
            if len(batch) == batch_size:
                break
        if len(batch) < batch_size:
            break
        batches.append(batch)
        taken = set(batch)
        pending = [pair for pair in pending if pair not in taken]
    return batches


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """As open_clip's training does: no decay on gains, biases, embeddings and the temperature."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (None: left as they are)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(model: torch.nn.Module, data: _TrainPairs, config: TeacherTrainingConfig) -> dict[str, Any]:
    """The contrastive loop: clean shuffled batches, open_clip's ClipLoss, AdamW, warmup + cosine."""
    generator = torch.Generator().manual_seed(config.seed)
    pairs = len(data.image_of_pair)

    def epoch_batches() -> list[list[int]]:
        order = torch.randperm(pairs, generator=generator).tolist()
        return clean_batches(data.image_of_pair, data.text_of_pair, order, config.batch_size)

    batches = epoch_batches()
    if not batches:
        raise ValueError(
            f"{pairs} train pairs do not fill one batch of {config.batch_size} without a shared "
            "expression: lower --batch-size"
        )
    total_steps = len(batches) * config.epochs  # later epochs may form a batch more or less
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    set_lr = cosine_lr(optimizer, config.lr, max(1, round(config.warmup_fraction * total_steps)), total_steps)
    loss_fn = open_clip.loss.ClipLoss()
    image_of_pair, text_of_pair = torch.tensor(data.image_of_pair), torch.tensor(data.text_of_pair)
    # channels_last makes the ResNet tower's CPU convolutions about 1.6x faster; the checkpoint is
    # saved contiguous.
    model.to(memory_format=torch.channels_last).train()
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    step, stopped_early = 0, False
    for epoch in range(config.epochs):
        if epoch > 0:
            batches = epoch_batches()
        flips = torch.rand(pairs, generator=generator) < config.flip_prob
        losses = []
        for batch_pairs in batches[: total_steps - step]:
            batch = torch.tensor(batch_pairs)
            flip = flips[batch]
            pixels = data.pixels[image_of_pair[batch]]
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            text_rows = text_of_pair[batch]
            tokens = torch.where(flip[:, None], data.swapped_tokens[text_rows], data.tokens[text_rows])
            image_features = model.encode_image(pixels.contiguous(memory_format=torch.channels_last))
            text_features = encode_text_trimmed(model, tokens)
            loss = loss_fn(
                F.normalize(image_features, dim=-1),
                F.normalize(text_features, dim=-1),
                model.logit_scale.exp(),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_lr(step)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            losses.append(loss.detach().item())
            step += 1
            if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
                stopped_early = True
                break
        if not losses:  # earlier epochs formed more batches than planned: the schedule is done
            break
        history.append(
            {"epoch": epoch + 1, "steps": len(losses), "loss": round(sum(losses) / len(losses), 4)}
        )
        elapsed = time.perf_counter() - started
        log.info(
            "teacher epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, config.epochs, history[-1]["loss"], elapsed
        )
        if stopped_early:
            break
    model.eval()
    return {
        "steps": step,
        "planned_steps": total_steps,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "train_seconds": round(time.perf_counter() - started, 2),
        "loss_history": history,
        "logit_scale": round(model.logit_scale.detach().exp().item(), 4),
    }


def _save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """The plain state_dict, as open_clip's `load_checkpoint` reads it (safetensors: no pickle)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})


def _copy_model_config(model: str, out: Path) -> str:
    """Keep the architecture beside its weights (a JSON config); an open_clip name is kept as is."""
    source = Path(model)
    if source.suffix != ".json":
        return model
    target = out / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return str(target)


def train_teacher(config: TeacherTrainingConfig) -> dict[str, Any]:
    """Train; write `OUT/teacher.safetensors`, the model config and `OUT/teacher.json`; return the report.

    The report (also the JSON file) holds `checkpoint` and `model_config` (what `epmvg cache build`
    takes as `--pretrained` and `--teacher`, and `TeacherConfig` as `pretrained` and `model`),
    `retrieval` with `trained`, `random` and `chance` (each `image_to_text_r1` and
    `text_to_image_r1`, on `eval["split"]`), and the run's sizes, timings and loss history.
    """
    config.check()
    with torch_threads(config.threads):
        return _train_teacher(config)


def _train_teacher(config: TeacherTrainingConfig) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(config.out)
    train_samples = _usable_samples(config, config.train_split)
    eval_samples = _usable_samples(config, config.eval_split)
    # The random baseline is a cache-path Teacher, so its preprocessing and tokenizer are the cache's.
    baseline = Teacher(
        TeacherConfig(model=config.model, pretrained="none", allow_random=True, crop=config.crop)
    )
    data = _train_pairs(train_samples, baseline)
    evaluation = RetrievalSet.from_samples(eval_samples)
    eval_pixels = _decode(baseline, evaluation.image_paths)
    decode_seconds = time.perf_counter() - started
    log.info(
        "teacher data: %s; %d %s images (%.1f s)",
        data.stats,
        len(evaluation.image_paths),
        config.eval_split,
        decode_seconds,
    )

    model = create_random_model(baseline.model_name, config.seed)
    fit = _fit(model, data, config)

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    _save_checkpoint(model, checkpoint)
    model_config = _copy_model_config(config.model, out)
    # Evaluate what was saved, read back through the cache's own path.
    trained = Teacher(TeacherConfig(model=model_config, pretrained=str(checkpoint), crop=config.crop))

    def scores(teacher: Teacher) -> dict[str, float]:
        return teacher_retrieval(teacher, eval_pixels, evaluation, config.eval_batch_size).as_dict()

    report = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "model_config": model_config,
        "model_name": trained.model_name,
        "embedding_dim": trained.embedding_dim,
        "image_size": trained.image_size,
        "dataset": config.dataset,
        "data_root": str(config.data_root),
        "train": data.stats,
        "eval": {
            "split": config.eval_split,
            "images": len(evaluation.image_paths),
            "texts": len(evaluation.texts),
            "records": len(eval_samples),
        },
        "retrieval": {
            "trained": scores(trained),
            "random": scores(baseline),
            "chance": chance_retrieval_at_1(evaluation.relevant).as_dict(),
            "random_seed": RANDOM_TEACHER_SEED,
        },
        **fit,
        "decode_seconds": round(decode_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "config": {
            key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()
        },
        "cache_command": (
            f"epmvg cache build {config.dataset} --data-root {config.data_root} "
            f"--teacher {model_config} --pretrained {checkpoint}"
        ),
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_retrieval_table(report: dict[str, Any]) -> str:
    """The report's retrieval figures as a small text table."""
    retrieval, evaluation = report["retrieval"], report["eval"]
    lines = [
        f"zero-shot retrieval R@1 on {evaluation['split']} "
        f"({evaluation['images']} images, {evaluation['texts']} distinct expressions)",
        f"{'':<8} {'image→text':>11} {'text→image':>11}",
    ]
    for name in ("trained", "random", "chance"):
        row = retrieval[name]
        lines.append(f"{name:<8} {row['image_to_text_r1']:>11.3f} {row['text_to_image_r1']:>11.3f}")
    return "\n".join(lines)
