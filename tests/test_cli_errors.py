"""A user's mistake never ends in a traceback: one line on stderr, exit code 2, in every command."""

import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_checkpoint
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import load_split, make_shapes

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
runner = CliRunner()


def invoke(arguments: list[str]):
    result = runner.invoke(app, [str(argument) for argument in arguments])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=6, seed=0, image_size=64)
    return root


@pytest.fixture(scope="module")
def checkpoint(shapes_root, tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", shapes_root)


def shapes_with_val_file(tmp_path: Path, content: bytes) -> Path:
    root = tmp_path / "data"
    make_shapes(root, n=6, seed=0, image_size=64)
    (root / "splits" / "shapes" / "shapes_val.pth").write_bytes(content)
    return root


def cache_build(root: Path, tmp_path: Path, *extra: str) -> list:
    return [
        "cache", "build", "shapes", "--data-root", root, "--teacher", TINY_TEACHER, "--pretrained", "none",
        "--allow-random-teacher", "--out", tmp_path / "store", "--decode-workers", "0", *extra,
    ]  # fmt: skip


def train(root: Path, out: Path, *extra: str) -> list:
    return [
        "train", "shapes", "--data-root", root, "--distill", "none", "--student", "tiny", "--out", out,
        "--device", "cpu", "--workers", "0", *extra,
    ]  # fmt: skip


REFUSED_PICKLE = pickle.dumps([os.getcwd], protocol=2)  # names posix.getcwd: never imported or called
HUGE_STRING_PICKLE = b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"abc"  # declares a 2^62-byte string


@pytest.mark.parametrize("command", ["cache build", "train"])
@pytest.mark.parametrize(
    ("content", "message"),
    [(REFUSED_PICKLE, "refused to load global"), (HUGE_STRING_PICKLE, "not a readable pickle")],
    ids=["refused-global", "2^62-byte-string"],
)
def test_a_hostile_split_file_is_one_line(tmp_path, command, content, message):
    root = shapes_with_val_file(tmp_path, content)
    arguments = cache_build(root, tmp_path) if command == "cache build" else train(root, tmp_path / "run")
    assert_one_line_error(invoke(arguments), "shapes_val.pth", message)


def test_a_2_62_byte_string_in_data_inspect_is_one_line(tmp_path):
    root = shapes_with_val_file(tmp_path, HUGE_STRING_PICKLE)
    assert_one_line_error(invoke(["data", "inspect", "shapes", "--data-root", root]), "not a readable pickle")


@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("zarr_json", [None, "{not json", "[1, 2]"], ids=["missing", "not-json", "a-list"])
def test_cache_info_and_verify_on_no_store(tmp_path, command, zarr_json):
    store = tmp_path / "store"
    if zarr_json is not None:
        store.mkdir()
        (store / "zarr.json").write_text(zarr_json)
    assert_one_line_error(invoke(["cache", command, store]), "is not a feature store")


def write_bad_checkpoint(path: Path, kind: str) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(64)}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "a-list":
        torch.save([1, 2, 3], path)
    else:  # a dict, but not one of our runs
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "a-list", "other-dict"])
def test_eval_on_a_bad_checkpoint(shapes_root, tmp_path, kind):
    bad = write_bad_checkpoint(tmp_path / "bad.pt", kind)
    result = invoke(["eval", "--checkpoint", bad, "--data-root", shapes_root, "--device", "cpu"])
    assert_one_line_error(result, "bad.pt", "checkpoint")


def test_eval_on_a_missing_checkpoint(shapes_root, tmp_path):
    result = invoke(["eval", "--checkpoint", tmp_path / "none.pt", "--data-root", shapes_root])
    assert_one_line_error(result, "no checkpoint at")


def cut_jpeg(source: Path, target: Path, keep_end_marker: bool) -> Path:
    data = source.read_bytes()
    cut = data[: len(data) * 6 // 10]
    target.write_bytes(cut + b"\xff\xd9" if keep_end_marker else cut)
    return target


@pytest.mark.parametrize("kind", ["missing", "not-an-image", "truncated", "truncated-with-end-marker"])
def test_predict_on_a_bad_image(shapes_root, checkpoint, tmp_path, kind):
    image = tmp_path / "image.jpg"
    source = load_split("shapes", "val", shapes_root)[0].image_path
    if kind == "not-an-image":
        image.write_text("hello")
    elif kind.startswith("truncated"):
        cut_jpeg(source, image, keep_end_marker=kind.endswith("marker"))
    result = invoke(
        ["predict", "--checkpoint", checkpoint, "--image", image, "--text", "x", "--out", tmp_path / "p.png"]
    )
    assert_one_line_error(result, "image.jpg")
    assert not (tmp_path / "p.png").exists()


def test_out_on_an_existing_file_stops_before_any_work(shapes_root, checkpoint, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    assert_one_line_error(invoke(train(shapes_root, a_file)), "--out", "not a folder")
    assert_one_line_error(invoke(cache_build(shapes_root, tmp_path / "x")[:-4] + ["--out", a_file]), "--out")
    assert_one_line_error(
        invoke(["teacher", "train", "shapes", "--data-root", shapes_root, "--out", a_file]), "--out"
    )
    image = load_split("shapes", "val", shapes_root)[0].image_path
    predict = ["predict", "--checkpoint", checkpoint, "--image", image, "--text", "x", "--out", tmp_path]
    assert_one_line_error(invoke(predict), "--out", "is a folder")
    assert a_file.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_out_in_a_read_only_folder(shapes_root, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert_one_line_error(invoke(train(shapes_root, locked / "run")), "not writable")


def test_cuda_without_a_gpu_in_cache_build(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke(cache_build(shapes_root, tmp_path, "--device", "cuda"))
    assert_one_line_error(result, "--device cuda", "no CUDA GPU")
    assert not (tmp_path / "store").exists()


def test_an_error_from_a_loader_worker_keeps_its_message():
    from pipeline.cli.errors import one_line

    relayed = OSError(
        "Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\npipeline.data.images.BadImageError: /d/a.jpg: a truncated JPEG\n'
    )
    assert one_line(relayed) == "/d/a.jpg: a truncated JPEG"
    assert one_line(ValueError("first\nsecond")) == "first …"
