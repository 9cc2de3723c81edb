"""One interface per student: the registry is the one list, outputs share a base, the forward template,
declared pretrained branches, channels-last backbones, and per-architecture ablation grids."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.engine.config import TrainConfig
from pipeline.student import (
    STUDENTS,
    Branch,
    LGRNetOutput,
    StudentOutput,
    TransVG,
    TransVGOutput,
    build_student,
    build_tokenizer,
    param_groups,
    student_preset,
    tokenize,
)
from pipeline.student.backbone import Backbone, build_backbone
from pipeline.studies.ablations import UNFROZEN_TEACHER, ablation_config, ablation_grid, grid_for

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
# A Swin small enough for a test: timm's features_only Swin emits NHWC maps.
TINY_SWIN = {
    "backbone": "swin_tiny_patch4_window7_224",
    "backbone_weights": "none",
    "backbone_options": {
        "embed_dim": 32,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "img_size": 64,
        "window_size": 2,
    },
    "frozen_backbone_stages": 0,
    "image_size": 64,
}


def inputs(config, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    mask = torch.zeros(batch, config.image_size, config.image_size, dtype=torch.bool)
    mask[0, :, config.image_size // 2 :] = True
    token_ids, token_mask = tokenize(
        ["the red ball", "a blue square on the left"][:batch], build_tokenizer(config), 20
    )
    return pixels, mask, token_ids, token_mask


# the registry ------------------------------------------------------------------------------------


def test_the_config_checks_its_architecture_against_the_registry(monkeypatch):
    with pytest.raises(ValueError, match="architecture must be one of"):
        student_preset("tiny", architecture="lgr")
    # A new entry is all a student needs to be configurable: there is no second list.
    monkeypatch.setitem(STUDENTS, "lgr", dataclasses.replace(STUDENTS["transvg"], name="lgr"))
    assert student_preset("tiny", architecture="lgr").architecture == "lgr"


def test_importing_the_registry_imports_no_model():
    code = (
        "import sys, importlib.util as u; sys.modules['pipeline.student'] = type(sys)('pipeline.student');"
        "sys.modules['pipeline.student'].__path__ = ['pipeline/student'];"
        "import pipeline.student.registry as r, pipeline.student.config as c;"
        "print(sorted(m for m in ('pipeline.student.model', 'pipeline.student.lgrnet', 'timm') "
        "if m in sys.modules)); print(r.STUDENTS['lgrnet'].model_class.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "LGRNet"]


# outputs and the forward template ----------------------------------------------------------------


@pytest.mark.parametrize(("preset", "kind"), [("tiny", TransVGOutput), ("lgrnet-tiny", LGRNetOutput)])
def test_every_output_extends_one_base_and_both_input_layouts_agree(preset, kind):
    torch.manual_seed(0)
    config = student_preset(preset, image_size=64)
    model = build_student(config).eval()
    pixels, mask, token_ids, token_mask = inputs(config)
    with torch.no_grad():
        raw = model(pixels, mask, token_ids, token_mask)
        features, pad, states = model.resolve_inputs(pixels, mask, token_ids, token_mask)
        precomputed = model(
            backbone_features=features, feature_pad=pad, text_states=states, token_mask=token_mask
        )
    assert type(raw) is kind and isinstance(raw, StudentOutput)
    for field in dataclasses.fields(raw):
        a, b = getattr(raw, field.name), getattr(precomputed, field.name)
        assert (a is None and b is None) or torch.equal(a, b), field.name


# parameter groups --------------------------------------------------------------------------------


def test_param_groups_follow_the_branches_a_student_declares():
    torch.manual_seed(0)
    model = build_student(student_preset("tiny"))

    class Declared(TransVG):
        def pretrained_branches(self):
            return {"box": Branch((self.box_head,), True), **super().pretrained_branches()}

    model.__class__ = Declared
    groups = {group["name"]: group for group in param_groups(model, lr=1e-4, lr_pretrained=1e-5)}
    assert list(groups) == ["box", "backbone", "text_encoder", "head"]
    assert groups["box"]["lr"] == 1e-5 and groups["backbone"]["lr"] == 1e-4  # tiny's backbone is random
    assert {id(p) for p in groups["box"]["params"]} == {id(p) for p in model.box_head.parameters()}
    assert not {id(p) for p in model.box_head.parameters()} & {id(p) for p in groups["head"]["params"]}


# channels-last backbones ---------------------------------------------------------------------------


def test_a_swin_backbone_gives_nchw_maps_at_its_stride():
    config = student_preset("tiny", **TINY_SWIN)
    backbone = build_backbone(config, pretrained=False).eval()  # no stochastic depth
    assert isinstance(backbone, Backbone) and backbone.nhwc and backbone.stride == 32
    pixels, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    features, pad = backbone(pixels, mask)
    assert features.shape == (2, backbone.num_channels, 2, 2) and pad.shape == (2, 2, 2)
    # the same map as the body's own NHWC output, permuted once
    assert torch.equal(features, backbone.body(pixels)[-1].permute(0, 3, 1, 2))


def test_a_tiny_transvg_runs_on_a_swin_backbone():
    torch.manual_seed(0)
    config = student_preset("tiny", **TINY_SWIN)
    model = build_student(config)
    assert model.grid_size == 2
    output = model(*inputs(config))
    assert output.box.shape == (2, 4) and output.vls.shape == (2, config.hidden_dim)
    output.box.sum().backward()
    assert model.backbone.body.layers_0.blocks[0].attn.qkv.weight.grad is not None


# ablation grids ----------------------------------------------------------------------------------


def base_config(**changes) -> TrainConfig:
    return TrainConfig(
        **{"dataset": "shapes", "cache": Path("store"), "out": Path("out"), "student": "tiny", **changes}
    )


def test_the_epmvg_grid_trains_the_baselines_lambda_once():
    grid = ablation_grid()
    assert "lambda=1.0" not in grid and {"lambda=0.0", "lambda=2.0"} <= set(grid)
    assert UNFROZEN_TEACHER not in grid and UNFROZEN_TEACHER not in grid_for(base_config())
    base = base_config()
    assert list(grid_for(base)) == list(grid)  # looked up through the registry
    with_two = grid_for(dataclasses.replace(base, loss=dataclasses.replace(base.loss, giou_weight=2.0)))
    assert "lambda=2.0" not in with_two and "lambda=1.0" in with_two


def test_the_unfrozen_teacher_variant_is_opt_in_and_needs_the_teachers_weights(tmp_path):
    with pytest.raises(ValueError, match="not at hand") as refused:
        grid_for(base_config(), unfrozen_teacher=True)  # the default teacher: an open_clip tag
    assert "\n" not in str(refused.value)
    random = base_config(teacher_model=TINY_TEACHER, teacher_pretrained="none", allow_random_teacher=True)
    grid = grid_for(random, unfrozen_teacher=True)
    assert list(grid)[-1] == UNFROZEN_TEACHER
    variant = ablation_config(random, UNFROZEN_TEACHER, grid[UNFROZEN_TEACHER])
    assert (variant.distill, variant.teacher_trainable, variant.teacher_model) == (
        "online",
        True,
        TINY_TEACHER,
    )
    with pytest.raises(ValueError, match="not at hand"):  # random, but not confirmed
        grid_for(base_config(teacher_pretrained="none"), unfrozen_teacher=True)
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"")
    assert UNFROZEN_TEACHER in grid_for(base_config(teacher_pretrained=str(weights)), unfrozen_teacher=True)
    with pytest.raises(ValueError, match="EpmVG's grid"):
        grid_for(base_config(student="lgrnet-tiny"), unfrozen_teacher=True)


def test_the_cli_refuses_an_unfrozen_teacher_without_its_weights_in_one_line(tmp_path):
    common = [sys.executable, "-m", "pipeline.cli"]
    cases = [
        ["train", "shapes", "--data-root", str(tmp_path), "--out", str(tmp_path / "a"), "--unfrozen-teacher"],
        ["ablations", "shapes", "--data-root", str(tmp_path), "--cache", str(tmp_path), "--out",
         str(tmp_path / "b"), "--unfrozen-teacher"],
    ]  # fmt: skip
    messages = []
    for args in cases:
        done = subprocess.run([*common, *args], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr[-2000:]
        messages.append(done.stderr.strip())
    assert "add --ablations" in messages[0]
    assert "not at hand" in messages[1] and len(messages[1].splitlines()) == 1
