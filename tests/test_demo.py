"""The newcomer's path: the demo pipeline and the ablation grid, in their QUICK forms, end to end."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_png, assert_run_checkpoint, tiny_run
from safetensors.torch import load_file

import storage
from pipeline.data import load_split
from pipeline.engine.config import TrainConfig
from pipeline.studies.ablations import ablation_config, ablation_grid

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(load_split("shapes", "train", out / "data")) > 0  # the data it made reads back
    store = storage.FeatureStore.open(out / "cache")  # complete, or it would not open
    assert store.tables()
    report = (out / "report.md").read_text()
    assert "not OpenAI's CLIP" in report  # the teacher is named for what it is
    weights = load_file(out / "teacher" / "teacher.safetensors")
    assert weights and all(tensor.isfinite().all() for tensor in weights.values())
    for row in ("student", "image-only control", "centre prior", "text-only prior"):
        lines = [line for line in report.splitlines() if line.startswith(f"| {row}")]
        assert len(lines) == 1, row
        assert len(re.findall(r"\| \d+\.\d% \|", lines[0])) == 2, lines[0]  # val and test Acc@0.5
    assert "Acc@0.5" in report and "val" in report and "test" in report
    assert "Does the student read the image?" in report
    diagnosis = json.loads((out / "summary.json").read_text())["diagnosis"]
    assert diagnosis["samples"] >= 2
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [row["epoch"] for row in metrics if row.get("kind") == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1)) and epochs
    assert_run_checkpoint(out / "run" / "best.pt")
    assert_png(out / "run" / "curves.png")
    assert_png(out / "run" / "gallery.png")
    control = assert_run_checkpoint(out / "image-only" / "best.pt")
    assert control["train_config"]["blank_text"] is True


def test_ablation_grid_is_the_papers():
    grid = ablation_grid()
    base = TrainConfig(dataset="shapes", cache=Path("store"), out=Path("out"))
    configs = {name: ablation_config(base, name, changes) for name, changes in grid.items()}
    assert configs["l1 distillation"].loss.distill == "l1"
    assert configs["image term only"].loss.text_term is False and configs["image term only"].loss.image_term
    assert configs["text term only"].loss.image_term is False and configs["text term only"].loss.text_term
    assert configs["no distillation"].distill == "none"
    assert sorted(
        c.loss.giou_weight for n, c in configs.items() if n.startswith("lambda")
    ) == [  # 1: the baseline
        0,
        0.5,
        1.5,
        2,
    ]
    assert len({c.out for c in configs.values()}) == len(grid)  # one run folder each, under the baseline's
    assert all(c.out.parent == Path("out") for c in configs.values())


@pytest.mark.slow
def test_quick_ablations_write_one_table(tmp_path):
    out = tmp_path / "ablations"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "ablations",
            "shapes",
            "--data-root",
            str(tmp_path / "none"),
            "--out",
            str(out),
            "--quick",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["variant"] for row in rows] == list(ablation_grid())
    assert all(0.0 <= float(row["val"]) <= 1.0 for row in rows)
    table = (out / "results.md").read_text().splitlines()
    for row in rows:  # a row per variant, its accuracy in percent as in results.csv
        line = f"| {row['variant']} | {100 * float(row['val']):.2f} | {100 * float(row['test']):.2f} |"
        assert line in table, row


def test_a_failed_side_run_stops_the_demo_with_its_folder_named(tmp_path):
    """The image-only control trains in a spawned process beside the student: its failure surfaces."""
    from pipeline.data import make_shapes
    from pipeline.studies.demo import train_side_by_side

    make_shapes(tmp_path / "data", n=12, seed=0, image_size=64)
    settings = dict(
        student_overrides={}, epochs=1, lr_drop=None, batch_size=64, max_samples=4, gallery_size=12
    )
    fine = tiny_run(tmp_path / "data", tmp_path / "student", **settings)
    broken = tiny_run(tmp_path / "no-data", tmp_path / "control", progress=True, **settings)
    with pytest.raises(RuntimeError, match="control.*failed"):
        train_side_by_side(fine, broken)
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())  # the run beside it finished
    assert summary["epochs"] == 1 and set(summary["results"]) == {"val", "test"}
