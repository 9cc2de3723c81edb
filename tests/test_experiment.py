"""The experiment command: training subsets, mean ± std over seeds, and the QUICK study end to end."""

import csv
import json
import math
from dataclasses import replace

import pytest
from conftest import assert_png

import pipeline.studies.experiment as experiment
import pipeline.teacher.training as teacher_training
import storage
from pipeline.data import file_sha256, image_subset, load_split
from pipeline.data.sample import Sample
from pipeline.data.shapes import EXTREMES, RELATIONS
from pipeline.engine.config import TrainConfig
from pipeline.losses import LossConfig
from pipeline.studies.ablations import ablation_config
from pipeline.studies.demo import DemoConfig, demo_run, prepare_demo_assets
from pipeline.studies.experiment import ExperimentConfig, aggregate, run_experiment


def _samples(images: int, per_image: int) -> list[Sample]:
    return [
        Sample(f"/img/{i}.jpg", f"{i}.jpg", (0, 0, 1, 1), f"text {j}", "train", f"{i}_{j}", i * per_image + j)
        for i in range(images)
        for j in range(per_image)
    ]


def test_image_subset_keeps_whole_images_and_is_repeatable():
    samples = _samples(images=20, per_image=3)
    quarter = image_subset(samples, 0.25)
    assert len({s.image_key for s in quarter}) == 5
    assert len(quarter) == 15  # every expression of a kept image
    assert quarter == image_subset(samples, 0.25)
    assert {s.image_key for s in image_subset(samples, 0.25, seed=1)} != {s.image_key for s in quarter}
    assert image_subset(samples, 1.0) == samples
    with pytest.raises(ValueError, match="fraction"):
        image_subset(samples, 0.0)


def test_a_train_fraction_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="train-fraction"):
        TrainConfig(dataset="shapes", distill="none", train_fraction=1.5)


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    runs = [
        {"data": "", "fraction": 1.0, "variant": "a", "seed": 0, "test acc@0.5": 0.2},
        {"data": "", "fraction": 1.0, "variant": "a", "seed": 1, "test acc@0.5": 0.4},
        {"data": "", "fraction": 1.0, "variant": "b", "seed": 0, "test acc@0.5": 0.5},
    ]
    a, b = aggregate(runs)
    assert (a["group"], a["variant"], a["seeds"]) == ("100% of train images", "a", 2)
    assert a["test acc@0.5"] == pytest.approx(0.3)
    assert a["test acc@0.5 std"] == pytest.approx(math.sqrt(0.02))  # (0.1² + 0.1²) / (2 − 1)
    assert (b["test acc@0.5"], b["test acc@0.5 std"]) == (0.5, 0.0)


def test_the_students_study_switches_the_preset_and_keeps_the_rest():
    base = TrainConfig(dataset="shapes", distill="cached", cache="store", student="shapes", out="runs/x")
    variants = experiment.STUDENT_VARIANTS
    runs = {name: ablation_config(base, name, changes) for name, changes in variants.items()}
    assert [(r.student, r.distill) for r in runs.values()] == [
        ("shapes", "cached"),
        ("shapes", "none"),
        ("lgrnet-shapes", "cached"),
        ("lgrnet-shapes", "none"),
    ]
    assert len({r.out for r in runs.values()}) == 4
    assert all(r.loss == base.loss and r.epochs == base.epochs for r in runs.values())


def test_the_demo_trains_with_the_box_loss_the_study_chose(tmp_path):
    # `epmvg experiment box-loss` (README): smooth-L1 with β = 1 beat β = 0.1 and L1 on every seed's val
    run = demo_run(DemoConfig(out=tmp_path), tmp_path / "data", tmp_path / "cache", tmp_path / "run")
    assert (run.loss.box, run.loss.box_beta) == ("smooth_l1", 1.0)
    assert run.loss == LossConfig()  # the paper's objective; the cell loss comes from the preset


def test_the_demo_reads_upsampled_scenes_and_the_studies_keep_their_measured_settings(tmp_path):
    demo = DemoConfig(out=tmp_path)
    run = demo_run(demo, tmp_path / "data", tmp_path / "cache", tmp_path / "run")
    assert run.student_overrides == {"image_size": 2 * demo.image_size, "dropout": 0.0}  # README: why
    study = demo_run(ExperimentConfig().demo, tmp_path / "data", tmp_path / "cache", tmp_path / "run")
    assert study.student_overrides == {"image_size": 128, "dropout": 0.1}  # as the published tables ran


def test_unknown_study_is_refused():
    with pytest.raises(ValueError, match="unknown study"):
        ExperimentConfig(study="nope")


@pytest.mark.slow
def test_quick_distillation_study_end_to_end_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "experiment"
    results = run_experiment(ExperimentConfig.quick("distillation", out))
    with (out / "results.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    variants = list(experiment.DISTILLATION_VARIANTS)
    assert len(runs) == 2 * 2 * len(variants)  # fractions x seeds x variants
    assert {(r["fraction"], r["variant"], r["seed"]) for r in runs} == {
        (str(f), v, str(s)) for f in (1.0, 0.25) for v in variants for s in (0, 1)
    }
    table = results.read_text()
    for row in [*variants, "centre prior", "text-only prior"]:
        assert f"| {row} |" in table, row
    assert "| 25% of train images |" in table and " ± " in table
    assert_png(out / "results.png")
    quarter = list((out / "train0.25" / "seed0").iterdir())
    assert len(quarter) == len(variants)  # one run folder a variant
    no_cd = next(p for p in quarter if p.name == "no_CD")
    summary = json.loads((no_cd / "summary.json").read_text())
    assert summary["distill"] == "none" and summary["teacher_fingerprint"] is None
    assert set(summary["results"]) >= {"val", "test"} and summary["epochs"] >= 1

    def no_training(config):
        raise AssertionError(f"finished run trained again: {config.out}")

    def no_teacher_training(config):
        raise AssertionError(f"teacher trained again: {config.out}")

    monkeypatch.setattr(experiment, "train", no_training)
    monkeypatch.setattr(teacher_training, "train_teacher", no_teacher_training)
    assert run_experiment(ExperimentConfig.quick("distillation", out)) == results
    # a teacher trained otherwise than asked is not reused
    with pytest.raises(AssertionError, match="teacher trained again"):
        prepare_demo_assets(replace(DemoConfig.quick(out), teacher_epochs=2))


@pytest.mark.slow
def test_quick_exact_views_study_replays_the_same_views_under_each_target(tmp_path):
    out = tmp_path / "experiment"
    run_experiment(ExperimentConfig.quick("exact-views", out))
    with (out / "results.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert {r["variant"] for r in runs} == set(experiment.EXACT_VIEW_VARIANTS)
    store = storage.FeatureStore.open(out / "cache")
    assert store.fingerprint["views"]["count"] == experiment.EXACT_VIEWS
    configs = {
        p.name: json.loads((p / "config.json").read_text()) for p in (out / "train1" / "seed0").iterdir()
    }
    assert len(configs) == len(experiment.EXACT_VIEW_VARIANTS)
    for config in configs.values():  # every variant trains on the store's augmented views, precomputed
        assert config["augment"] and config["precompute_frozen"] and config["distill"] == "cached"
    assert sorted(c["view_targets"] for c in configs.values()) == ["exact", "exact", "whole-image"]
    no_cd = [c["loss"] for c in configs.values() if not c["loss"]["image_term"]]
    assert no_cd == [{**no_cd[0], "text_term": False}]
    tables = [p for p in (out / "frozen").iterdir() if p.name.startswith("train-")]
    assert len(tables) == 1, "the variants and seeds share one precomputed view table"


@pytest.mark.slow
def test_quick_coord_embedding_study_switches_the_data_and_the_embedding(tmp_path):
    out = tmp_path / "experiment"
    results = run_experiment(ExperimentConfig.quick("coord-embedding", out)).read_text()
    spatial = {word for name, _, _ in (*EXTREMES, *RELATIONS) for word in name.split()} - {"of"}
    words = {
        data: {word for s in load_split("shapes", "train", out / data / "data") for word in s.text.split()}
        for data in ("spatial-words", "no-spatial-words")
    }
    assert spatial & words["spatial-words"] and not spatial & words["no-spatial-words"]
    for data in ("spatial-words", "no-spatial-words"):  # each data setting has its own teacher and cache
        assert storage.FeatureStore.open(out / data / "cache").tables()  # complete, or it would not open
        teacher = json.loads((out / data / "teacher" / "teacher.json").read_text())
        assert teacher["checkpoint_sha256"] == file_sha256(out / data / "teacher" / "teacher.safetensors")
        runs = {p.name: p for p in (out / data / "train1" / "seed0").iterdir()}
        configs = {name: json.loads((p / "config.json").read_text()) for name, p in runs.items()}
        assert sorted(c["student_overrides"].get("coord_embedding", True) for c in configs.values()) == [
            False,
            True,
        ]
        assert {c["student"] for c in configs.values()} == {"lgrnet-shapes"}
    for group in ("spatial words, 100% of train images", "no spatial words, 100% of train images"):
        assert results.count(f"| {group} |") == len(experiment.COORD_VARIANTS) + 2  # + both priors
