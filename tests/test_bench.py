"""The benchmarks run end to end on tiny models and report every figure (timings are not asserted).

A GPU session has minutes, not hours, to run them: these keep their commands working on CI.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image

from bench.assets import make_jpegs, make_queries, peak_tflops, random_bert, texture_jpegs

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


# --- bench/gpu.sh: the script a GPU session runs on a bare machine (issue #20, item 13) ---


def run_gpu_sh(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_gpu_sh_all_rehearses_every_part_on_the_cpu_and_writes_their_reports(tmp_path):
    """The GPU script's own commands at tiny sizes: it breaks here when a bench or an API it calls does."""
    out = tmp_path / "out"
    rehearsal = {
        "DEVICE": "cpu",
        "SMALL": "1",
        "SKIP_INSTALL": "1",
        "PYTHON": sys.executable,
        "OUT": str(out),
    }
    done = run_gpu_sh("all", env=rehearsal)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    reports = {part: json.loads((out / f"{part}.json").read_text()) for part in ("cache", "distill", "e2e")}
    cache = reports["cache"]
    assert cache["inputs"].startswith("made here") and cache["precision"] == "fp32, both paths"
    assert all(row["items_per_s"] > 0 for row in cache["results"].values()) and len(cache["results"]) == 4
    distill = reports["distill"]["results"]
    assert set(distill) == {"none", "cached", "cached-views"}
    assert all("overhead_vs_none_pct" in row for row in distill.values())
    end_to_end = reports["e2e"]["end_to_end_cached"]
    assert end_to_end["images_per_s"] > 0 and 0 <= end_to_end["data_wait_fraction"] <= 1
    assert end_to_end["textured_jpegs"] is True
    assert reports["e2e"]["mfu"] is None and "MFU not reported" in reports["e2e"]["peak_source"]
    assert (out / "device.txt").read_text() and (out / "gpu.log").read_text()


def test_gpu_sh_without_wheels_says_how_to_get_them_in_one_line(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    done = run_gpu_sh("all", env={"WHEEL_DIR": str(empty), "OUT": str(tmp_path / "out")}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "bash bench/gpu.sh wheels" in done.stderr


def test_gpu_sh_skips_the_parts_its_total_time_no_longer_fits_and_says_so(tmp_path):
    out = tmp_path / "out"
    env = {"DEVICE": "cpu", "SMALL": "1", "SKIP_INSTALL": "1", "PYTHON": sys.executable, "OUT": str(out)}
    done = run_gpu_sh("all", env={**env, "TOTAL_S": "1"}, timeout=120)
    assert done.returncode == 2 and "failed or skipped: cache distill e2e" in done.stderr
    assert (out / "gpu.log").read_text().count("skipped: the 1 s total is spent") == 3


def test_gpu_sh_rejects_an_unknown_part(tmp_path):
    env = {"SKIP_INSTALL": "1", "PYTHON": sys.executable, "DEVICE": "cpu", "SMALL": "1", "OUT": str(tmp_path)}
    done = run_gpu_sh("nonsense", env=env, timeout=120)
    assert done.returncode != 0 and "unknown part 'nonsense'" in done.stderr


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("NVIDIA A10G", None),
        ("Tesla T4", None),
    ],
)
def test_the_peak_comes_from_the_device_name(name, peak):
    assert peak_tflops(name) == peak


def test_step_bench_takes_the_peak_from_the_cuda_device_or_says_mfu_is_not_reported(monkeypatch):
    from bench.step_bench import resolve_peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert resolve_peak(0.0, "cuda") == (989.0, "NVIDIA H200: dense bf16 from bench.assets' table")
    assert resolve_peak(500.0, "cuda") == (500.0, "--peak-tflops")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    peak, why = resolve_peak(0.0, "cuda")
    assert peak is None and "MFU not reported" in why


def test_step_bench_modes_are_checked():
    from bench.step_bench import parse_modes

    assert parse_modes("cached, none") == ("none", "cached")
    for bad in ("", "cached,offline"):
        with pytest.raises(typer.BadParameter):
            parse_modes(bad)


def test_the_cache_baseline_runs_at_the_teachers_precision():
    """Our teacher encodes under bf16 autocast on CUDA: the plain loop must too, or the ratio mixes both."""
    from bench.cache_bench import baseline_precision

    assert baseline_precision("cuda") == baseline_precision("cuda:0") == torch.bfloat16
    assert baseline_precision("cpu") is None


def test_made_jpegs_differ_in_content_and_size(tmp_path):
    paths = make_jpegs(tmp_path, 6, seed=0, max_side=640, processes=1)
    sizes = [Image.open(path).size for path in paths]
    assert all(max(size) == 640 for size in sizes) and len(set(sizes)) > 1
    assert len({path.read_bytes() for path in paths}) == 6
    assert make_jpegs(tmp_path / "again", 6, seed=0, processes=1)[3].read_bytes() == paths[3].read_bytes()


def test_textured_jpegs_keep_their_size_and_grow_in_bytes(tmp_path):
    from pipeline.data import make_shapes

    make_shapes(tmp_path, n=3, seed=0, image_size=96)
    paths = sorted((tmp_path / "images").rglob("*.jpg"))
    before = [(Image.open(path).size, path.stat().st_size) for path in paths]
    texture_jpegs(paths, processes=1)
    for path, (size, nbytes) in zip(paths, before, strict=True):
        assert Image.open(path).size == size and path.stat().st_size > nbytes


def test_random_bert_is_bert_base_shaped_and_tokenizes_any_text(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    folder = random_bert(tmp_path / "bert")
    config = AutoConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (12, 768, 30522)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.vocab_size == 30522
    ids = tokenizer(make_queries(1, seed=3)[0] + " zebra")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) > 4
