"""The frozen teacher: weights policy, preprocessing, and the trimmed text context."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.teacher import TeacherConfig, TeacherWeightsError, build_teacher, encode_text_trimmed

TINY = str(Path(__file__).resolve().parents[1] / "pipeline" / "configs" / "teacher" / "clip-tiny.json")


@pytest.fixture(scope="module")
def teacher():
    with pytest.warns(UserWarning, match="RANDOM"):
        return build_teacher(TeacherConfig(model=TINY, pretrained="none", allow_random=True))


def test_trimmed_context_equals_full_77_token_context(teacher):
    texts = ["man", "the small green triangle left of the red circle", "a b c " * 10, "left dog on the right"]
    tokens = teacher.tokenizer(texts)
    assert tokens.shape[1] == 77
    full = teacher.model.encode_text(tokens)
    trimmed = encode_text_trimmed(teacher.model, tokens)
    assert (tokens != 0).sum(1).max() < 40  # the trim really shortened the context
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(teacher.encode_texts(texts), full, rtol=0, atol=1e-6)


def test_random_weights_need_explicit_permission():
    with pytest.raises(TeacherWeightsError, match="--allow-random-teacher"):
        build_teacher(TeacherConfig(model=TINY, pretrained="none"))


def test_unknown_tag_and_missing_weights_are_clear_errors():
    with pytest.raises(TeacherWeightsError, match="neither a file nor an open_clip tag"):
        build_teacher(TeacherConfig(model="ViT-B-32", pretrained="no-such-tag"))


def test_offline_tag_fails_with_the_ways_to_supply_weights(monkeypatch):
    import pipeline.teacher.clip as teacher_module

    monkeypatch.setattr(teacher_module, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(TeacherWeightsError, match="--pretrained /path/to"):
        build_teacher(TeacherConfig(model="ViT-B-32", pretrained="openai"))


def test_letterbox_keeps_the_whole_image_and_center_crops_it(tmp_path, teacher):
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 30, 100))  # a red strip on the far left
    path = tmp_path / "wide.jpg"
    image.save(path, quality=95)
    std = torch.tensor(teacher.preprocess_cfg["std"]).view(3, 1, 1)
    mean = torch.tensor(teacher.preprocess_cfg["mean"]).view(3, 1, 1)
    letterbox = teacher.load_image(path) * std + mean
    centre = build_teacher(TeacherConfig(model=TINY, pretrained="none", allow_random=True, crop="center"))
    cropped = centre.load_image(path) * std + mean
    red = lambda x: ((x[0] > 0.7) & (x[2] < 0.3)).sum()  # noqa: E731
    assert red(letterbox) > 0
    assert red(cropped) == 0
    size = teacher.image_size
    assert letterbox.shape == (3, size, size)
    # letterboxing pads top and bottom with the mean colour
    torch.testing.assert_close(letterbox[:, 0, size // 2], mean.view(3), atol=0.02, rtol=0)
    assert teacher.fingerprint()["preprocess"] != centre.fingerprint()["preprocess"]


def test_online_teacher_and_cache_share_one_encode_path(teacher, monkeypatch):
    # Forcing bf16 on the CPU stands in for CUDA's autocast: the online encoders must follow the same
    # compute dtype as the cache's Teacher.encode_* (before, they always ran fp32).
    from pipeline.targets.online import TeacherEncoders
    from pipeline.teacher import clip

    pixels = torch.rand(2, 3, teacher.image_size, teacher.image_size)
    texts = ["the small green triangle", "left dog"]
    fp32_image = teacher.encode_images(pixels)
    monkeypatch.setattr(clip, "compute_dtype", lambda device: "bfloat16")
    cache_image, cache_text = teacher.encode_images(pixels), teacher.encode_texts(texts)
    assert not torch.equal(cache_image, fp32_image)  # the forced bf16 really changed the result
    tokens = teacher.tokenize(texts)
    with torch.no_grad():
        online_image, online_text = TeacherEncoders(teacher.model)(pixels, tokens, clip.token_context(tokens))
    assert torch.equal(online_image, cache_image) and torch.equal(online_text, cache_text)


def test_fingerprint_names_the_compute_device_and_dtype(teacher, monkeypatch):
    from pipeline.teacher import clip

    assert teacher.fingerprint()["compute"] == {"device": "cpu", "dtype": "float32"}
    monkeypatch.setattr(clip, "compute_dtype", lambda device: "bfloat16")
    assert teacher.fingerprint()["compute"]["dtype"] == "bfloat16"
