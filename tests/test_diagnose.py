"""The text-shortcut probes: they see a model that reads the image, and one that cannot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.data import make_shapes
from pipeline.data.device_batch import to_device_batch
from pipeline.engine.diagnose import diagnose
from pipeline.student import build_student, make_collate, student_preset, transform_config_for

REPO = Path(__file__).resolve().parents[1]


def shapes_batch(root: Path, config, size: int = 8) -> dict:
    from pipeline.data import EvalTransform, GroundingDataset, load_split

    records = load_split("shapes", "train", root)[:size]
    dataset = GroundingDataset(records, EvalTransform(transform_config_for(config)), seed=0)
    batch = make_collate(config)([dataset[i] for i in range(len(dataset))])
    return to_device_batch(batch, dataset.transform.config, torch.device("cpu"))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=0)
    return root


def test_probes_tell_a_model_that_reads_the_image_from_one_that_cannot(shapes_root):
    torch.manual_seed(0)
    config = student_preset("tiny", image_size=64)
    model = build_student(config)
    batch = shapes_batch(shapes_root, config)
    reading = diagnose(model, batch)
    assert reading["box_std_over_images"] > 1e-4 and reading["box_std_over_texts"] > 1e-4
    shares = [reading[f"reg_attention_{part}"] for part in ("self", "visual", "text")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5) and reading["reg_attention_visual"] > 0.05

    with torch.no_grad():  # blind the model: every visual token becomes the same vector
        model.visual_proj.weight.zero_()
    blind = diagnose(model, batch)
    assert blind["box_std_over_images"] < 1e-6
    assert blind["box_std_over_texts"] > 1e-4
    assert blind["target_box_std"] == reading["target_box_std"] > 0


def test_diagnose_command_reads_a_checkpoint(shapes_root, tmp_path):
    from pipeline.engine.checkpoint import save_checkpoint
    from pipeline.engine.config import TrainConfig

    config = student_preset("tiny", image_size=64)
    run = TrainConfig(dataset="shapes", data_root=shapes_root, student="tiny", distill="none")
    checkpoint = tmp_path / "last.pt"
    payload = {"model": build_student(config).state_dict(), "student_config": config.to_dict()}
    save_checkpoint(checkpoint, {**payload, "train_config": run.to_dict()})
    cli = [sys.executable, "-m", "pipeline.cli", "diagnose", "--checkpoint", str(checkpoint)]
    done = subprocess.run(
        [*cli, "--data-root", str(shapes_root), "--split", "train", "--samples", "6"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["samples"] == 6 and report["box_std_over_images"] > 0


def test_diagnose_checkpoint_reads_an_lgrnet_checkpoint(shapes_root, tmp_path):
    from pipeline.engine.checkpoint import save_checkpoint
    from pipeline.engine.config import TrainConfig
    from pipeline.engine.diagnose import diagnose_checkpoint

    torch.manual_seed(0)
    config = student_preset("lgrnet-tiny", image_size=64)
    run = TrainConfig(dataset="shapes", data_root=shapes_root, student="lgrnet-tiny", distill="none")
    checkpoint = tmp_path / "last.pt"
    payload = {"model": build_student(config).state_dict(), "student_config": config.to_dict()}
    save_checkpoint(checkpoint, {**payload, "train_config": run.to_dict()})
    report = diagnose_checkpoint(checkpoint, shapes_root, "train", samples=6)
    assert report["samples"] == 6 and report["box_std_over_images"] > 0
    shares = [report[f"reg_attention_{part}"] for part in ("self", "visual", "text")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5) and report["reg_attention_visual"] > 0
    assert report["reg_attention_text"] == 0.0  # LGR-NET's TCA never sees the text tokens
