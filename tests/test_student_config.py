"""StudentConfig: presets, overrides, validation and the JSON round trip checkpoints rely on."""

import json

import pytest

from pipeline.student import (
    StudentConfig,
    list_student_presets,
    parse_field_assignments,
    pixel_normalization,
    student_preset,
)


def test_presets_are_listed():
    assert {"transvg-r50", "small", "tiny"} <= set(list_student_presets())


@pytest.mark.parametrize("name", ["transvg-r50", "small", "tiny"])
def test_config_round_trips_through_json(name: str):
    config = student_preset(name)
    assert StudentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_transvg_preset_is_the_paper_default():
    assert student_preset("transvg-r50") == StudentConfig()
    config = StudentConfig()
    assert (config.backbone, config.text_encoder, config.image_size) == ("resnet50", "bert-base-uncased", 640)
    assert (config.hidden_dim, config.heads, config.ffn_dim) == (256, 8, 2048)
    assert (config.visual_layers, config.vl_layers, config.max_query_len) == (6, 6, 20)
    assert config.freeze_bn


def test_small_preset_uses_the_shipped_weights():
    config = student_preset("small")
    assert config.backbone == "tf_efficientnet_lite0" and config.backbone_weights == "package"
    assert config.text_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.text_encoder_weights == "pretrained"


def test_overrides_apply_on_top_of_a_preset():
    config = student_preset("tiny", image_size=96, max_query_len=12)
    assert (config.image_size, config.max_query_len, config.backbone) == (96, 12, "test_resnet")


def test_unknown_preset_and_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown student preset"):
        student_preset("huge")
    with pytest.raises(ValueError, match="unknown StudentConfig fields"):
        student_preset("tiny", hidden_size=10)


def test_command_line_assignments_take_each_fields_type():
    overrides = parse_field_assignments(
        [
            "backbone_out_index=-2",
            "freeze_bn=false",
            "dropout=0.05",
            "text_layers_used=none",
            "visual_init=/weights/detr.pth",
            'text_config_overrides={"num_hidden_layers": 2}',
            " heads = 4 ",
        ]
    )
    assert overrides == {
        "backbone_out_index": -2,
        "freeze_bn": False,
        "dropout": 0.05,
        "text_layers_used": None,
        "visual_init": "/weights/detr.pth",
        "text_config_overrides": {"num_hidden_layers": 2},
        "heads": 4,
    }
    config = student_preset("tiny", **overrides)
    assert (config.backbone_out_index, config.freeze_bn, config.heads) == (-2, False, 4)
    assert parse_field_assignments(["text_layers_used=1"]) == {"text_layers_used": 1}


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("backbone_out_index", "FIELD=VALUE"),
        ("=3", "FIELD=VALUE"),
        ("hidden_size=10", "unknown StudentConfig field 'hidden_size'"),
        ("vl_layers=two", "vl_layers='two': expected int"),
        ("freeze_bn=maybe", "expected bool"),
        ("heads=none", "expected int"),  # not optional: none is no escape
        ("text_config_overrides=[1]", "expected dict"),
        ("text_config_overrides={bad json", "expected dict"),
    ],
)
def test_bad_command_line_assignments_are_named(assignment: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_field_assignments([assignment])


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(hidden_dim=100, heads=8)
    with pytest.raises(ValueError, match="text_encoder_weights"):
        StudentConfig(text_encoder_weights="random")


def test_pixel_normalization_follows_the_backbone():
    assert pixel_normalization(student_preset("small")) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert pixel_normalization(student_preset("transvg-r50")) == imagenet


def test_random_r50_preset_builds_the_paper_architecture_offline():
    """The benchmark stand-in for transvg-r50: ResNet-50 and BERT-base shapes, no download needed."""
    import timm

    from pipeline.student import build_student

    paper, stand_in = student_preset("transvg-r50"), student_preset("transvg-r50-random")
    shared = ("backbone", "frozen_backbone_stages", "freeze_bn", "hidden_dim", "visual_layers", "vl_layers")
    assert all(getattr(paper, name) == getattr(stand_in, name) for name in shared)
    model = build_student(stand_in)
    reference = timm.create_model("resnet50", features_only=True, out_indices=(-1,))
    ours = {key: value.shape for key, value in model.backbone.body.state_dict().items()}
    expected = {
        key: value.shape
        for key, value in reference.state_dict().items()
        if not key.endswith("num_batches_tracked")  # frozen BatchNorm keeps no counter
    }
    assert ours == expected
    # BERT-base-uncased without its pooler: 109,482,240 - (768 * 768 + 768) parameters.
    assert sum(p.numel() for p in model.text_encoder.parameters()) == 108_891_648
    assert model.text_encoder.config.vocab_size == 30522
