"""The CNN of the visual branch: a timm features-only model giving one stage (by default its last), or
the last three (`PyramidBackbone`, LGR-NET's strides 8/16/32).

Maps leave both wrappers as NCHW: a body that emits channels-last maps (timm's Swin and other
transformers with `features_only`, `output_fmt` "NHWC") is permuted once here, so a student never
sees the difference."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from pipeline.student.config import StudentConfig
from pipeline.student.weights import (
    PACKAGE_WEIGHTS,
    WeightsUnavailableError,
    backbone_weights_hint,
    load_matching_state_dict,
    shipped_backbone_file,
)


def emits_channels_last(body: nn.Module) -> bool:
    """Whether a timm features-only body returns [B, h, w, C] maps (its `output_fmt`, NCHW if absent)."""
    return str(getattr(body, "output_fmt", "NCHW")).upper().endswith("NHWC")


def body_levels(body: nn.Module, pixels: Tensor, channels_last: bool) -> list[Tensor]:
    """The body's feature maps, each as [B, C, h, w]."""
    levels = body(pixels)
    if channels_last:
        levels = [level.permute(0, 3, 1, 2) for level in levels]
    return levels


class ActivationDtypeFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d with its output in the input's dtype: the statistics stay fp32
    (folded into one scale and shift in fp32), but the fp32 buffers no longer promote bf16 activations
    to fp32, which doubled the backbone's activation memory and traffic under autocast."""

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, H, W], any float dtype; returns the same dtype
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(
            shift.to(x.dtype).reshape(1, -1, 1, 1), x, scale.to(x.dtype).reshape(1, -1, 1, 1)
        )


def keep_activation_dtype(module: nn.Module) -> nn.Module:
    """`module` with each FrozenBatchNorm2d (what timm's `freeze_batch_norm_2d` makes) replaced by
    `ActivationDtypeFrozenBatchNorm2d`, its buffers (and so its state-dict keys) unchanged."""
    if type(module) is FrozenBatchNorm2d:
        kept = ActivationDtypeFrozenBatchNorm2d(module.weight.shape[0], eps=module.eps)
        kept.load_state_dict(module.state_dict())
        return kept.to(module.weight.device)
    for name, child in module.named_children():
        replaced = keep_activation_dtype(child)
        if replaced is not child:
            module.add_module(name, replaced)
    return module


class Backbone(nn.Module):
    """timm CNN → last feature map [B, C, h, w] and the pixel mask downsampled to it (True = padding)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.num_channels: int = body.feature_info.channels()[-1]
        self.stride: int = body.feature_info.reduction()[-1]
        self.nhwc = emits_channels_last(body)

    def forward(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        features = body_levels(self.body, pixels, self.nhwc)[-1]
        mask = F.interpolate(pixel_mask[:, None].float(), size=features.shape[-2:], mode="nearest")
        return features, mask[:, 0].bool()


class PyramidBackbone(nn.Module):
    """timm CNN → its last three feature maps (finest first) and the pixel mask at the coarsest one.

    LGR-NET fuses strides 8/16/32; each level must halve the previous one's resolution.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.level_channels: list[int] = body.feature_info.channels()
        reductions = body.feature_info.reduction()
        if any(coarse != 2 * fine for fine, coarse in zip(reductions, reductions[1:], strict=False)):
            raise ValueError(f"a feature pyramid needs strides that double per level, got {reductions}")
        self.stride: int = reductions[-1]
        self.nhwc = emits_channels_last(body)

    def forward(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[list[Tensor], Tensor]:
        levels = body_levels(self.body, pixels, self.nhwc)
        mask = F.interpolate(pixel_mask[:, None].float(), size=levels[-1].shape[-2:], mode="nearest")
        return levels, mask[:, 0].bool()


PYRAMID_LEVELS = (-3, -2, -1)


def build_backbone(config: StudentConfig, pretrained: bool = True) -> Backbone:
    """The timm backbone with its weights loaded, BatchNorm frozen and leading stages frozen per `config`.

    pretrained=False skips loading weights (a checkpoint will overwrite them).
    """
    return Backbone(_build_body(config, pretrained, (config.backbone_out_index,)))


def build_pyramid_backbone(config: StudentConfig, pretrained: bool = True) -> PyramidBackbone:
    """`build_backbone` giving the last three feature levels (strides 8/16/32 for ResNets)."""
    return PyramidBackbone(_build_body(config, pretrained, PYRAMID_LEVELS))


def _build_body(config: StudentConfig, pretrained: bool, out_indices: tuple[int, ...]) -> nn.Module:
    body = _create_body(config, pretrained and config.backbone_weights == "timm", out_indices)
    if pretrained and config.backbone_weights not in ("timm", "none"):
        load_matching_state_dict(body, _weights_file(config))
    if config.freeze_bn:
        # after loading: frozen BN has no step counters to load
        body = keep_activation_dtype(freeze_batch_norm_2d(body))
    freeze_leading_stages(body, config.frozen_backbone_stages)
    if config.channels_last:
        body = body.to(memory_format=torch.channels_last)
    return body


def _weights_file(config: StudentConfig) -> Path:
    if config.backbone_weights == PACKAGE_WEIGHTS:
        return shipped_backbone_file(config.backbone)
    path = Path(config.backbone_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_weights={config.backbone_weights!r} is neither 'timm', 'package', 'none' "
            "nor an existing file"
        )
    return path


def _create_body(config: StudentConfig, timm_pretrained: bool, out_indices: tuple[int, ...]) -> nn.Module:
    try:
        return timm.create_model(
            config.backbone,
            pretrained=timm_pretrained,
            features_only=True,
            out_indices=out_indices,
            **config.backbone_options,
        )
    except OSError as error:  # hub download failed: no network and nothing cached
        raise WeightsUnavailableError(f"{backbone_weights_hint(config.backbone)} ({error})") from error


def freeze_leading_stages(body: nn.Module, stages: int) -> None:
    """Stop gradients for every parameter up to the end of feature level `stages` (stem level first)."""
    if stages <= 0:
        return
    levels = body.feature_info.info
    if stages > len(levels):
        raise ValueError(
            f"frozen_backbone_stages={stages}, but the backbone has {len(levels)} feature levels"
        )
    last_frozen = levels[stages - 1]["module"]
    # Feature wrappers may flatten nested names ("blocks.1" → "blocks_1").
    targets = {last_frozen, last_frozen.replace(".", "_")}
    inside_prefixes = tuple(f"{name}." for name in targets)
    reached = False
    # named_modules() follows registration order, which is forward order for timm CNNs: everything
    # before the level, then the level itself. A parameter-free level (ResNet's stem activation) works too.
    for name, module in body.named_modules():
        inside = name in targets or name.startswith(inside_prefixes)
        if reached and not inside:
            return
        reached = reached or inside
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)


def pixel_normalization(config: StudentConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's pretrained weights expect, e.g. 0.5/0.5 for EfficientNet-Lite."""
    pretrained_config = timm.get_pretrained_cfg(config.backbone)
    if pretrained_config is None:
        raise ValueError(f"timm has no pretrained config for backbone {config.backbone!r}")
    return tuple(pretrained_config.mean), tuple(pretrained_config.std)
