"""TransVG's DETR initialisation of the visual branch: name mapping, coverage, safe loading."""

import argparse
import os
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.student import build_student, param_groups, student_preset
from pipeline.student.detr import DetrWeightsError

DETR_LAYER_NAMES = {"ffn.0.": "linear1.", "ffn.3.": "linear2.", "attn_norm.": "norm1.", "ffn_norm.": "norm2."}


def detr_name(ours: str) -> str:
    """Written out independently of the loader: DETR's key for one of our visual-branch keys."""
    if ours.startswith("backbone.body."):
        return "backbone.0.body." + ours.removeprefix("backbone.body.")
    if ours.startswith("visual_encoder.layers."):
        layer, rest = ours.removeprefix("visual_encoder.layers.").split(".", 1)
        for name, detr in DETR_LAYER_NAMES.items():
            rest = detr + rest.removeprefix(name) if rest.startswith(name) else rest
        return f"transformer.encoder.layers.{layer}.{rest}"
    return ours


def visual_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = ("backbone.", "input_proj.", "visual_encoder.")
    return {
        key: value
        for key, value in model.state_dict().items()
        if key.startswith(prefixes) and not key.endswith("num_batches_tracked")
    }


def save_detr_checkpoint(path: Path, weights: dict[str, torch.Tensor]) -> Path:
    """The layout of DETR's training checkpoints, decoder and heads included."""
    model = dict(weights)
    model["transformer.decoder.layers.0.linear1.weight"] = torch.randn(8, 4)
    model["class_embed.weight"] = torch.randn(92, 256)
    model["query_embed.weight"] = torch.randn(100, 256)
    torch.save({"model": model, "args": argparse.Namespace(backbone="resnet50", lr=1e-4), "epoch": 299}, path)
    return path


def test_detr_checkpoint_initialises_backbone_projection_and_encoder(tmp_path):
    source = build_student(student_preset("tiny"))
    weights = {detr_name(key): value for key, value in visual_state(source).items()}
    path = save_detr_checkpoint(tmp_path / "detr.pth", weights)
    model = build_student(student_preset("tiny", visual_init=str(path)))
    loaded = visual_state(model)
    assert loaded.keys() == visual_state(source).keys()
    assert all(torch.equal(loaded[key], value) for key, value in visual_state(source).items())
    lrs = {group["name"]: group["lr"] for group in param_groups(model, lr=1e-4, lr_pretrained=1e-5)}
    assert lrs["visual_transformer"] == lrs["backbone"] == 1e-5 and lrs["head"] == 1e-4


def test_detr_r50_names_fit_the_paper_student(tmp_path):
    """DETR's backbone is torchvision's ResNet-50; ours is timm's: the names must line up."""
    resnet = torchvision.models.resnet50()
    weights = {
        f"backbone.0.body.{key}": value
        for key, value in resnet.state_dict().items()
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked")
    }
    weights["input_proj.weight"], weights["input_proj.bias"] = torch.randn(256, 2048, 1, 1), torch.randn(256)
    shapes = {"self_attn.in_proj_weight": (768, 256), "self_attn.in_proj_bias": (768,)}
    shapes |= {"self_attn.out_proj.weight": (256, 256), "self_attn.out_proj.bias": (256,)}
    shapes |= {"linear1.weight": (2048, 256), "linear1.bias": (2048,), "linear2.weight": (256, 2048)}
    shapes |= {"linear2.bias": (256,)} | {f"norm{i}.{p}": (256,) for i in (1, 2) for p in ("weight", "bias")}
    for layer in range(6):
        for name, shape in shapes.items():
            weights[f"transformer.encoder.layers.{layer}.{name}"] = torch.randn(shape)
    path = save_detr_checkpoint(tmp_path / "detr-r50.pth", weights)
    text = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
    config = student_preset("transvg-r50-random", text_config_overrides=text, visual_init=str(path))
    model = build_student(config)
    state, reference = model.state_dict(), resnet.state_dict()
    assert torch.equal(state["backbone.body.layer4.2.conv3.weight"], reference["layer4.2.conv3.weight"])
    assert torch.equal(state["backbone.body.bn1.running_var"], reference["bn1.running_var"])
    assert torch.equal(
        state["visual_encoder.layers.5.ffn.3.weight"], weights["transformer.encoder.layers.5.linear2.weight"]
    )


def test_a_checkpoint_with_too_few_encoder_layers_is_refused(tmp_path):
    source = build_student(student_preset("tiny", visual_layers=2))
    weights = {detr_name(key): value for key, value in visual_state(source).items()}
    path = save_detr_checkpoint(tmp_path / "detr.pth", weights)
    with pytest.raises(DetrWeightsError, match="lacks .* visual-branch weights"):
        build_student(student_preset("tiny", visual_layers=3, visual_init=str(path)))
    with pytest.raises(DetrWeightsError, match="no DETR checkpoint"):
        build_student(student_preset("tiny", visual_init=str(tmp_path / "absent.pth")))


class _Exploit:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Exploit(sentinel)}, path)
    with pytest.raises(DetrWeightsError, match="not a readable DETR checkpoint"):
        build_student(student_preset("tiny", visual_init=str(path)))
    assert not sentinel.exists()
