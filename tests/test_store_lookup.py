"""`make cache DATASET=X` then `make train DATASET=X`: the run finds the one store built for its data."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEACHER
from typer.testing import CliRunner

import storage
from pipeline.cli import app
from pipeline.data import dataset_fingerprint, make_shapes
from pipeline.targets.lookup import AmbiguousStoreError, NoMatchingStoreError, find_store
from pipeline.teacher.cache_job import default_store_path

runner = CliRunner()


def one_error_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    assert len(lines) == 1, str(error)
    return lines[0]


def assert_one_line_cli_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]


def copy_store(store: Path, root: Path, name: str) -> Path:
    return Path(shutil.copytree(store, root / "shapes" / name))


@pytest.fixture(scope="module")
def other_root(tmp_path_factory) -> Path:
    """Shapes data with other split files than `shapes_root`'s."""
    root = tmp_path_factory.mktemp("other-shapes")
    make_shapes(root, n=6, seed=1, image_size=64)
    return root


def incomplete_store(path: Path, data_root: Path) -> Path:
    """A store built for the data whose writer stopped before finalizing."""
    with storage.StoreWriter.open(
        path,
        fingerprint={"dataset": dataset_fingerprint("shapes", data_root)},
        tables={"images": storage.TableSpec(rows=2, row_shape=(4,), dtype="float32", shard_rows=2)},
        keys={"images": ["a", "b"]},
        indices={"train/image_row": np.zeros(2, dtype=np.int32)},
    ):
        pass
    return path


def test_the_one_matching_store_is_found(store, shapes_root, other_root, tmp_path):
    root = tmp_path / "cache"
    found = copy_store(store, root, "abc")
    incomplete_store(root / "shapes" / "half", shapes_root)
    (root / "shapes" / "notes.txt").write_text("not a store")
    (root / "shapes" / "empty").mkdir()
    assert find_store("shapes", shapes_root, root) == found
    # the same store was built for other split files than other_root's
    with pytest.raises(NoMatchingStoreError) as error:
        find_store("shapes", other_root, root)
    line = one_error_line(error.value)
    assert str(found) in line and "built for other split files" in line and "--cache" in line


def test_two_matching_stores_are_one_line_naming_both_and_cache(store, shapes_root, tmp_path):
    root = tmp_path / "cache"
    first, second = copy_store(store, root, "aaa"), copy_store(store, root, "bbb")
    with pytest.raises(AmbiguousStoreError) as error:
        find_store("shapes", shapes_root, root)
    line = one_error_line(error.value)
    assert str(first) in line and str(second) in line and "--cache STORE" in line
    assert "(clip-tiny, random weights)" in line  # tells the stores apart by their teacher


def test_no_match_lists_each_store_and_why(store, shapes_root, other_root, tmp_path):
    root = tmp_path / "cache"
    other = copy_store(store, root, "old")
    half = incomplete_store(root / "shapes" / "half", other_root)
    with pytest.raises(NoMatchingStoreError) as error:
        find_store("shapes", other_root, root)
    line = one_error_line(error.value)
    assert f"{other} (built for other split files: shapes_" in line
    assert f"{half} (incomplete" in line
    assert "epmvg cache build shapes" in line and "--cache STORE" in line


def test_no_store_at_all_is_one_line(shapes_root, tmp_path):
    with pytest.raises(NoMatchingStoreError) as error:
        find_store("shapes", shapes_root, tmp_path / "cache")
    line = one_error_line(error.value)
    assert f"no feature store under {tmp_path / 'cache' / 'shapes'}" in line and "--cache" in line


def test_lookup_looks_where_cache_build_writes_by_default(store, shapes_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fingerprint = storage.FeatureStore.open(store).fingerprint
    path = default_store_path("shapes", fingerprint)
    shutil.copytree(store, path)
    assert find_store("shapes", shapes_root) == path


def tiny_train(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "shapes", "--data-root", str(root), "--student", "tiny", "--image-size", "64",
        "--epochs", "1", "--batch-size", "4", "--max-samples", "8", "--workers", "0", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_cache_build_then_train_needs_no_path(shapes_root, other_root, tmp_path, monkeypatch):
    """The Makefile's two commands, as the CLI: the default store folder is relative to the cwd."""
    monkeypatch.chdir(tmp_path)
    built = runner.invoke(
        app,
        [
            "cache",
            "build",
            "shapes",
            "--data-root",
            str(shapes_root),
            "--teacher",
            TINY_TEACHER,
            "--pretrained",
            "none",
            "--allow-random-teacher",
            "--decode-workers",
            "0",
        ],  # fmt: skip
    )
    assert built.exit_code == 0, built.output
    (store,) = (tmp_path / "cache" / "shapes").iterdir()
    # a store for other data beside it does not count
    copy_store(store, tmp_path / "elsewhere", "x")
    trained = runner.invoke(app, tiny_train(shapes_root, tmp_path / "run"))
    assert trained.exit_code == 0, trained.output
    assert f"cache: {Path('cache') / 'shapes' / store.name}" in trained.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher_fingerprint"] == storage.FeatureStore.open(store).fingerprint

    # other data: the store does not count; --cache-root elsewhere: nothing; --distill none needs no store
    other = runner.invoke(app, tiny_train(other_root, tmp_path / "run2"))
    assert_one_line_cli_error(other, "built for other split files", "--cache")
    missing = runner.invoke(app, tiny_train(shapes_root, tmp_path / "run3", "--cache-root", "nowhere"))
    assert_one_line_cli_error(missing, "no feature store under nowhere/shapes", "--cache")
    plain = runner.invoke(app, tiny_train(other_root, tmp_path / "run4", "--distill", "none"))
    assert plain.exit_code == 0, plain.output


def test_ablations_discover_and_refuse_two_stores(store, shapes_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_store(store, Path("cache"), "aaa"), copy_store(store, Path("cache"), "bbb")
    result = runner.invoke(
        app, ["ablations", "shapes", "--data-root", str(shapes_root), "--out", "abl", "--quick"]
    )
    assert_one_line_cli_error(result, "2 complete stores under cache/shapes", "--cache STORE")
    assert not (tmp_path / "abl" / "cache").exists()  # no random-teacher fallback when the choice is unclear
    elsewhere = runner.invoke(app, ["ablations", "refcocog", "--cache-root", "nowhere", "--quick"])
    assert_one_line_cli_error(elsewhere, "no feature store under nowhere/refcocog", "make cache")
