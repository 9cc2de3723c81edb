"""Does the student look at the image? Two probes for the text shortcut of grounding models.

A grounding model can lower its loss from the query alone ("the left ..." → a box on the left) and
stop reading the image. These probes tell, for one batch of a split:

- box_dependence: how far the predicted box (cx, cy, w, h) moves when only the image changes (the
  batch's images under the first sample's text) and when only the text changes (the first sample's
  image under the batch's texts), as standard deviations over the batch;
- reg_attention: where the box-predicting token's attention goes in the first layer that mixes it
  with the other tokens (itself, visual tokens, text tokens), averaged over the batch: TransVG's
  [REG] in its first fusion layer, LGR-NET's prediction token in its first TCA (which sees no text
  tokens: the text share is 0 there). Each student provides it (`StudentBase.prediction_attention`),
  so the probes work for every registered architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.student import StudentBase


@torch.no_grad()
def box_dependence(model: StudentBase, batch: dict[str, Any]) -> dict[str, float]:
    """Mean over (cx, cy, w, h) of the box's std when only the image, or only the text, varies."""
    pixels, pixel_mask = batch["pixels"], batch["pixel_mask"]
    token_ids, token_mask = batch["token_ids"], batch["token_mask"]
    one_text = (token_ids[:1].expand_as(token_ids), token_mask[:1].expand_as(token_mask))
    one_image = (pixels[:1].expand_as(pixels), pixel_mask[:1].expand_as(pixel_mask))
    images_vary = model(pixels, pixel_mask, *one_text).box
    texts_vary = model(*one_image, token_ids, token_mask).box
    return {
        "box_std_over_images": float(images_vary.float().std(0).mean()),
        "box_std_over_texts": float(texts_vary.float().std(0).mean()),
        "target_box_std": float(batch["box"].float().std(0).mean()),
    }


@torch.no_grad()
def reg_attention(model: StudentBase, batch: dict[str, Any]) -> dict[str, float]:
    """Share of the box-predicting token's attention on itself / visual / text tokens in the first
    layer that mixes them."""
    raw = (batch[key] for key in ("pixels", "pixel_mask", "token_ids", "token_mask"))
    pixels, pixel_mask, token_ids, token_mask = raw
    features, pad, states = model.resolve_inputs(pixels, pixel_mask, token_ids, token_mask)
    shares = model.prediction_attention(features, pad, states, token_mask)
    return {f"reg_attention_{part}": float(shares[part].mean()) for part in ("self", "visual", "text")}


def diagnose(model: StudentBase, batch: dict[str, Any]) -> dict[str, float]:
    """Both probes on one collated batch made ready on the model's device (`to_device_batch`: float
    pixels and mask); eval mode: dropout would blur them."""
    model.eval()
    return {**box_dependence(model, batch), **reg_attention(model, batch)}


def diagnose_checkpoint(
    checkpoint: Path, data_root: Path, split: str, samples: int, skip_missing: bool = False
) -> dict[str, float]:
    """The probes on the first `samples` records of a split of the checkpoint's dataset."""
    from pipeline.data import EvalTransform, GroundingDataset
    from pipeline.data.device_batch import to_device_batch
    from pipeline.engine.evaluate import data_config_for, load_student
    from pipeline.engine.setup import prepare_split
    from pipeline.student import make_collate, transform_config_for

    model, _, train_config = load_student(checkpoint)
    config = data_config_for(train_config, data_root, None, skip_missing)
    records = prepare_split(config, split)[:samples]
    if len(records) < 2:
        raise ValueError(f"split {split!r} has {len(records)} usable records; the probes need at least 2")
    dataset = GroundingDataset(records, EvalTransform(transform_config_for(model.config)), seed=0)
    batch = make_collate(model.config)([dataset[i] for i in range(len(dataset))])
    batch = to_device_batch(batch, dataset.transform.config, next(model.parameters()).device)
    return {"split": split, "samples": len(records), **diagnose(model, batch)}
