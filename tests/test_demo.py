"""The newcomer's path: the demo pipeline and the ablation grid, in their QUICK forms, end to end."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine.ablations import ablation_config, ablation_grid
from pipeline.engine.config import TrainConfig

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
    assert (out / "data" / "splits" / "shapes" / "shapes_train.pth").is_file()
    assert (out / "cache" / "zarr.json").is_file()
    report = (out / "report.md").read_text()
    assert "not OpenAI's CLIP" in report  # the teacher is named for what it is
    assert (out / "teacher" / "teacher.safetensors").is_file()
    for row in ("student", "image-only control", "centre prior", "text-only prior"):
        assert f"| {row}" in report, row
    assert "Acc@0.5" in report and "val" in report and "test" in report
    assert "Does the student read the image?" in report
    diagnosis = json.loads((out / "summary.json").read_text())["diagnosis"]
    assert diagnosis["samples"] >= 2
    for name in ("curves.png", "gallery.png", "best.pt", "metrics.jsonl"):
        assert (out / "run" / name).is_file(), name
    assert (out / "image-only" / "best.pt").is_file()


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
    assert "| no distillation |" in (out / "results.md").read_text()


def test_a_failed_side_run_stops_the_demo_with_its_folder_named(tmp_path):
    """The image-only control trains in a spawned process beside the student: its failure surfaces."""
    from pipeline.data import make_shapes
    from pipeline.demo import train_side_by_side

    make_shapes(tmp_path / "data", n=12, seed=0, image_size=64)
    settings = dict(dataset="shapes", student="tiny", distill="none", epochs=1, max_samples=4, workers=0)
    fine = TrainConfig(data_root=tmp_path / "data", out=tmp_path / "student", progress=False, **settings)
    broken = TrainConfig(data_root=tmp_path / "no-data", out=tmp_path / "control", **settings)
    with pytest.raises(RuntimeError, match="control.*failed"):
        train_side_by_side(fine, broken)
    assert (tmp_path / "student" / "summary.json").is_file()  # the run beside it finished
