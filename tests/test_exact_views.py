"""Issue #12, exact-view mode: `cache build --views K` embeds K drawn train views per record and the
trainer replays view (epoch mod K), so the cached target is the teacher's embedding of the student's
own pixels."""

import json
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEACHER, tiny_run
from PIL import Image

import pipeline.teacher.cache_job as job_module
import storage
from pipeline.data import TrainTransform, TransformConfig, make_shapes
from pipeline.data.device_batch import to_device_batch
from pipeline.data.transforms import AugmentParams, apply_augment_params, draw_augment_params
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.frozen_inputs import build_view_table, model_inputs
from pipeline.engine.setup import student_config_for
from pipeline.engine.train import Trainer, train
from pipeline.student import transform_config_for
from pipeline.targets.online import OnlineTeacher
from pipeline.targets.replay import ViewsMismatchError
from pipeline.targets.schema import VIEW_PARAMS, VIEWS
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache
from pipeline.teacher.views import ViewSpec

K = 2
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=10, seed=0, image_size=96)
    return root


# conftest's tiny run on 6 records a split, with 2 gallery images
run_config = partial(tiny_run, max_samples=6, gallery_size=2)


def run_transform(shapes_root: Path) -> TransformConfig:
    """The train transform of `run_config`'s student."""
    return transform_config_for(student_config_for(run_config(shapes_root, Path())))


def job(shapes_root: Path, out: Path, **changes) -> CacheJobConfig:
    transform = run_transform(shapes_root)
    settings = dict(
        dataset="shapes",
        data_root=shapes_root,
        teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
        out=out,
        dtype="float32",
        decode_workers=0,
        progress=False,
        image_shard_rows=8,  # views shards of 4 records: several, so an interruption can fall between them
        views=ViewSpec(K, transform, seed=0),
    )
    return CacheJobConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def views_store(shapes_root, tmp_path_factory) -> Path:
    return build_cache(job(shapes_root, tmp_path_factory.mktemp("cache") / "store"))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_augment_params_replay_the_train_transform(shapes_root):
    """Without colour jitter (whose factors the row keeps in millionths) a stored row gives the
    transform's exact pixels; with it, the cache and the trainer both apply the stored row."""
    transform = replace(run_transform(shapes_root), color_jitter=0)
    path = sorted((shapes_root / "images").rglob("*.jpg"))[0]
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    for seed in range(6):
        box, text = [20.0, 30.0, 60.0, 70.0], "the red circle"
        direct = TrainTransform(transform)(rgb, box, text, np.random.default_rng(seed))
        params = draw_augment_params(rgb.size, box, text, transform, np.random.default_rng(seed))
        replayed = apply_augment_params(rgb, box, text, AugmentParams.from_row(params.to_row()), transform)
        assert torch.equal(direct.pixels, replayed.pixels) and torch.equal(
            direct.box_cxcywh, replayed.box_cxcywh
        )
        assert direct.flipped == replayed.flipped and direct.text == replayed.text


def test_replayed_views_are_what_the_teacher_embedded(shapes_root, views_store, tmp_path):
    config = run_config(shapes_root, tmp_path / "run", store=views_store)
    trainer = Trainer(config)
    assert trainer.train_set.views is not None, "the trainer must pick exact-view mode from the store"
    online_config = replace(
        config,
        distill="online",
        cache=None,
        teacher_model=TINY_TEACHER,
        teacher_pretrained="none",
        allow_random_teacher=True,
    )
    transform = trainer.transform_config
    online = OnlineTeacher(online_config, torch.device("cpu"), (transform.mean, transform.std))
    n = len(trainer.train_set)
    plain_cos, pixels_by_epoch = [], []
    for epoch in range(K):
        batch = trainer.collate([trainer.train_set[epoch * n + i] for i in range(n)])
        batch = to_device_batch(batch, trainer.transform_config, torch.device("cpu"))
        assert bool((batch["view"] == epoch % K).all())
        cached_image, cached_text = trainer.source.targets(batch)
        online_image, online_text = online(batch["pixels"], batch["pixel_mask"], batch["text"])
        cos = _cos(cached_image, online_image)
        assert bool((cos >= 0.9999).all()), f"epoch {epoch}: {cos.tolist()}"
        assert bool((_cos(cached_text, online_text) >= 0.9999).all())  # the flip's text swap follows
        plain = trainer.source.tables.lookup(
            config.train_split, batch["index"], batch["flipped"], batch["text_swapped"]
        )
        plain_cos.append(_cos(plain[0], online_image))
        pixels_by_epoch.append(batch["pixels"])
    assert not torch.equal(pixels_by_epoch[0], pixels_by_epoch[1]), "two views must differ"
    # The whole-image rows do not match the augmented pixels: the test can tell the modes apart.
    assert float(torch.cat(plain_cos).min()) < 0.9999


def test_a_run_with_another_transform_is_refused(shapes_root, views_store, tmp_path):
    config = run_config(
        shapes_root, tmp_path / "run", store=views_store, student_overrides={"image_size": 96}
    )
    with pytest.raises(ViewsMismatchError, match="image_size: store 64 vs run 96"):
        Trainer(config)


def test_no_augment_run_uses_the_whole_image_rows(shapes_root, views_store, tmp_path):
    trainer = Trainer(run_config(shapes_root, tmp_path / "run", store=views_store, augment=False))
    assert trainer.train_set.views is None and "view" not in trainer.collate([trainer.train_set[0]])


def _assert_same_views(a: Path, b: Path) -> None:
    first, second = storage.FeatureStore.open(a), storage.FeatureStore.open(b)
    assert first.fingerprint == second.fingerprint
    assert {VIEWS, VIEW_PARAMS} <= set(first.tables())
    for table in first.tables():
        assert np.array_equal(first.load_table(table), second.load_table(table)), table
    for name in first.index_names():
        assert np.array_equal(first.load_index(name), second.load_index(name)), name


def test_views_store_resumes_verifies_and_round_trips_hdf5(shapes_root, views_store, tmp_path, monkeypatch):
    report = storage.verify_store(views_store)
    assert report.ok, report.problems
    assert VIEWS in storage.FeatureStore.open(views_store).tables()

    out = tmp_path / "interrupted"
    real, views_written = storage.write_shard, []

    def dying_write(path, table, shard, values):
        real(path, table, shard, values)
        views_written.append(table == VIEWS)
        if sum(views_written) == 2:
            raise KeyboardInterrupt("killed between two views shards")

    monkeypatch.setattr(job_module.storage, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_cache(job(shapes_root, out))
    monkeypatch.setattr(job_module.storage, "write_shard", real)
    with pytest.raises(storage.IncompleteStoreError):
        storage.FeatureStore.open(out)
    build_cache(job(shapes_root, out))
    assert storage.verify_store(out).ok
    _assert_same_views(out, views_store)

    storage.export_hdf5(views_store, tmp_path / "store.h5")
    storage.import_hdf5(tmp_path / "store.h5", tmp_path / "back")
    assert storage.verify_store(tmp_path / "back").ok
    _assert_same_views(tmp_path / "back", views_store)


def test_views_on_two_dask_workers_equal_one_worker(shapes_root, views_store, tmp_path):
    _assert_same_views(build_cache(job(shapes_root, tmp_path / "store", workers=2)), views_store)


def test_a_store_with_other_views_is_not_resumed_into(shapes_root, views_store, tmp_path):
    """The transform config is in the fingerprint: another --views setting is another store."""
    other = job(shapes_root, views_store)
    other = replace(other, views=replace(other.views, seed=1))
    with pytest.raises(storage.FingerprintMismatchError):
        build_cache(other)


FROZEN = {"image_size": 64, "frozen_backbone_stages": 5, "freeze_text_encoder": True}


def test_a_precomputed_view_table_is_the_replayed_views_forward_pass(shapes_root, views_store, tmp_path):
    """--precompute-frozen on an exact-view store: one backbone pass per (record, view), and each epoch
    reads the view the teacher embedded for it, exactly as the pixel path would feed it."""
    config = run_config(
        shapes_root, tmp_path / "run", store=views_store, student_overrides=FROZEN, precompute_frozen=True
    )
    trainer = Trainer(config)
    table = trainer.frozen_tables[config.train_split]
    n = len(trainer.train_set)
    assert len(table) == n and table.backbone_features.shape[0] == K * n
    in_a_worker = build_view_table(trainer.model, trainer.train_set, K, trainer.collate.tokenize, "cpu", 4, 1)
    for field in fields(table):
        assert torch.equal(getattr(in_a_worker, field.name), getattr(table, field.name)), field.name
    model = trainer.model.eval()
    for epoch in range(K + 1):  # epoch K comes back to view 0
        positions = [epoch * n + i for i in range(n)]
        pixel_batch = trainer.collate([trainer.train_set[p] for p in positions])
        pixel_batch = to_device_batch(pixel_batch, trainer.transform_config, torch.device("cpu"))
        table_batch = table.collate(positions)
        assert bool((table_batch["view"] == epoch % K).all())
        for key in ("box", "index", "flipped", "text_swapped", "view"):
            assert torch.equal(table_batch[key], pixel_batch[key]), key
        for mine, theirs in zip(
            trainer.source.targets(table_batch), trainer.source.targets(pixel_batch), strict=True
        ):
            assert torch.equal(mine, theirs)
        with torch.no_grad():
            from_table = model(**model_inputs(table_batch, torch.device("cpu")))
            from_pixels = model(**model_inputs(pixel_batch, torch.device("cpu")))
        torch.testing.assert_close(from_table.box, from_pixels.box, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(from_table.vls, from_pixels.vls, atol=1e-5, rtol=1e-4)


def test_whole_image_targets_replay_the_views_against_the_view_less_rows(shapes_root, views_store, tmp_path):
    """--view-targets whole-image: the student sees the same views, the targets are today's cache's."""
    config = run_config(shapes_root, tmp_path / "run", store=views_store, view_targets="whole-image")
    trainer = Trainer(config)
    batch = trainer.collate([trainer.train_set[len(trainer.train_set) + i] for i in range(4)])  # view 1
    image, text = trainer.source.targets(batch)
    plain = trainer.source.tables.lookup(
        config.train_split, batch["index"], batch["flipped"], batch["text_swapped"]
    )
    exact = trainer.source.tables.lookup(
        config.train_split, batch["index"], batch["flipped"], batch["text_swapped"], batch["view"]
    )
    assert torch.equal(image, plain[0]) and torch.equal(text, plain[1])
    assert not torch.equal(image, exact[0])


def test_precomputed_augmented_training_needs_a_views_store(shapes_root, tmp_path):
    store = build_cache(job(shapes_root, tmp_path / "plain", views=None))
    config = run_config(
        shapes_root, tmp_path / "run", store=store, student_overrides=FROZEN, precompute_frozen=True
    )
    with pytest.raises(ValueError, match="needs an exact-view cache"):
        Trainer(config)


def test_a_precomputed_views_run_trains_and_resumes(shapes_root, views_store, tmp_path):
    settings = dict(student_overrides=FROZEN, precompute_frozen=True, frozen_cache=tmp_path / "frozen")
    straight = train(run_config(shapes_root, tmp_path / "straight", store=views_store, epochs=3, **settings))
    train(run_config(shapes_root, tmp_path / "resumed", store=views_store, epochs=2, **settings))
    resumed = train(
        run_config(shapes_root, tmp_path / "resumed", store=views_store, epochs=3, resume=True, **settings)
    )
    assert resumed["steps"] == straight["steps"]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    for key in a:  # the second run read the first one's saved table: that must not change its training
        assert torch.equal(a[key], b[key]), key


def test_views_embedded_in_batches_equal_the_one_record_at_a_time_build(shapes_root, views_store):
    # Records x K views through one loader: with one record per batch, the same bytes as rendering and
    # encoding one record's K views at a time (the build before batching). In larger batches the CPU's
    # GEMM blocking changes the last bits (the teacher is not batch-invariant), nothing more.
    from pipeline.targets.replay import render_view
    from pipeline.teacher import build_teacher
    from pipeline.teacher.views import embed_views, plan_views

    spec = ViewSpec(K, run_transform(shapes_root), seed=0)
    store = storage.FeatureStore.open(views_store)
    plan = plan_views("shapes", shapes_root, store.load_index("train/image_row"), spec)
    teacher = build_teacher(TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True))
    one_at_a_time = []
    for item in plan.items:
        path, box, text, rows = json.loads(item)
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        views = [render_view(rgb, box, text, row, spec.transform) for row in rows]
        pixels = torch.stack([teacher.preprocess_view(view) for view in views])
        one_at_a_time.append(teacher.encode_images(pixels))
    expected = torch.stack(one_at_a_time).numpy()
    per_record = embed_views(teacher, plan.items, spec.transform, batch_size=K, decode_workers=0)
    assert per_record.shape == expected.shape == (len(plan.items), K, teacher.embedding_dim)
    assert per_record.tobytes() == expected.tobytes()
    # Four records (a store shard) per batch: the store's bytes, the per-record values up to bit noise.
    batched = embed_views(teacher, plan.items, spec.transform, batch_size=4 * K, decode_workers=0)
    assert store.load_table(VIEWS).tobytes() == batched.tobytes()
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-5)
