"""bench/data_path_bench.py runs end to end at a tiny size (no timing is checked: the lead measures)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("data_path_bench", REPO / "bench" / "data_path_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_compares_the_old_path_with_both_new_ones(tmp_path, capsys):
    bench = _bench()
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", bench.OLD_REF], check=False)
    if known.returncode != 0:
        pytest.skip(f"{bench.OLD_REF} is not in this clone (shallow?)")
    report = bench.main(["--images", "3", "--size", "64", "--batch", "2", "--json", str(tmp_path / "r.json")])
    rows = {row["path"]: row for row in report["rows"]}
    assert set(rows) == {"before", "workers", "device"} and "samples/s/core" in capsys.readouterr().out
    before = rows["before"]["ipc_bytes_per_sample"]
    assert before == pytest.approx(64 * 64 * (3 * 4 + 1), rel=0.01)  # float32 pixels + bool mask
    assert before / rows["workers"]["ipc_bytes_per_sample"] > 4.0  # uint8 and a few integers
    assert rows["device"]["ipc_bytes_per_sample"] < rows["workers"]["ipc_bytes_per_sample"]  # the JPEG
    assert (tmp_path / "r.json").exists()
