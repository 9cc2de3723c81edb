import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
TINY_TEACHER = str(REPO_ROOT / "pipeline" / "configs" / "teacher" / "clip-tiny.json")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data beside the checkout (see ../shared/data/README.md)."""
    if not (SHARED_DATA / "splits").is_dir():
        pytest.fail(f"real sample data not found at {SHARED_DATA}: the checkout must sit beside shared/")
    return SHARED_DATA


# The tiny run most training tests start from: the `tiny` student at 64 px, two epochs of two batches
# of 4 on 8 records a split, in-process loading, 4 gallery images. A test passes what it needs otherwise
# as keywords (or binds its own defaults with functools.partial); distillation is "cached" from `store`
# when one is given, else "none".
TINY_RUN: dict[str, Any] = dict(
    dataset="shapes",
    student="tiny",
    student_overrides={"image_size": 64},
    epochs=2,
    lr_drop=2,
    batch_size=4,
    max_samples=8,
    workers=0,
    progress=False,
    gallery_size=4,
)


def tiny_run(data_root: Path, out: Path, store: Path | None = None, **changes):
    """A TrainConfig for a tiny run on `data_root` into `out`: TINY_RUN with `changes` applied."""
    from pipeline.engine.config import TrainConfig

    distill = {"distill": "cached", "cache": store} if store is not None else {"distill": "none"}
    return TrainConfig(**{**TINY_RUN, "data_root": data_root, "out": out, **distill, **changes})


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous (fixed ports collide when
    two test sessions run at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torchrun(nproc: int, args: list[str], timeout: float = 600, check: bool = True):
    """`python -m torch.distributed.run --nproc-per-node NPROC ARGS` from the repository root, on a free
    port; with `check`, a failure shows the end of its stderr. Returns the finished process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--master-port", str(free_port()), *map(str, args)]
    # the ranks import this checkout's pipeline, whatever folder their script is in
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


# Checks of what a run writes: its content, not only that the file is there ----------------------------


def assert_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """`path` is a PNG that opens, is `size` (width, height) when given, and is not blank (many
    colours; not nearly all background). Returns its RGB pixels."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path}: {image.format}"
        if size is not None:
            assert image.size == size, f"{path}: {image.size} != {size}"
        rgb = np.asarray(image.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 16, f"{path}: (nearly) one colour"
    drawn = (np.abs(rgb.astype(int) - rgb[0, 0].astype(int)).sum(-1) > 60).mean()
    assert drawn > 0.005, f"{path}: {drawn:.2%} of its pixels differ from the background"
    return rgb


def assert_run_checkpoint(path: Path, epoch: int | None = None) -> dict:
    """A trainer's checkpoint: loads, holds weights, optimiser, schedule, RNG and both configs, and
    (when given) is from `epoch`. Returns it."""
    from pipeline.engine.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    keys = {"model", "optimizer", "scheduler", "rng", "epoch", "step", "train_config", "student_config"}
    assert keys <= set(payload), f"{path}: lacks {keys - set(payload)}"
    assert payload["model"] and all(hasattr(value, "shape") for value in payload["model"].values())
    if epoch is not None:
        assert payload["epoch"] == epoch, f"{path}: epoch {payload['epoch']} != {epoch}"
    return payload


def assert_results_md(path: Path, results: dict[str, dict[str, float]]) -> None:
    """A run's results.md: a row per split with its Acc@0.5 as a percentage and its count, as in
    summary.json's `results`."""
    rows = {line.split()[0]: line.split() for line in path.read_text().splitlines()[1:] if line.strip()}
    assert set(rows) == set(results), f"{path}: rows {sorted(rows)} != splits {sorted(results)}"
    for split, row in results.items():
        percent, n = rows[split][1], rows[split][3]
        assert percent.endswith("%") and float(percent[:-1]) == pytest.approx(100 * row["acc@0.5"], abs=0.01)
        assert int(n) == row["n"]


def write_tiny_checkpoint(path: Path, data_root: Path, dataset: str = "shapes") -> Path:
    """A tiny, untrained student's checkpoint: what eval and predict read, without a training run."""
    from pipeline.engine.checkpoint import save_checkpoint
    from pipeline.engine.config import TrainConfig
    from pipeline.student import build_student, student_preset

    student_config = student_preset("tiny", image_size=64)
    train_config = TrainConfig(dataset=dataset, data_root=data_root, distill="none", student="tiny")
    payload = {
        "model": build_student(student_config, pretrained=False).state_dict(),
        "student_config": student_config.to_dict(),
        "train_config": train_config.to_dict(),
    }
    save_checkpoint(path, payload)
    return path


# The training tests' shared data: 40 shapes scenes and a store of the random tiny teacher, once per
# module (a test module may define its own `shapes_root` instead).
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    from pipeline.data import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=40, seed=0)
    return root


@pytest.fixture(scope="module")
def store(shapes_root, tmp_path_factory) -> Path:
    from pipeline.teacher import TeacherConfig
    from pipeline.teacher.cache_job import CacheJobConfig, build_cache

    return build_cache(
        CacheJobConfig(
            dataset="shapes",
            data_root=shapes_root,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path_factory.mktemp("cache") / "store",
            decode_workers=0,
            progress=False,
        )
    )
