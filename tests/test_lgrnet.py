"""LGR-NET, the second student: its equations by hand, its attention wiring, its shapes and its registry."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

from pipeline.criterion import LossTargets
from pipeline.losses import LossConfig, info_nce_loss, layer_summed_box_loss
from pipeline.student import (
    STUDENTS,
    LGRNet,
    LGRNetOutput,
    build_tokenizer,
    create_student,
    load_student_weights,
    student_preset,
    tokenize,
)
from pipeline.student.lgrnet import coarser_scale, fuse_levels, visual_token_count
from pipeline.student.position import sine_coordinate_embedding

TEXTS = ["the red circle on the left", "a square"]


@pytest.fixture(scope="module")
def model() -> LGRNet:
    torch.manual_seed(0)
    return create_student("lgrnet-tiny", image_size=64).eval()


@pytest.fixture(scope="module")
def tokens(model):
    return tokenize(TEXTS, build_tokenizer(model.config), model.config.max_query_len)


def pixels(batch: int = 2, size: int = 64, pad_from: int | None = 40):
    torch.manual_seed(1)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    if pad_from is not None:
        mask[-1, :, pad_from:] = True
    return torch.randn(batch, 3, size, size), mask


# equations, by hand -------------------------------------------------------------------------------


def test_sine_coordinate_embedding_by_hand():
    # (0.5, 0.5) at D=4: both axes at angle 0.5·2π = π, one frequency: [sin π, cos π] per axis, y first.
    embedding = sine_coordinate_embedding(torch.tensor([[0.5, 0.5]]), 4)
    assert torch.allclose(embedding, torch.tensor([[0.0, -1.0, 0.0, -1.0]]), atol=1e-6)
    # x = 0.25 → π/2 → [1, 0]; y = 0.5 → [0, −1]; y's channels come first.
    embedding = sine_coordinate_embedding(torch.tensor([[0.25, 0.5]]), 4)
    assert torch.allclose(embedding, torch.tensor([[0.0, -1.0, 1.0, 0.0]]), atol=1e-6)


def test_info_nce_at_batch_2_and_temperature_1_by_hand():
    f_obj = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2
    f_sent = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalised: e1, (e1 + e2)/√2
    c = 1 / math.sqrt(2)
    # logits = cosines = [[1, c], [0, c]]; matching pairs on the diagonal.
    obj_to_sent = (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    sent_to_obj = (-math.log(math.e / (math.e + 1)) - math.log(0.5)) / 2
    loss = info_nce_loss(f_obj, f_sent, torch.tensor(0.0))
    assert loss.item() == pytest.approx((obj_to_sent + sent_to_obj) / 2, abs=1e-6)
    # A lower temperature sharpens the logits: the same pairs cost less when they already match best.
    assert info_nce_loss(f_obj, f_sent, torch.tensor(math.log(0.1))) < loss


def test_the_layer_summed_loss_by_hand():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    exact = target.clone()
    shifted = torch.tensor([[0.6, 0.5, 0.2, 0.2]])  # L1 0.1; IoU 0.02/0.06 = 1/3, hull = union: GIoU 1/3
    box, giou = layer_summed_box_loss(torch.stack([exact, shifted]), target, "l1")
    assert box.item() == pytest.approx(0.1, abs=1e-6)
    assert giou.item() == pytest.approx(2 / 3, abs=1e-5)  # torchvision adds an eps
    output = LGRNetOutput(
        box=shifted,
        vls=torch.zeros(1, 2),
        cls=torch.zeros(1, 2),
        layer_boxes=torch.stack([exact, shifted]),
        f_obj=torch.tensor([[1.0, 0.0]]),
        f_sent=torch.tensor([[0.0, 1.0]]),
        log_temperature=torch.tensor(0.0),
    )
    criterion = STUDENTS["lgrnet"].criterion(LossConfig(box="l1", align_weight=2.0))
    terms, diagnostics = criterion(output, LossTargets(target))
    assert terms["align"].item() == pytest.approx(0.0, abs=1e-6)  # one pair: no negative to beat
    assert terms["total"].item() == pytest.approx(0.1 + 2 / 3, abs=1e-5)
    assert set(diagnostics) == {"align_batch"} and diagnostics["align_batch"].item() == 1  # not a loss
    assert "align_batch" not in terms


def lgrnet_loss(output, box, config=None):
    """LGR-NET's criterion (its declared terms, `config`'s weights): the losses it returns."""
    return STUDENTS["lgrnet"].criterion(config)(output, LossTargets(box))[0]


def test_lambda_weighs_the_alignment_term():
    torch.manual_seed(0)
    layer_boxes = torch.rand(3, 4, 4) * 0.5 + 0.25
    output = LGRNetOutput(
        box=layer_boxes[-1],
        vls=torch.zeros(4, 8),
        cls=torch.zeros(4, 8),
        layer_boxes=layer_boxes,
        f_obj=torch.randn(4, 8),
        f_sent=torch.randn(4, 8),
        log_temperature=torch.tensor(math.log(0.07)),
    )
    target = torch.rand(4, 4) * 0.5 + 0.25
    with_align = lgrnet_loss(output, target, config=LossConfig(align_weight=2.0))
    without = lgrnet_loss(output, target, config=LossConfig(align_weight=0.0))
    box, giou = layer_summed_box_loss(layer_boxes, target, "smooth_l1")
    assert without["total"].item() == pytest.approx((box + giou).item(), rel=1e-6)
    assert (with_align["total"] - without["total"]).item() == pytest.approx(
        2 * with_align["align"].item(), rel=1e-5
    )


def test_fuse_levels_averages_adjacent_maps_finest_first():
    p8, p16, p32 = torch.full((1, 1, 4, 4), 1.0), torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 1, 1), 5.0)
    assert fuse_levels([p8, p16, p32]).item() == pytest.approx(((1 + 3) / 2 + 5) / 2)
    p8 = torch.arange(16.0).view(1, 1, 4, 4)  # mean pooling: the 4x4 block's mean, 7.5
    assert fuse_levels([p8, p16, p32]).item() == pytest.approx(((7.5 + 3) / 2 + 5) / 2)


def test_the_coarser_scale_max_pools_valid_cells_only():
    features = torch.tensor([[[[1.0, 9.0, 2.0], [3.0, 4.0, 8.0]]]])  # [1, 1, 2, 3]
    pad = torch.tensor([[[False, True, True], [False, False, True]]])
    pooled, pooled_pad = coarser_scale(features, pad)
    assert pooled.shape == (1, 1, 1, 2)
    assert pooled[0, 0, 0, 0].item() == 4.0  # 9 sits in padding
    assert pooled_pad.tolist() == [[[False, True]]]  # the right window is all padding
    assert pooled[0, 0, 0, 1].item() == 0.0


def test_500_visual_tokens_at_640_px():
    assert visual_token_count(640) == 500
    model = create_student("lgrnet-tiny", image_size=640).eval()  # random weights, the 640 px grid
    image, mask = pixels(1, 640, pad_from=None)
    features, pad = model.backbone_features(image, mask)
    tokens, token_pad, pos = model.visual_tokens(features, pad)
    assert tokens.shape[1] == token_pad.shape[1] == pos.shape[1] == 500


def test_the_frozen_part_commutes_with_the_projection(model):
    """backbone_features pools before the 1x1 convs; the paper projects first: the same tokens."""
    image, mask = pixels()
    with torch.no_grad():
        levels, pad = model.backbone(image.masked_fill(mask[:, None], 0.0), mask)
        projected = [proj(level) for proj, level in zip(model.input_proj, levels, strict=True)]
        expected = fuse_levels(projected).flatten(2).transpose(1, 2)
        tokens = model.visual_tokens(*model.backbone_features(image, mask))[0]
    assert torch.allclose(tokens[:, : expected.shape[1]], expected, atol=1e-5)


# wiring ------------------------------------------------------------------------------------------


def test_text_is_never_a_key_in_tca_and_tcf_keys_are_the_unmasked_text(model, tokens):
    token_ids, token_mask = tokens
    image, mask = pixels()
    seen: dict[str, list] = {"tca": [], "tcf": []}

    def recorder(kind):
        def hook(module, args, kwargs):
            seen[kind].append((args[0], args[1], args[2], kwargs["key_padding_mask"]))

        return hook

    handles = []
    for layer in model.layers:
        handles.append(layer.self_attn.register_forward_pre_hook(recorder("tca"), with_kwargs=True))
        handles.append(layer.cross_attn.register_forward_pre_hook(recorder("tcf"), with_kwargs=True))
    try:
        with torch.no_grad():
            model(image, mask, token_ids, token_mask)
            text = model.encode_text(token_ids, token_mask)
            visual_count = model.visual_tokens(*model.backbone_features(image, mask))[0].shape[1]
    finally:
        for handle in handles:
            handle.remove()
    layers = len(model.layers)
    assert len(seen["tca"]) == len(seen["tcf"]) == layers
    count = model.config.prediction_tokens
    for query, key, value, key_pad in seen["tca"]:
        assert key.shape[1] == value.shape[1] == count + visual_count  # prediction + visual, no word
        assert torch.equal(query, key)
        assert not key_pad[:, :count].any()
    for query, key, value, key_pad in seen["tcf"]:
        assert query.shape[1] == count + visual_count
        assert torch.equal(key, text) and torch.equal(value, text)
        assert torch.equal(key_pad, ~token_mask)  # exactly the padded word slots are masked


def test_p_coord_enters_queries_and_keys_but_not_the_residual(model, tokens):
    token_ids, token_mask = tokens
    image, mask = pixels()
    layer = model.layers[0]
    captured = {}
    handle = layer.self_attn.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(query=args[0], value=args[2]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            output = model(image, mask, token_ids, token_mask)
    finally:
        handle.remove()
    _, p_coord = model.tfe.coordinate(model.encode_text(token_ids, token_mask)[:, 0])
    start = model.prediction_tokens.expand(2, -1, -1)
    assert torch.allclose(captured["query"][:, 0], start[:, 0] + p_coord, atol=1e-6)
    assert torch.equal(captured["value"][:, 0], start[:, 0])  # the value is the bare token
    assert output.coord.shape == (2, 2) and ((output.coord > 0) & (output.coord < 1)).all()


def test_outputs_have_one_box_per_layer(model, tokens):
    image, mask = pixels()
    with torch.no_grad():
        output = model(image, mask, *tokens)
    layers = model.config.vl_layers
    assert output.layer_boxes.shape == (layers, 2, 4)
    assert torch.equal(output.box, output.layer_boxes[-1])
    assert ((output.box > 0) & (output.box < 1)).all()
    dim = model.config.hidden_dim
    for field in ("vls", "cls", "f_obj", "f_sent"):
        assert getattr(output, field).shape == (2, dim), field


def test_each_sample_is_independent_of_its_batch_and_of_its_padding_content(model, tokens):
    image, mask = pixels()
    with torch.no_grad():
        both = model(image, mask, *tokens).box
        alone = model(image[1:], mask[1:], tokens[0][1:], tokens[1][1:]).box
        noisy = image.clone()
        noisy[1][:, mask[1]] = 7.0
        repainted = model(noisy, mask, *tokens).box
    assert torch.allclose(both[1:], alone, atol=1e-5)
    assert torch.allclose(both, repainted, atol=1e-6)


def test_precomputed_inputs_give_the_full_forward(model, tokens):
    token_ids, token_mask = tokens
    image, mask = pixels()
    with torch.no_grad():
        full = model(image, mask, token_ids, token_mask)
        features, pad = model.backbone_features(image, mask)
        states = model.text_states(token_ids, token_mask)
        table = model(backbone_features=features, feature_pad=pad, text_states=states, token_mask=token_mask)
    assert torch.equal(full.box, table.box)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"coord_fusion": "concat"}, {"coord_embedding": False}, {"prediction_tokens": 2}],
    ids=["add", "concat", "no-coord", "two-tokens"],
)
def test_gradients_reach_every_trainable_parameter(overrides, tokens):
    torch.manual_seed(0)
    model = create_student("lgrnet-tiny", image_size=64, dropout=0.0, **overrides).train()
    image, mask = pixels()
    output = model(image, mask, *tokens)
    terms = lgrnet_loss(output, torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.4, 0.2, 0.5]]))
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # Non-zero too outside the backbone (timm zero-initialises each residual block's last BatchNorm,
    # which blocks the gradient of the convolutions before it at step 0).
    zero = [n for n, p in model.named_parameters() if not n.startswith("backbone.") and not p.grad.any()]
    assert zero == []
    assert model.get_parameter("backbone.body.conv1.0.weight").grad.any()
    assert (output.coord is None) == (overrides.get("coord_embedding") is False)


# registry and checkpoints -----------------------------------------------------------------------


def test_every_configurable_architecture_is_registered():
    assert tuple(STUDENTS) == ("transvg", "lgrnet")
    assert isinstance(create_student("lgrnet-tiny"), LGRNet)
    with pytest.raises(ValueError, match="architecture must be one of"):
        student_preset("tiny", architecture="lgr")


def test_the_paper_preset_has_the_paper_shape():
    config = student_preset("lgrnet-r50")
    assert (config.architecture, config.backbone, config.hidden_dim, config.vl_layers, config.heads) == (
        "lgrnet",
        "resnet50",
        256,
        6,
        8,
    )
    assert (config.image_size, config.max_query_len, config.text_config_overrides["hidden_size"]) == (
        640,
        40,
        768,
    )


def test_a_transvg_checkpoint_into_lgrnet_is_a_clear_error(model):
    transvg = create_student("tiny", image_size=64)
    payload = {"student_config": transvg.config.to_dict(), "model": transvg.state_dict()}
    with pytest.raises(ValueError, match="holds a transvg student, but this model is lgrnet"):
        load_student_weights(model, payload)
    del payload["student_config"]["architecture"]  # checkpoints from before LGR-NET: TransVG
    with pytest.raises(ValueError, match="holds a transvg student"):
        load_student_weights(model, payload)
    own = {"student_config": model.config.to_dict(), "model": model.state_dict()}
    load_student_weights(create_student("lgrnet-tiny", image_size=64, pretrained=False), own)


def test_transvg_options_are_refused_for_lgrnet():
    with pytest.raises(ValueError, match="LGR-NET has neither"):
        student_preset("lgrnet-tiny", cell_head=True)


# DDP: the alignment's negatives come from every rank -------------------------------------------


def _gathered_info_nce(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    from pipeline.losses import gather_across_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        f_obj, f_sent = torch.randn(4, 8), torch.randn(4, 8)  # the global batch, 2 rows a rank
        own = f_obj[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        loss = info_nce_loss(
            gather_across_ranks(own), gather_across_ranks(f_sent[2 * rank : 2 * rank + 2]), torch.tensor(0.0)
        )
        loss.backward()
        queue.put((rank, loss.item(), own.grad.clone()))
    finally:
        dist.destroy_process_group()


def test_ddp_alignment_uses_every_ranks_negatives_and_its_gradient_is_exact():
    torch.manual_seed(0)
    f_obj, f_sent = torch.randn(4, 8).requires_grad_(True), torch.randn(4, 8)
    single = info_nce_loss(f_obj, f_sent, torch.tensor(0.0))
    single.backward()
    context = mp.get_context("spawn")
    queue, port = context.SimpleQueue(), free_port()
    processes = [context.Process(target=_gathered_info_nce, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get() for _ in processes)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    for rank, loss, grad in results:
        assert loss == pytest.approx(single.item(), rel=1e-6)
        # Every rank backpropagates the same global loss and all_gather's backward sums them: world x the
        # single-process gradient, which DDP's mean over ranks brings back to exactly it.
        assert torch.allclose(grad, 2 * f_obj.grad[2 * rank : 2 * rank + 2], atol=1e-6)
