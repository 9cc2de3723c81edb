"""Issue #12: the teacher's targets and the student's pixels.

The online teacher must preprocess exactly as the cache does (one preprocessing for both paths), and
the fidelity measurement must run end to end.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from pipeline.data import EvalTransform, TransformConfig, make_shapes
from pipeline.data.device_batch import sample_pixels
from pipeline.data.transforms import hflip, student_view_image
from pipeline.engine.config import TrainConfig
from pipeline.targets.online import OnlineTeacher
from pipeline.teacher import TeacherConfig, build_teacher
from pipeline.teacher.cache_job import embed_images
from pipeline.teacher.fidelity import FidelityConfig
from pipeline.teacher.views import student_transform

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=0, image_size=128)
    return root


@pytest.fixture(scope="module")
def images(shapes_root, tmp_path_factory) -> list[Path]:
    """A square JPEG scene and a 128x96 PNG cut from another: a letterbox only shows on a non-square image."""
    scenes = sorted((shapes_root / "images").rglob("*.jpg"))
    wide = tmp_path_factory.mktemp("wide") / "wide.png"
    with Image.open(scenes[1]) as scene:
        scene.convert("RGB").crop((0, 16, 128, 112)).save(wide)
    return [scenes[0], wide]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_student_view_image_inverts_the_device_normalising_exactly(images):
    config = TransformConfig(image_size=160, num_scales=1, pad_position="center")
    with Image.open(images[1]) as image:
        sample = EvalTransform(config)(image, None, "x")
    pixels, mask = sample_pixels(sample, config.mean, config.std)
    assert mask.any(), "the view must be padded for the test to mean anything"
    view = student_view_image(pixels, mask, config.mean, config.std)
    assert torch.equal(F.pil_to_tensor(view), sample.pixels)


def test_preprocess_view_is_the_online_teachers_preprocessing_of_the_same_view(images):
    """h-cache's exact-view job (`preprocess_view` on `render_view`) and the online teacher (the
    student's float batch) give the teacher the same input."""
    from pipeline.targets.replay import render_view

    teacher = build_teacher(TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True))
    config = TransformConfig(image_size=128, pad_position="center")
    row = [500, 10, 20, 380, 400, 112, 1_200_000, 900_000, 1_100_000, 2, 0, 1, 1, -1, -1]
    with Image.open(images[1]) as image:
        view = render_view(image, None, "the left one", row, config)
    assert view.flipped and view.text == "the right one"
    pixels, mask = sample_pixels(view, config.mean, config.std)
    online = teacher.preprocess_student_pixels(pixels[None], mask[None], config.mean, config.std)
    assert torch.equal(teacher.preprocess_view(view)[None], online)


@pytest.mark.parametrize("pad_position", ["bottom_right", "center"])
def test_online_teacher_embeds_an_unaugmented_image_as_the_cache_does(images, pad_position, tmp_path):
    # jpeg_draft off: a DCT-scaled decode cannot be reproduced from the student's decoded pixels.
    teacher_config = TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True, jpeg_draft=False)
    teacher = build_teacher(teacher_config)
    cached = torch.from_numpy(embed_images(teacher, images, batch_size=4, decode_workers=0))
    run = TrainConfig(
        dataset="shapes",
        out=tmp_path,
        distill="online",
        teacher_model=TINY_TEACHER,
        teacher_pretrained="none",
        allow_random_teacher=True,
    )
    # The student's size equals the images' longer side, so its un-augmented view holds their pixels.
    transform = TransformConfig(image_size=128, num_scales=1, pad_position=pad_position)
    online = OnlineTeacher(run, torch.device("cpu"), (transform.mean, transform.std))
    for variant in (0, 1):
        views = []
        for path in images:
            with Image.open(path) as image:
                image = image.convert("RGB")
            if variant:
                image, _ = hflip(image, np.zeros(4))
            views.append(EvalTransform(transform)(image, [0, 0, 10, 10], "the red circle"))
        ready = [sample_pixels(view, transform.mean, transform.std) for view in views]
        pixels = torch.stack([p for p, _ in ready])
        mask = torch.stack([m for _, m in ready])
        image_embedding, _ = online(pixels, mask, ["the red circle"] * len(views))
        cos = _cos(image_embedding, cached[:, variant])
        assert bool((cos >= 0.9999).all()), f"variant {variant}: cos {cos.tolist()}"


@pytest.fixture(scope="module")
def exact_store(shapes_root, tmp_path_factory) -> Path:
    from pipeline.teacher.cache_job import CacheJobConfig, build_cache

    return build_cache(
        CacheJobConfig(
            dataset="shapes",
            data_root=shapes_root,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True, jpeg_draft=False),
            out=tmp_path_factory.mktemp("cache") / "store",
            dtype="float32",
            decode_workers=0,
            progress=False,
        )
    )


def _fidelity_config(shapes_root: Path, **changes) -> FidelityConfig:

    settings = dict(
        dataset="shapes", data_root=shapes_root, transform=student_transform("tiny", 128), samples=4
    )
    return FidelityConfig(**{**settings, **changes})


def test_fidelity_is_exact_without_augmentation_and_drops_with_a_crop(shapes_root, exact_store):
    from pipeline.teacher.fidelity import measure_fidelity

    teacher_config = TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True, jpeg_draft=False)
    config = _fidelity_config(shapes_root, store=exact_store, kinds=("none", "flip", "crop"))
    report = measure_fidelity(build_teacher(teacher_config), config)
    kinds = report["kinds"]
    assert report["images"] == 4 and kinds["none"]["n"] == 4
    # The store's rows, its flipped variant included, are what the teacher gives the student's pixels...
    assert kinds["none"]["min"] >= 0.9999 and kinds["flip"]["min"] >= 0.9999
    # ...and a crop is another image: the figure must be able to show a gap.
    assert kinds["crop"]["median"] < 0.9999


def test_fidelity_refuses_a_store_of_another_teacher(shapes_root, exact_store):
    from pipeline.targets import TargetsMismatchError
    from pipeline.teacher.fidelity import measure_fidelity

    drafted = TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True, jpeg_draft=True)
    with pytest.raises(TargetsMismatchError, match="another teacher"):
        measure_fidelity(build_teacher(drafted), _fidelity_config(shapes_root, store=exact_store))


def test_cache_fidelity_command_quick(shapes_root):
    from typer.testing import CliRunner

    from pipeline.cli import app

    args = ["cache", "fidelity", "shapes", "--data-root", str(shapes_root), "--teacher", TINY_TEACHER]
    args += ["--pretrained", "none", "--allow-random-teacher", "--student", "tiny", "--image-size", "128"]
    args += ["--samples", "3", "--kinds", "none,all", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert set(report["kinds"]) == {"none", "all"} and report["kinds"]["all"]["n"] == 3
    assert 0.0 < report["kinds"]["all"]["p5"] <= report["kinds"]["all"]["median"] <= 1.0 + 1e-9
