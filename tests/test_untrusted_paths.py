"""Image names in split files and JSONL lines are untrusted: none may lead outside the image root."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_checkpoint
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import ImagePathOutsideRootError, load_pickle, load_split, make_shapes, write_split_file

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
runner = CliRunner()


def shapes(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_shapes(root, n=6, seed=0, image_size=64)
    return root


def point_first_val_record_at(root: Path, image_name: str) -> None:
    split_file = root / "splits" / "shapes" / "shapes_val.pth"
    records = load_pickle(split_file)
    records[0] = (image_name, *records[0][1:])
    write_split_file(split_file, records)


def outside_image(tmp_path: Path, root: Path) -> Path:
    """A real, readable image outside the data root: today it would be read without a word."""
    outside = tmp_path / "secret.jpg"
    shutil.copy(root / "images" / "shapes" / "000000.jpg", outside)
    return outside


def dotdot(tmp_path: Path) -> tuple[Path, str]:
    root = shapes(tmp_path)
    outside_image(tmp_path, root)
    point_first_val_record_at(root, "../../../secret.jpg")
    return root, "../../../secret.jpg"


def symlink(tmp_path: Path) -> tuple[Path, str]:
    root = shapes(tmp_path)
    (root / "images" / "shapes" / "link.jpg").symlink_to(outside_image(tmp_path, root))
    point_first_val_record_at(root, "link.jpg")
    return root, "link.jpg"


@pytest.mark.parametrize("poison", [dotdot, symlink], ids=["dotdot", "symlink"])
def test_a_record_leaving_the_image_root_is_refused_with_a_count_and_its_path(tmp_path, poison):
    root, name = poison(tmp_path)
    with pytest.raises(ImagePathOutsideRootError, match=r"1 record\(s\)") as raised:
        load_split("shapes", "val", root)
    assert repr(name) in str(raised.value) and "record 0" in str(raised.value)
    assert load_split("shapes", "train", root)  # the other splits are untouched


def test_a_symlinked_image_root_and_links_inside_it_are_still_read(tmp_path):
    real = shapes(tmp_path)
    linked = tmp_path / "linked"
    linked.symlink_to(real)
    inside = real / "images" / "shapes" / "alias.jpg"
    inside.symlink_to(real / "images" / "shapes" / "000000.jpg")
    point_first_val_record_at(real, "alias.jpg")
    assert load_split("shapes", "val", linked)[0].image_path == linked / "images" / "shapes" / "alias.jpg"


def test_a_jsonl_line_leaving_its_folder_is_refused(tmp_path):
    root = shapes(tmp_path)
    outside_image(tmp_path, root)
    line = {"image": "../secret.jpg", "box": [1, 1, 9, 9], "expression": "x", "split": "val"}
    (root / "custom.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ImagePathOutsideRootError, match=r"custom.jsonl:1: '../secret.jpg'"):
        load_split(str(root / "custom.jsonl"), "val")


@pytest.mark.parametrize("poison", [dotdot, symlink], ids=["dotdot", "symlink"])
@pytest.mark.parametrize("command", ["data inspect", "cache build", "train", "eval"])
def test_every_command_refuses_the_record_the_same_way(tmp_path, poison, command):
    root, name = poison(tmp_path)
    arguments = {
        "data inspect": ["data", "inspect", "shapes", "--data-root", str(root), "--no-check-images"],
        "cache build": [
            "cache",
            "build",
            "shapes",
            "--data-root",
            str(root),
            "--teacher",
            TINY_TEACHER,
            "--pretrained",
            "none",
            "--allow-random-teacher",
            "--out",
            str(tmp_path / "store"),
            "--device",
            "cpu",
        ],
        "train": [
            "train",
            "shapes",
            "--data-root",
            str(root),
            "--distill",
            "none",
            "--student",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--epochs",
            "1",
        ],
        "eval": [
            "eval",
            "--checkpoint",
            str(write_tiny_checkpoint(tmp_path / "ck.pt", root)),
            "--data-root",
            str(root),
            "--split",
            "val",
            "--device",
            "cpu",
        ],
    }[command]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert "outside" in result.stderr and repr(name) in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "run" / "last.pt").exists()
