"""Evaluation (Acc@0.5 and mean IoU per split, exact under DDP) and single-image prediction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

from pipeline.data import EvalTransform, available_splits
from pipeline.data.decode import read_image_tensor
from pipeline.data.device_batch import sample_pixels, to_device_batch
from pipeline.data.torch_dataset import GroundingDataset
from pipeline.data.transforms import TransformConfig, long_side_size, pad_offsets
from pipeline.engine.checkpoint import CheckpointError, load_checkpoint
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv, EvalShardSampler, gather_objects
from pipeline.engine.frozen_inputs import model_inputs
from pipeline.engine.setup import autocast_factory, cuda_recipe, per_rank_batch, prepare_split, train_device
from pipeline.metrics import accuracy_at, box_iou_pairs, clamp_normalized
from pipeline.student import (
    StudentConfig,
    build_student,
    build_tokenizer,
    load_student_weights,
    make_collate,
    tokenize,
    transform_config_for,
)


@dataclass(frozen=True)
class Prediction:
    index: int  # the record's position in its split file
    iou: float
    box_xyxy: tuple[float, float, float, float]  # predicted box, pixels of the original image


def to_pixels(box_cxcywh: torch.Tensor, image_size: torch.Tensor, config: TransformConfig) -> torch.Tensor:
    """Normalized input coordinates → original-image pixels (xyxy): the eval transform undone.

    The eval transform resizes the longest side to S (each axis by its own rounded size) and pads
    where `config.pad_position` says; both are undone per image, so centred padding maps back too.
    """
    xyxy = box_convert(box_cxcywh, "cxcywh", "xyxy") * config.image_size
    placements = []
    for width, height in image_size.tolist():
        new_width, new_height = long_side_size(width, height, config.image_size)
        top, left = pad_offsets(config, new_height, new_width)
        placements.append([left, top, width / new_width, height / new_height])
    placement = torch.tensor(placements, dtype=xyxy.dtype, device=xyxy.device)
    offset, scale = placement[:, [0, 1, 0, 1]], placement[:, [2, 3, 2, 3]]
    return (xyxy - offset) * scale


def eval_loader(
    dataset: GroundingDataset,
    collate: Callable,
    env: DistEnv,
    batch_size: int,
    workers: int,
    persistent: bool = True,
) -> DataLoader:
    """This rank's share of a split, each record exactly once; with `persistent` workers a loader kept
    for the per-epoch validation starts its processes once per run."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalShardSampler(len(dataset), env),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0 and persistent,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG (training's) untouched
    )


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    loader: DataLoader,
    env: DistEnv,
    device: torch.device,
    autocast: Callable,
    transform_config: TransformConfig,
) -> list[Prediction]:
    """Every record of the loader's split exactly once across ranks (`eval_loader`), gathered on
    every rank; pixel boxes undo `transform_config`'s eval transform."""
    model.eval()
    local: list[Prediction] = []
    for batch in loader:
        batch = to_device_batch(batch, transform_config, device)
        with autocast():
            output = model(**model_inputs(batch, device))
        box = clamp_normalized(box_convert(output.box.float().cpu(), "cxcywh", "xyxy"))
        ious = box_iou_pairs(box, box_convert(batch["box"], "cxcywh", "xyxy"))
        pixels = to_pixels(box_convert(box, "xyxy", "cxcywh"), batch["image_size"], transform_config)
        for i, index in enumerate(batch["index"].tolist()):
            local.append(Prediction(index, float(ious[i]), tuple(float(v) for v in pixels[i])))
    predictions = gather_objects(local, env)
    return sorted(predictions, key=lambda p: p.index)


def summarize(predictions: list[Prediction]) -> dict[str, float]:
    """Acc@0.5 (IoU >= 0.5) and mean IoU over a split."""
    if not predictions:
        return {"acc@0.5": float("nan"), "miou": float("nan"), "n": 0}
    ious = torch.tensor([p.iou for p in predictions])
    return {"acc@0.5": float(accuracy_at(ious, 0.5)), "miou": float(ious.mean()), "n": len(predictions)}


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'split':<10} {'Acc@0.5':>8} {'mIoU':>7} {'n':>7}"]
    for split, row in results.items():
        lines.append(f"{split:<10} {100 * row['acc@0.5']:>7.2f}% {row['miou']:>7.3f} {row['n']:>7d}")
    return "\n".join(lines)


def load_student(checkpoint: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict, dict]:
    """The student of a checkpoint with its weights, plus the student and train configs it carries."""
    payload = load_checkpoint(checkpoint)
    try:
        student_config = StudentConfig.from_dict(payload["student_config"])
        model = build_student(student_config, pretrained=False)  # the checkpoint holds every weight
        load_student_weights(model, payload)
    except (TypeError, KeyError, RuntimeError) as exc:  # a payload with the right keys but wrong contents
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{checkpoint}: its student cannot be rebuilt ({first_line})") from exc
    return model.to(device).eval(), payload["student_config"], payload["train_config"]


@torch.no_grad()
def predict_image(model: torch.nn.Module, image_path: Path, text: str) -> tuple[float, float, float, float]:
    """The box (pixels xyxy) the student grounds `text` to in one image."""
    config = model.config
    image = read_image_tensor(image_path)
    transform_config = transform_config_for(config)
    sample = EvalTransform(transform_config)(image, None, text)
    pixels, pixel_mask = sample_pixels(sample, transform_config.mean, transform_config.std)
    token_ids, token_mask = tokenize([text], build_tokenizer(config), config.max_query_len)
    device = next(model.parameters()).device
    output = model(
        pixels[None].to(device),
        pixel_mask[None].to(device),
        token_ids.to(device),
        token_mask.to(device),
    )
    box = to_pixels(
        output.box.float().cpu(), torch.tensor([[image.shape[-1], image.shape[-2]]]), transform_config
    )[0]
    return tuple(float(v) for v in box)


def data_config_for(
    train_config: dict, data_root: Path, dataset: str | None, skip_missing: bool
) -> TrainConfig:
    """A checkpoint's run config pointed at `data_root` (and `dataset`, default its own), for reading
    its splits whole, without a teacher."""
    config = TrainConfig.from_dict({**train_config, "distill": "none", "data_root": str(data_root)})
    config.skip_missing = skip_missing
    config.max_samples = None
    if dataset:
        config.dataset = dataset
    return config


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path,
    dataset: str | None,
    splits: list[str],
    batch_size: int | None,
    device: str,
    skip_missing: bool,
    workers: int = 0,
) -> dict[str, dict[str, float]]:
    """Per-split Acc@0.5 / mIoU of a checkpoint on a dataset (its own by default), evaluated as its
    run evaluated: the run's autocast (bf16 on CUDA when it trained with amp) and CUDA recipe, its
    batch (`batch_size` None; one process takes the whole global batch), `workers` loader processes."""
    env = DistEnv()
    model, _, train_config = load_student(checkpoint, device)
    config = data_config_for(train_config, data_root, dataset, skip_missing)
    torch_device = train_device(device, env)
    cuda_recipe(torch_device, config)
    autocast = autocast_factory(torch_device, config.amp)  # the trainer's own factory
    batch = per_rank_batch(config.batch_size if batch_size is None else batch_size, env.world_size)
    splits = splits or [s for s in available_splits(config.dataset, data_root) if s != config.train_split]
    transform_config = transform_config_for(model.config)
    transform = EvalTransform(transform_config)
    collate = make_collate(model.config)
    results = {}
    for split in splits:
        data = GroundingDataset(prepare_split(config, split), transform, seed=0)
        loader = eval_loader(data, collate, env, batch, workers=workers, persistent=False)
        predictions = predict_split(model, loader, env, torch_device, autocast, transform_config)
        results[split] = summarize(predictions)
    return results
