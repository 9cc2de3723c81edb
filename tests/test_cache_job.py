"""Phase 1 end to end on the real RefCOCO split files with a tiny random open_clip teacher (CPU)."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import storage
from pipeline.data import MissingImagesError, load_split, normalize_expression, swap_left_right
from pipeline.targets import TargetsMismatchError, load_targets
from pipeline.teacher import TeacherConfig, build_teacher
from pipeline.teacher.cache_job import CacheJobConfig, build_cache, plan_cache

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
pytestmark = pytest.mark.filterwarnings("ignore:the CLIP teacher has RANDOM weights")


def job(data_root: Path, out: Path, **changes) -> CacheJobConfig:
    base = dict(
        dataset="refcoco",
        data_root=data_root,
        teacher=TeacherConfig(model=TINY, pretrained="none", allow_random=True),
        out=out,
        decode_workers=0,
        skip_missing=True,
        image_shard_rows=1,
        text_shard_rows=8,
        batch_size=4,
        progress=False,
    )
    base.update(changes)
    return CacheJobConfig(**base)


def arrays(path: Path) -> dict[str, np.ndarray]:
    store = storage.FeatureStore.open(path)
    result = {"images": store.load_table("images"), "texts": store.load_table("texts")}
    result.update({name: store.load_index(name) for name in store.index_names()})
    return result


def assert_same_store(a: Path, b: Path) -> None:
    left, right = arrays(a), arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].tobytes() == right[name].tobytes(), name
    assert (
        storage.FeatureStore.open(a).manifest.shard_checksums
        == storage.FeatureStore.open(b).manifest.shard_checksums
    )


@pytest.fixture(scope="module")
def clean_store(shared_data, tmp_path_factory) -> Path:
    return build_cache(job(shared_data, tmp_path_factory.mktemp("clean") / "store"))


def test_missing_images_refused_without_skip_missing(shared_data, tmp_path):
    with pytest.raises(MissingImagesError, match="--skip-missing"):
        build_cache(job(shared_data, tmp_path / "store", skip_missing=False))


def test_store_content_rows_and_variants(shared_data, clean_store):
    store = storage.FeatureStore.open(clean_store)
    assert store.extra["random_teacher"] is True
    images, texts = store.load_table("images"), store.load_table("texts")
    image_keys, text_keys = store.table_keys("images"), store.table_keys("texts")
    assert images.shape == (len(image_keys), 2, 64) and images.dtype == np.float16
    assert len(image_keys) == 3  # the three RefCOCO images present in ../shared/data
    samples = load_split("refcoco", "testA", shared_data)
    image_row = store.load_index("testA/image_row")
    text_row, swapped_row = store.load_index("testA/text_row"), store.load_index("testA/text_swapped_row")
    assert len(image_row) == len(samples) == 5657
    present = [s for s in samples if s.image_path.is_file()]
    assert (image_row >= 0).sum() == len(present) > 0
    for sample in present:
        text = normalize_expression(sample.text)
        assert image_keys[image_row[sample.index]] == sample.image_key
        assert text_keys[text_row[sample.index]] == text
        assert text_keys[swapped_row[sample.index]] == swap_left_right(text)
    # recompute one image's [DIE] and its flip, and one text's [DTE], with a fresh teacher
    teacher = build_teacher(TeacherConfig(model=TINY, pretrained="none", allow_random=True))
    sample = present[0]
    pixels = teacher.load_image(sample.image_path)[None]
    expected = teacher.encode_images(torch.cat([pixels, pixels.flip(-1)])).half().numpy()
    np.testing.assert_allclose(images[image_row[sample.index]], expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        texts[text_row[sample.index]],
        teacher.encode_texts([text_keys[text_row[sample.index]]])[0].half().numpy(),
        rtol=1e-3,
        atol=1e-3,
    )
    assert storage.verify_store(clean_store).ok


def test_sigkill_then_resume_equals_clean_run(shared_data, clean_store, tmp_path):
    out = tmp_path / "store"
    # A real SIGKILL after the third shard: the job process kills itself from inside write_shard.
    script = textwrap.dedent(f"""
        import os, signal, storage, pipeline.teacher.cache_job as job_module
        from tests.test_cache_job import job
        from pathlib import Path
        real, written = storage.write_shard, []
        def dying_write(*args):
            real(*args)
            written.append(1)
            if len(written) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        job_module.storage.write_shard = dying_write
        job_module.build_cache(job(Path({str(shared_data)!r}), Path({str(out)!r})))
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    with pytest.raises(storage.IncompleteStoreError):
        storage.FeatureStore.open(out)
    build_cache(job(shared_data, out))
    assert storage.verify_store(out).ok
    assert_same_store(out, clean_store)


def test_fingerprint_mismatch_is_a_clear_error(shared_data, clean_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(clean_store, copy)
    with pytest.raises(storage.FingerprintMismatchError, match="force"):
        build_cache(
            job(
                shared_data,
                copy,
                teacher=TeacherConfig(model=TINY, pretrained="none", allow_random=True, crop="center"),
            )
        )
    from pipeline.data import dataset_fingerprint

    with pytest.raises(TargetsMismatchError, match="rebuild"):
        load_targets(clean_store, ["testA"], dataset_fingerprint("refcoco+", shared_data))
    targets = load_targets(clean_store, ["testA"], dataset_fingerprint("refcoco", shared_data))
    assert targets.image_embeddings.shape[1] == 2


def test_corrupt_image_is_refused_or_counted(shared_data, tmp_path):
    root = tmp_path / "data"
    (root / "splits").mkdir(parents=True)
    shutil.copytree(shared_data / "splits" / "unc", root / "splits" / "unc")
    images = root / "images" / "mscoco" / "train2014"
    images.mkdir(parents=True)
    for source in sorted((shared_data / "images" / "mscoco" / "train2014").glob("*.jpg")):
        shutil.copy(source, images / source.name)
    victim = images / "COCO_train2014_000000078583.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated JPEG
    plan = plan_cache("refcoco", root, skip_missing=True)
    assert plan.report["problems"].get("unreadable_image", 0) > 0
    assert "COCO_train2014_000000078583.jpg" not in plan.image_keys
    assert len(plan.image_keys) == 2


def test_hdf5_round_trip_through_the_cli(clean_store, tmp_path):
    cli = [sys.executable, "-m", "pipeline.cli", "cache"]
    subprocess.run([*cli, "export", str(clean_store), "--h5", str(tmp_path / "c.h5")], cwd=REPO, check=True)
    subprocess.run(
        [*cli, "import", "--h5", str(tmp_path / "c.h5"), "--out", str(tmp_path / "back")],
        cwd=REPO,
        check=True,
    )
    assert storage.verify_store(tmp_path / "back").ok
    assert_same_store(tmp_path / "back", clean_store)
    info = subprocess.run(
        [*cli, "info", str(tmp_path / "back"), "--json"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert '"complete": true' in info.stdout and "RANDOM" in info.stderr


@pytest.mark.slow
def test_two_dask_workers_equal_one_worker(shared_data, clean_store, tmp_path):
    out = build_cache(job(shared_data, tmp_path / "store", workers=2))
    assert_same_store(out, clean_store)


@pytest.fixture
def external_dask(tmp_path):
    """A real `dask scheduler` and one default (nanny-started, hence daemonic) `dask worker` on localhost."""
    dask_cli = str(Path(sys.executable).with_name("dask"))
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    common = dict(cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(
        [
            dask_cli,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        **common,
    )
    worker = subprocess.Popen(
        [
            dask_cli,
            "worker",
            "--scheduler-file",
            str(scheduler_file),
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--no-dashboard",
        ],
        **common,
    )
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while not scheduler_file.is_file():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
def test_external_scheduler_with_daemonic_worker_equals_local_build(
    shared_data, clean_store, tmp_path, external_dask
):
    # decode_workers=2: a daemonic dask worker cannot start DataLoader processes; it must still build.
    out = build_cache(job(shared_data, tmp_path / "store", scheduler=external_dask, decode_workers=2))
    assert_same_store(out, clean_store)


def test_resume_with_another_compute_dtype_is_refused(shared_data, clean_store, tmp_path, monkeypatch):
    # A store half-built in fp32 on a CPU must not be finished in bf16 on a GPU: rows would mix.
    from pipeline.teacher import clip

    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    monkeypatch.setattr(clip, "compute_dtype", lambda device: "bfloat16")
    with pytest.raises(storage.FingerprintMismatchError, match="compute"):
        build_cache(job(shared_data, out))


def test_one_image_loader_serves_every_shard(shared_data, clean_store, tmp_path, monkeypatch):
    # A loader per shard restarts its decode processes every 2,048 images; the job keeps one.
    from pipeline.teacher import cache_job

    made = []

    class CountingLoader(cache_job.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cache_job, "DataLoader", CountingLoader)
    out = build_cache(job(shared_data, tmp_path / "store"))  # image_shard_rows=1: three image shards
    assert len(made) == 1
    assert_same_store(out, clean_store)


def test_text_batches_need_no_device_read(shared_data, monkeypatch):
    # The trimmed context of every text batch is known on the host: reading it back from the device
    # (`.item()`) would stall a GPU once per batch.
    from pipeline.teacher.cache_job import embed_texts

    teacher = build_teacher(TeacherConfig(model=TINY, pretrained="none", allow_random=True))
    texts = ["man", "the small green triangle left of the red circle", "left dog on the right", "a b"]
    expected = np.stack([teacher.encode_texts([text])[0].numpy() for text in texts])

    def no_item(self):
        raise AssertionError("a device read in the text path")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    np.testing.assert_allclose(embed_texts(teacher, texts, batch_size=2), expected, rtol=0, atol=1e-5)


def test_gpu_mapping_goes_by_host_and_address_not_worker_name():
    from pipeline.teacher.cache_job import gpu_for_workers

    addresses = ["tcp://10.0.0.2:4100", "tcp://10.0.0.1:4200", "tcp://10.0.0.1:4100", "tcp://10.0.0.2:3900"]
    assert gpu_for_workers(addresses) == {
        "tcp://10.0.0.1:4100": 0,
        "tcp://10.0.0.1:4200": 1,
        "tcp://10.0.0.2:3900": 0,
        "tcp://10.0.0.2:4100": 1,
    }


def test_more_workers_than_gpus_are_capped_with_one_line(caplog):
    from pipeline.teacher.cache_job import capped_workers

    assert capped_workers(2, 8) == 2
    with caplog.at_level("WARNING"):
        assert capped_workers(12, 8) == 8
    assert [r.getMessage() for r in caplog.records] == ["--workers 12 lowered to 8, one per visible GPU"]


def test_the_dask_driver_builds_no_teacher_on_the_gpu(shared_data, tmp_path):
    # The driver only plans: its teacher stays on the CPU, while the store's fingerprint names the
    # workers' device (so it is the same store a one-GPU run would write).
    from pipeline.teacher.cache_job import driver_teacher_config, fingerprint_for

    on_gpu = TeacherConfig(model=TINY, pretrained="none", allow_random=True, device="cuda")
    assert driver_teacher_config(job(shared_data, tmp_path, teacher=on_gpu, workers=2)).device == "cpu"
    assert (
        driver_teacher_config(job(shared_data, tmp_path, teacher=on_gpu, scheduler="tcp://x:1")).device
        == "cpu"
    )
    assert driver_teacher_config(job(shared_data, tmp_path, teacher=on_gpu)).device == "cuda"
    teacher = build_teacher(TeacherConfig(model=TINY, pretrained="none", allow_random=True))
    plan = plan_cache("refcoco", shared_data, skip_missing=True)
    fingerprint = fingerprint_for(teacher, plan, "float16", device="cuda")
    assert fingerprint["compute"] == {"device": "cuda", "dtype": "bfloat16"}


def test_decode_workers_default_to_the_usable_cpus_shared_by_the_teachers(shared_data, tmp_path, monkeypatch):
    from pipeline.teacher.cache_job import decode_workers_for

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert decode_workers_for(job(shared_data, tmp_path, decode_workers=None)) == 15
    assert decode_workers_for(job(shared_data, tmp_path, decode_workers=None, workers=4)) == 3
    assert decode_workers_for(job(shared_data, tmp_path, decode_workers=2, workers=4)) == 2


def test_dask_tasks_are_groups_of_one_tables_consecutive_shards():
    # A dask task per shard would start an image loader per shard; a group shares one.
    from pipeline.teacher.cache_job import ShardTask, task_groups

    tasks = [ShardTask(Path("s"), "images", i, ("x",)) for i in range(9)]
    tasks += [ShardTask(Path("s"), "texts", i, ("t",)) for i in range(2)]
    groups = task_groups(tasks, workers=2)
    assert [[(t.table, t.shard) for t in group] for group in groups] == [
        [("images", 0), ("images", 1), ("images", 2)],
        [("images", 3), ("images", 4), ("images", 5)],
        [("images", 6), ("images", 7), ("images", 8)],
        [("texts", 0)],
        [("texts", 1)],
    ]
