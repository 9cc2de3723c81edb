"""`inspect_dataset` on the real data and the `epmvg data` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli.data import app
from pipeline.data import default_tokenizer, inspect_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return default_tokenizer()


def test_inspect_refcoco(shared_data: Path, tokenizer: Any) -> None:
    result = inspect_dataset("refcoco", shared_data, tokenizer=tokenizer)
    assert result["max_query_len"] == 20 and result["unavailable_splits"] == ["train"]
    assert list(result["splits"]) == ["val", "testA", "testB"]
    test_a = result["splits"]["testA"]
    assert set(test_a) >= {
        "records",
        "unique_images",
        "images_present",
        "unique_expressions",
        "problems",
        "token_lengths",
    }
    assert (test_a["records"], test_a["unique_images"], test_a["images_present"]) == (5657, 750, 1)
    assert test_a["problems"]["missing_image"] == 5646
    assert set(test_a["problems"]) == {
        "missing_image",
        "unreadable_image",
        "box_outside_image",
        "zero_area_box",
        "empty_expression",
    }
    lengths = test_a["token_lengths"]
    assert set(lengths) == {"min", "median", "p95", "max", "over_max_query_len"}
    assert 3 <= lengths["min"] <= lengths["median"] <= lengths["p95"] <= lengths["max"]  # [CLS] word [SEP]
    assert 0 <= lengths["over_max_query_len"] < 100


def test_cli_inspect_json(shared_data: Path) -> None:
    result = runner.invoke(app, ["inspect", "refcocog", "--data-root", str(shared_data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["splits"]["val"]["records"] == 4896 and report["max_query_len"] == 40


def test_cli_make_shapes_then_inspect_table(tmp_path: Path) -> None:
    made = runner.invoke(
        app, ["make-shapes", "--out", str(tmp_path), "--n", "10", "--seed", "1", "--image-size", "64"]
    )
    assert made.exit_code == 0, made.output
    table = runner.invoke(app, ["inspect", "shapes", "--data-root", str(tmp_path)])
    assert table.exit_code == 0, table.output
    assert "records" in table.stdout and "train" in table.stdout and "missing image" in table.stdout


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["inspect", "refcocoo", "--data-root", str(tmp_path)])
    assert unknown.exit_code == 2 and "valid names" in unknown.output
    (tmp_path / "splits/referit").mkdir(parents=True)
    (tmp_path / "splits/referit/referit_val.pth").write_bytes(b"garbage")
    broken = runner.invoke(app, ["inspect", "referit", "--data-root", str(tmp_path)])
    assert broken.exit_code == 2 and "error:" in broken.stderr and "referit_val.pth" in broken.stderr
    assert "Traceback" not in broken.output
