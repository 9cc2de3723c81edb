"""The TransVG student on the random `tiny` preset: shapes, padding masks, gradients, optimizer groups."""

import dataclasses
import functools
import pickle

import pytest
import torch

from pipeline.criterion import LossTargets
from pipeline.student import (
    STUDENTS,
    StudentConfig,
    TransVG,
    build_student,
    build_tokenizer,
    param_groups,
    student_preset,
    tokenize,
)
from pipeline.student.position import sine_position_encoding

TEXTS = ["the red ball on the left", "man in a blue shirt", "dog", "second car from the right"]


@pytest.fixture(scope="module")
def config() -> StudentConfig:
    return student_preset("tiny")


@pytest.fixture(scope="module")
def model(config: StudentConfig) -> TransVG:
    torch.manual_seed(0)
    return build_student(config).eval()


@pytest.fixture(scope="module")
def tokenizer(config: StudentConfig):
    return build_tokenizer(config)


def letterboxed(
    batch: int, size: int, valid: tuple[int, int], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose top-left valid[0] x valid[1] pixels are content; the rest is padding (zeros)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(batch, 3, size, size)
    pixels[:, :, : valid[0], : valid[1]] = torch.randn(batch, 3, *valid, generator=generator)
    mask = torch.ones(batch, size, size, dtype=torch.bool)
    mask[:, : valid[0], : valid[1]] = False
    return pixels, mask


def run(model: TransVG, pixels, pixel_mask, token_ids, token_mask):
    with torch.no_grad():
        return model(pixels, pixel_mask, token_ids, token_mask)


def assert_same_output(a, b, atol: float = 1e-5) -> None:
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        name, x, y = field.name, getattr(a, field.name), getattr(b, field.name)
        if x is None or y is None:
            assert x is y, f"{name}: present in only one output"
            continue
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=f"{name} differs")


def test_output_shapes_and_box_range(model, config, tokenizer):
    pixels, pixel_mask = letterboxed(4, config.image_size, (96, 128))
    token_ids, token_mask = tokenize(TEXTS, tokenizer, config.max_query_len)
    output = run(model, pixels, pixel_mask, token_ids, token_mask)
    assert output.box.shape == (4, 4)
    assert output.vls.shape == output.cls.shape == (4, config.hidden_dim)
    assert ((output.box > 0) & (output.box < 1)).all()
    assert output.cell_logits is None  # no cell head in the preset
    assert torch.isfinite(torch.cat([output.box, output.vls, output.cls], dim=1)).all()


def test_tokenize_pads_truncates_and_keeps_sep(tokenizer):
    long_text = " ".join(["word"] * 50)
    token_ids, token_mask = tokenize(["dog", long_text], tokenizer, max_len=8)
    assert token_ids.dtype == torch.long and token_mask.dtype == torch.bool
    assert token_ids.shape == token_mask.shape == (2, 8)
    assert token_mask[0].tolist() == [True] * 3 + [False] * 5  # [CLS] dog [SEP] + padding
    assert token_mask[1].all()
    assert token_ids[1, -1].item() == tokenizer.sep_token_id
    assert token_ids[0, 2].item() == tokenizer.sep_token_id


def test_extra_text_padding_does_not_change_the_output(model, config, tokenizer):
    pixels, pixel_mask = letterboxed(4, config.image_size, (128, 80))
    short_ids, short_mask = tokenize(TEXTS, tokenizer, max_len=10)
    long_ids, long_mask = tokenize(TEXTS, tokenizer, max_len=config.max_query_len)
    assert_same_output(
        run(model, pixels, pixel_mask, short_ids, short_mask),
        run(model, pixels, pixel_mask, long_ids, long_mask),
    )


def test_ids_under_the_token_mask_are_ignored(model, config, tokenizer):
    pixels, pixel_mask = letterboxed(4, config.image_size, (128, 80))
    token_ids, token_mask = tokenize(TEXTS, tokenizer, config.max_query_len)
    garbage = torch.where(token_mask, token_ids, torch.randint(1000, 2000, token_ids.shape))
    reference = run(model, pixels, pixel_mask, token_ids, token_mask)
    assert_same_output(reference, run(model, pixels, pixel_mask, garbage, token_mask))
    # ...while the mask itself matters: hiding a real token changes the prediction.
    hidden = token_mask.clone()
    hidden[:, 1] = False
    assert not torch.allclose(reference.box, run(model, pixels, pixel_mask, token_ids, hidden).box)


def test_padding_content_is_ignored(model, config, tokenizer):
    pixels, pixel_mask = letterboxed(2, config.image_size, (70, 128))
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    noisy = pixels + 5 * torch.randn_like(pixels) * pixel_mask[:, None]
    assert_same_output(
        run(model, pixels, pixel_mask, token_ids, token_mask),
        run(model, noisy, pixel_mask, token_ids, token_mask),
    )


def test_pixel_mask_is_downsampled_to_the_feature_map(model, config):
    pixels, pixel_mask = letterboxed(1, config.image_size, (64, 96))  # feature map 4x4, stride 32
    _, feature_mask = model.backbone(pixels, pixel_mask)
    expected = torch.ones(1, 4, 4, dtype=torch.bool)
    expected[:, :2, :3] = False
    assert torch.equal(feature_mask, expected)


def _perturb_backbone_cells(model: TransVG, cells: torch.Tensor):
    """Forward hook adding noise to the backbone features at cells[B, h, w] == True."""

    def hook(_module, _inputs, outputs):
        features, feature_mask = outputs
        noise = 100 * torch.randn_like(features) * cells[:, None]
        return features + noise, feature_mask

    return model.backbone.register_forward_hook(hook)


def test_transformers_ignore_padded_visual_tokens(model, config, tokenizer):
    # The CNN sees the padding, so the invariance is checked where the masks act: on the tokens.
    pixels, pixel_mask = letterboxed(2, config.image_size, (64, 96))
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    _, feature_mask = model.backbone(pixels, pixel_mask)
    reference = run(model, pixels, pixel_mask, token_ids, token_mask)

    handle = _perturb_backbone_cells(model, feature_mask)
    try:
        perturbed_padding = run(model, pixels, pixel_mask, token_ids, token_mask)
    finally:
        handle.remove()
    # [VLS] is the top-left cell, valid here, so all three outputs must be unchanged.
    assert_same_output(reference, perturbed_padding)

    valid_cell = torch.zeros_like(feature_mask)
    valid_cell[:, 1, 1] = True
    handle = _perturb_backbone_cells(model, valid_cell)
    try:
        perturbed_content = run(model, pixels, pixel_mask, token_ids, token_mask)
    finally:
        handle.remove()
    assert not torch.allclose(reference.box, perturbed_content.box)


def test_each_sample_is_independent_of_its_batch(model, config, tokenizer):
    pixels_a, mask_a = letterboxed(1, config.image_size, (128, 50), seed=1)
    pixels_b, mask_b = letterboxed(1, config.image_size, (40, 128), seed=2)
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    batch = run(model, torch.cat([pixels_a, pixels_b]), torch.cat([mask_a, mask_b]), token_ids, token_mask)
    alone = run(model, pixels_b, mask_b, token_ids[1:], token_mask[1:])
    assert_same_output(row_of(batch, 1), alone)


def row_of(output, row: int):
    values = {field.name: getattr(output, field.name) for field in dataclasses.fields(output)}
    return type(output)(
        **{name: None if value is None else value[row : row + 1] for name, value in values.items()}
    )


def test_smaller_inputs_reuse_the_top_left_positions(model, config):
    ids = model.vl_position_ids((2, 3), text_len=5, device=torch.device("cpu"))
    grid = model.grid_size  # 4 for 128 px at stride 32
    cells = [1, 2, 3, 1 + grid, 2 + grid, 3 + grid]
    assert ids.tolist() == [0, *cells] + [1 + grid * grid + t for t in range(5)]


def test_inputs_larger_than_image_size_are_rejected(model, config, tokenizer):
    pixels, pixel_mask = letterboxed(1, 2 * config.image_size, (32, 32))
    token_ids, token_mask = tokenize(TEXTS[:1], tokenizer, config.max_query_len)
    with pytest.raises(ValueError, match="feature map"):
        run(model, pixels, pixel_mask, token_ids, token_mask)


def test_sine_encoding_by_hand():
    # One row, two valid columns: x = (1, 2)/2 · 2π = (π, 2π); the first x channels use frequency 1.
    encoding = sine_position_encoding(torch.zeros(1, 1, 2, dtype=torch.bool), dim=8)
    x_channels = encoding[0, 0, :, 4:6]
    torch.testing.assert_close(x_channels, torch.tensor([[0.0, -1.0], [0.0, 1.0]]), atol=1e-5, rtol=0)


def test_sine_encoding_ignores_extra_padding():
    small = torch.zeros(1, 2, 3, dtype=torch.bool)
    padded = torch.ones(1, 4, 5, dtype=torch.bool)
    padded[:, :2, :3] = False
    torch.testing.assert_close(
        sine_position_encoding(small, 16)[0], sine_position_encoding(padded, 16)[0, :2, :3], atol=1e-6, rtol=0
    )


def test_gradients_reach_every_trainable_parameter(config, tokenizer):
    torch.manual_seed(0)
    model = build_student(config).train()
    pixels, pixel_mask = letterboxed(4, config.image_size, (96, 128))
    token_ids, token_mask = tokenize(TEXTS, tokenizer, config.max_query_len)
    output = model(pixels, pixel_mask, token_ids, token_mask)
    teacher = torch.randn(4, 512)
    criterion = STUDENTS["transvg"].criterion()
    criterion(output, LossTargets(torch.rand(4, 4) * 0.5 + 0.25, teacher, teacher))[0]["total"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for name in (
        "backbone.body.conv1.0.weight",
        "text_encoder.embeddings.word_embeddings.weight",
        "box_head.0.weight",
        "vl_pos.weight",
        "input_proj.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_param_groups_cover_trainable_parameters_once(model):
    groups = param_groups(model, lr=1e-4, lr_pretrained=1e-5, weight_decay=0.05)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    # tiny's branches are randomly initialised, so nothing is treated as pretrained.
    assert {group["lr"] for group in groups} == {1e-4}
    assert {group["weight_decay"] for group in groups} == {0.05}
    torch.optim.AdamW(groups)


def test_param_groups_give_pretrained_branches_the_low_lr():
    torch.manual_seed(0)
    config = student_preset("tiny", frozen_backbone_stages=2)
    model = build_student(config)
    # Mark both branches pretrained without loading anything: only the config decides the grouping.
    model.config = student_preset("tiny", backbone_weights="timm", text_encoder_weights="pretrained")
    groups = {group["name"]: group for group in param_groups(model, lr=1e-4, lr_pretrained=1e-5)}
    assert groups["backbone"]["lr"] == groups["text_encoder"]["lr"] == 1e-5
    assert groups["head"]["lr"] == 1e-4
    backbone = {id(p) for p in groups["backbone"]["params"]}
    assert id(model.get_parameter("backbone.body.layer2.0.conv1.weight")) in backbone
    assert id(model.get_parameter("backbone.body.conv1.0.weight")) not in backbone  # frozen stem
    text = {id(p) for p in groups["text_encoder"]["params"]}
    assert text == {id(p) for p in model.text_encoder.parameters()}


def test_channels_last_gives_the_same_output(model, config, tokenizer):
    twin = build_student(student_preset("tiny", channels_last=True)).eval()
    twin.load_state_dict(model.state_dict())
    pixels, pixel_mask = letterboxed(2, config.image_size, (128, 100))
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    assert_same_output(
        run(model, pixels, pixel_mask, token_ids, token_mask),
        run(twin, pixels, pixel_mask, token_ids, token_mask),
    )


def test_text_layers_used_keeps_the_first_layers():
    model = build_student(student_preset("tiny", text_layers_used=1))
    assert len(model.text_encoder.encoder.layer) == 1
    with pytest.raises(ValueError, match="text_layers_used=3"):
        build_student(student_preset("tiny", text_layers_used=3))


def test_bound_tokenize_pickles_for_dataloader_workers(tokenizer):
    bound = pickle.loads(pickle.dumps(functools.partial(tokenize, tokenizer=tokenizer, max_len=6)))
    token_ids, token_mask = bound(["dog"])
    assert token_ids.shape == (1, 6) and token_mask.sum() == 3


def test_a_missing_backbone_file_is_named():
    with pytest.raises(FileNotFoundError, match="no/such/file.pth"):
        build_student(student_preset("tiny", backbone_weights="no/such/file.pth"))


def test_backbone_out_index_picks_a_finer_feature_level():
    coarse = build_student(student_preset("tiny", image_size=64))
    fine = build_student(student_preset("tiny", image_size=64, backbone_out_index=-2))
    assert coarse.backbone.stride == 2 * fine.backbone.stride
    assert fine.grid_size == 2 * coarse.grid_size
    pixels, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    features, feature_mask = fine.backbone(pixels, mask)
    assert (
        features.shape[-1] == 64 // fine.backbone.stride
        and feature_mask.shape == features.shape[:1] + features.shape[2:]
    )


def test_the_box_head_runs_in_float32_under_bf16_autocast(model, config, tokenizer):
    """bf16 keeps 8 mantissa bits: about 0.4% of the image per coordinate near 1, visible in IoU."""
    pixels, pixel_mask = letterboxed(2, config.image_size, (config.image_size, config.image_size))
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixels, pixel_mask, token_ids, token_mask)
    assert output.box.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the head alone would run in bf16
        assert model.box_head(output.vls).dtype == torch.bfloat16


def test_the_cell_head_scores_every_visual_cell(tokenizer):
    config = student_preset("tiny", cell_head=True, visual_position="tokens")
    model = build_student(config).eval()
    pixels, pixel_mask = letterboxed(2, config.image_size, (config.image_size, config.image_size))
    token_ids, token_mask = tokenize(TEXTS[:2], tokenizer, config.max_query_len)
    output = model(pixels, pixel_mask, token_ids, token_mask)
    grid = model.grid_size
    assert output.cell_logits.shape == (2, grid * grid)
    assert (
        build_student(student_preset("tiny")).eval()(pixels, pixel_mask, token_ids, token_mask).cell_logits
        is None
    )
