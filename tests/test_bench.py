"""The benchmarks run end to end on tiny models and report every figure (timings are not asserted).

A GPU session has minutes, not hours, to run them: these keep their commands working on CI.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")


def run_bench(module: str, *args: str, cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_cache_bench_times_plain_open_clip_and_ours_on_the_same_real_inputs(shared_data):
    args = ["--data-root", str(shared_data), "--teacher", TINY_TEACHER, "--images", "4", "--texts", "32"]
    report = run_bench(
        "bench.cache_bench", *args, "--batch-size", "4", "--decode-workers", "1", "--repeats", "1", cwd=REPO
    )
    assert set(report["results"]) == {
        "plain open_clip images",
        "epmvg cache images (+flip)",
        "plain open_clip texts",
        "epmvg cache texts",
    }
    assert all(row["items_per_s"] > 0 for row in report["results"].values())


@pytest.mark.slow
def test_step_bench_reports_all_modes_flops_and_the_end_to_end_loader(tmp_path):
    report = run_bench(
        "bench.step_bench",
        *("--student", "tiny", "--image-size", "64", "--batch-size", "4", "--teacher", TINY_TEACHER),
        *("--steps", "1", "--rounds", "1", "--loader-batches", "2", "--workers", "1"),
        *("--workdir", str(tmp_path)),
        cwd=REPO,
    )
    assert set(report["results"]) == {"none", "cached", "cached-views", "online"}
    assert all(row["ms_per_step"] > 0 for row in report["results"].values())
    assert report["student_step_gflop"] > 0 and report["views"] == 4
    for mode in ("cached", "cached_views"):  # the views run's loader replays the stored views
        end_to_end = report[f"end_to_end_{mode}"]
        assert end_to_end["steps"] == 2 and end_to_end["images_per_s"] > 0


def test_step_bench_measures_the_lgrnet_student(tmp_path):
    report = run_bench(
        "bench.step_bench",
        *("--student", "lgrnet-tiny", "--image-size", "64", "--batch-size", "4", "--teacher", TINY_TEACHER),
        *("--steps", "1", "--rounds", "1", "--workers", "0", "--workdir", str(tmp_path)),
        cwd=REPO,
    )
    assert (report["student"], report["architecture"]) == ("lgrnet-tiny", "lgrnet")
    assert all(row["ms_per_step"] > 0 for row in report["results"].values())
    assert report["student_step_gflop"] > 0


def test_epoch_bench_times_persistent_and_restarted_workers_side_by_side(tmp_path):
    report = run_bench(
        "bench.epoch_bench",
        *("--images", "20", "--jpeg-size", "64", "--student", "tiny", "--image-size", "64"),
        *("--batch-size", "4", "--workers", "1", "--epochs", "2", "--workdir", str(tmp_path)),
        cwd=REPO,
    )
    assert set(report["results"]) == {"persistent workers", "workers restarted each epoch"}
    assert report["train_samples"] > report["batch_size"] and report["val_samples"] > 0
    assert all(row["later_epoch_s_median"] > 0 for row in report["results"].values())


def test_views_bench_reports_size_and_time_per_k(tmp_path):
    data = tmp_path / "data"
    from pipeline.data import make_shapes

    make_shapes(data, n=6, seed=0, image_size=64)
    report = run_bench(
        "bench.views_bench",
        *("shapes", "--data-root", str(data), "--teacher", TINY_TEACHER, "--student", "tiny"),
        *("--views", "0,2", "--workdir", str(tmp_path)),
        cwd=REPO,
    )
    no_views, two = report["results"]["0"], report["results"]["2"]
    assert no_views["view_embeddings"] == 0 and no_views["views_mb"] == 0
    assert two["view_embeddings"] == 2 * two["records_with_views"] > 0
    assert two["store_mb"] > no_views["store_mb"]
