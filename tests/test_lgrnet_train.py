"""LGR-NET through the project's normal entries: `epmvg train`, `--precompute-frozen`, resume, the
ablation grid (QUICK in-process, and under torchrun with --resume)."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_torchrun
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "shapes", "--data-root", str(root), "--out", str(out), "--student", "lgrnet-tiny",
        "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--max-samples", "8",
        "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("distill", ["cached", "none"])
def test_lgrnet_tiny_trains_through_the_train_command(shapes_root, store, tmp_path, distill):
    out = tmp_path / distill
    extra = ["--distill", distill] + (["--cache", str(store)] if distill == "cached" else [])
    invoke(train_args(shapes_root, out, *extra, "--box-loss", "l1"))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss/box", "loss/giou", "loss/align", "val/acc@0.5"} <= set(row)
    assert row["diag/align_batch"] == 4  # the effective batch of L_align: one process, batch 4
    assert ("loss/distill_image" in row) == (distill == "cached")
    payload = load_checkpoint(out / "last.pt")
    assert payload["student_config"]["architecture"] == "lgrnet"
    assert payload["step"] == 2
    assert json.loads((out / "summary.json").read_text())["results"]["val"]["n"] == 8


def test_resuming_a_transvg_run_as_lgrnet_is_a_clear_error(shapes_root, tmp_path):
    out = tmp_path / "run"
    args = train_args(shapes_root, out, "--distill", "none")
    invoke([*args[:7], "tiny", *args[8:]])  # the same run with the TransVG tiny student
    result = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2"])
    assert result.exit_code == 2
    # refused by the resume guard, before any weight is loaded or any file written
    assert "architecture: student 'tiny' -> 'lgrnet-tiny'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_cpu_preset_trains_on_shapes_with_precomputed_frozen_branches(shapes_root, tmp_path):
    out = tmp_path / "shapes"
    args = train_args(shapes_root, out, "--distill", "none", "--no-augment", "--precompute-frozen")
    invoke([*args[:7], "lgrnet-shapes", *args[8:]])
    assert load_checkpoint(out / "last.pt")["student_config"]["backbone"] == "tf_efficientnet_lite0"


def test_quick_lgrnet_ablations_write_one_table(shapes_root, store, tmp_path):
    from pipeline.engine.config import TrainConfig
    from pipeline.studies.ablations import grid_for

    out = tmp_path / "grid"
    args = ["ablations", "shapes", "--data-root", str(shapes_root), "--cache", str(store)]
    invoke([*args, "--out", str(out), "--quick", "--student", "lgrnet-tiny"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    base = TrainConfig(dataset="shapes", student="lgrnet-tiny", cache=store, batch_size=8)
    names = list(grid_for(base))
    assert [row["variant"] for row in rows] == names
    assert names[0] == "lgrnet N=2 lambda=2.0 batch=8" and "N=6" in names and "N=2" not in names
    table = (out / "results.md").read_text()
    assert "Ablations of lgrnet-tiny" in table
    for row in rows:  # a row per variant, its accuracy in percent as in results.csv
        line = f"| {row['variant']} | {100 * float(row['val']):.2f} | {100 * float(row['test']):.2f} |"
        assert line in table.splitlines(), row
    config = json.loads((out / "coord_concat" / "config.json").read_text())
    assert config["student_overrides"]["coord_fusion"] == "concat"
    assert json.loads((out / "N6" / "config.json").read_text())["student_overrides"]["vl_layers"] == 6
    half = json.loads((out / "lambda0_batch4" / "config.json").read_text())
    assert (half["batch_size"], half["loss"]["align_weight"]) == (4, 0.0)


def test_the_lgrnet_grid_runs_under_torchrun_and_resumes(shapes_root, store, tmp_path):
    """DDP: L_align gathers both ranks' rows (align_batch = the global --batch-size, 2 ranks x half of it);
    --resume runs only what is missing."""
    out = tmp_path / "grid"
    args = ["train_student.py", *train_args(shapes_root, out, "--cache", str(store), "--ablations")[1:]]
    run_torchrun(2, args, timeout=900)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 10
    base = json.loads((out / "lgrnet_N2_lambda2.0_batch4" / "metrics.jsonl").read_text().splitlines()[0])
    assert base["diag/align_batch"] == 4
    half = json.loads((out / "lambda2.0_batch2" / "metrics.jsonl").read_text().splitlines()[0])
    assert half["diag/align_batch"] == 2
    shutil.rmtree(out / "2_prediction_tokens")
    run_torchrun(2, [*args, "--resume"], timeout=900)
    for metrics in out.glob("*/metrics.jsonl"):  # one epoch each: finished variants were not retrained
        assert len(metrics.read_text().splitlines()) == 1, metrics
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 10
