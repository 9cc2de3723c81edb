"""Phase 2 on CPU: the trainer with cached / online / no distillation, resume, DDP, NaN, eval, predict."""

import dataclasses
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_TEACHER,
    assert_png,
    assert_results_md,
    assert_run_checkpoint,
    run_torchrun,
    tiny_run,
)

import pipeline.engine.train as train_module
import pipeline.student.registry as student_registry
from pipeline.data import load_split, make_shapes
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.config import TrainConfig
from pipeline.engine.train import TrainingDiverged, train
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


def test_cached_run_writes_artefacts_and_never_imports_the_teacher(shapes_root, store, tmp_path):
    out = tmp_path / "run"
    config_json = json.dumps(tiny_run(shapes_root, out, store=store).to_dict())
    script = (
        "import json, sys\n"
        "from pipeline.engine.config import TrainConfig\n"
        "from pipeline.engine.train import train\n"
        f"summary = train(TrainConfig.from_dict(json.loads({config_json!r})))\n"
        "print(json.dumps({'open_clip': 'open_clip' in sys.modules,"
        " 'teacher': 'pipeline.teacher' in sys.modules, 'built': summary['teacher_built']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    flags = json.loads(done.stdout.strip().splitlines()[-1])
    assert flags == {"open_clip": False, "teacher": False, "built": False}
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert {"loss/box", "loss/giou", "loss/distill_image", "loss/distill_text", "val/acc@0.5"} <= set(
        epochs[0]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_fingerprint"]["weights"]["kind"] == "random"
    # the summary agrees with the run: 2 epochs of 2 steps, val and test at most 8 records each
    assert (summary["epochs"], summary["steps"], summary["distill"]) == (2, 4, "cached")
    assert set(summary["results"]) == {"val", "test"}
    for split, row in summary["results"].items():
        assert row["n"] == min(8, len(load_split("shapes", split, shapes_root))) > 0
        assert 0 <= row["acc@0.5"] <= 1 and 0 <= row["miou"] <= 1
    best_epoch = max(epochs, key=lambda row: row["val/acc@0.5"])["epoch"]  # the first of equals
    assert summary["best_val_acc@0.5"] == pytest.approx(max(row["val/acc@0.5"] for row in epochs))
    assert summary["results_from"] == f"best.pt (epoch {best_epoch})"
    assert_results_md(out / "results.md", summary["results"])
    last = assert_run_checkpoint(out / "last.pt", epoch=2)
    assert last["step"] == 4 and last["train_config"] == json.loads(config_json)
    best = assert_run_checkpoint(out / "best.pt", epoch=best_epoch)
    assert best["model"].keys() == last["model"].keys()
    assert_png(out / "curves.png")
    assert_png(out / "gallery.png")


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "persistent-worker"])
def test_resumed_run_ends_with_the_same_weights(shapes_root, store, tmp_path, workers):
    """With a worker kept across epochs, epoch 2's augmentation must still be epoch 2's, resumed or not."""
    children_before = set(multiprocessing.active_children())
    straight = train(tiny_run(shapes_root, tmp_path / "straight", store=store, workers=workers))
    assert set(multiprocessing.active_children()) <= children_before  # a finished run leaves no workers
    train(tiny_run(shapes_root, tmp_path / "resumed", store=store, epochs=1, workers=workers))
    resumed = train(tiny_run(shapes_root, tmp_path / "resumed", store=store, resume=True, workers=workers))
    assert straight["steps"] == resumed["steps"] == 4
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def _worker_pids(loader) -> list[int]:
    iterator = loader._iterator  # DataLoader keeps it only while its workers persist
    return [] if iterator is None else [worker.pid for worker in iterator._workers]


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "restarted"])
def test_loader_workers_live_across_epochs_unless_turned_off(shapes_root, store, tmp_path, persistent):
    trainer = train_module.Trainer(
        tiny_run(shapes_root, tmp_path / "run", store=store, workers=1, persistent_workers=persistent)
    )
    pids = []
    for epoch in range(2):
        trainer.train_epoch(epoch)
        trainer.evaluate("val")
        pids.append((_worker_pids(trainer.train_loader), _worker_pids(trainer.eval_loaders["val"])))
    if persistent:
        assert pids[0] == pids[1] and all(len(worker_pids) == 1 for worker_pids in pids[0])
    else:
        assert pids == [([], []), ([], [])]


def poison_loss(monkeypatch, poisoned_steps) -> None:
    """Make the total loss NaN at the given (1-based) training steps."""
    transvg = student_registry.STUDENTS["transvg"]
    real_box, calls = transvg.loss_terms["box"], []

    def poisoned(*args, **kwargs):
        term = real_box(*args, **kwargs)
        calls.append(1)
        return term * float("nan") if poisoned_steps(len(calls)) else term

    poisoned_transvg = dataclasses.replace(transvg, loss_terms={**transvg.loss_terms, "box": poisoned})
    monkeypatch.setitem(student_registry.STUDENTS, "transvg", poisoned_transvg)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    shapes_root, store, tmp_path, monkeypatch
):
    poison_loss(monkeypatch, lambda step: step > 2)  # epoch 2
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(tiny_run(shapes_root, tmp_path / "run", store=store))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_loss_reaches_the_host_every_sync_every_steps_and_at_the_epoch_end(
    shapes_root, store, tmp_path, monkeypatch
):
    real_sync, syncs = train_module.Trainer.synced_means, []

    def counting(self, running, count):
        syncs.append(count)
        return real_sync(self, running, count)

    monkeypatch.setattr(train_module.Trainer, "synced_means", counting)
    summary = train(
        tiny_run(shapes_root, tmp_path / "run", store=store, epochs=1, batch_size=2, sync_every=3)
    )
    assert summary["steps"] == 4
    assert syncs == [3, 4]  # step 3, then the epoch's end, read once for bar and means
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss/total"] > 0 and all(isinstance(row[f"loss/{key}"], float) for key in ("box", "giou"))


def test_live_signals_reach_tensorboard_and_the_metrics_file(shapes_root, store, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_run(shapes_root, out, store=store, epochs=1, batch_size=2, sync_every=2, progress=True))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "lr", "val/acc@0.5", "samples_per_s", "data_wait_fraction"} <= tags, tags
    assert not any(tag.startswith("gpu/") for tag in tags)  # peak GPU memory: CUDA only
    assert [event.step for event in events.Scalars("loss/total")] == [2, 4]  # a sync window, the epoch
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["data_wait_fraction"] <= 1.0 and row["samples_per_s"] > 0
    assert "data_wait=" in capsys.readouterr().err  # on the progress bar


def test_a_nan_inside_a_sync_window_is_still_caught_before_the_checkpoint(
    shapes_root, store, tmp_path, monkeypatch
):
    poison_loss(monkeypatch, lambda step: step == 1)  # NaN weights follow; the window's sum stays NaN
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train(tiny_run(shapes_root, tmp_path / "run", store=store, batch_size=2, sync_every=100))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_store_for_other_data_is_refused(shapes_root, tmp_path, shared_data):
    other = build_cache(
        CacheJobConfig(
            dataset="refcoco",
            data_root=shared_data,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path / "other",
            decode_workers=0,
            skip_missing=True,
            progress=False,
        )
    )
    from pipeline.targets import TargetsMismatchError

    with pytest.raises(TargetsMismatchError):
        train(tiny_run(shapes_root, tmp_path / "run", store=other))


@pytest.mark.parametrize("trainable", [False, True])
def test_online_teacher_is_frozen_unless_trainable_and_then_checkpointed(shapes_root, tmp_path, trainable):
    config = tiny_run(
        shapes_root,
        tmp_path / "run",
        distill="online",
        teacher_model=TINY_TEACHER,
        teacher_pretrained="none",
        allow_random_teacher=True,
        teacher_trainable=trainable,
        epochs=1,
    )
    trainer = train_module.Trainer(config)
    teacher = trainer.source.teacher.teacher.model
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    summary = trainer.fit()
    assert summary["teacher_built"] is True and summary["steps"] == 2
    changed = [key for key, value in teacher.state_dict().items() if not torch.equal(value, before[key])]
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    if trainable:
        assert changed, "a trainable teacher's weights must move"
        assert all(torch.equal(checkpoint["teacher"][key], teacher.state_dict()[key]) for key in changed)
        resumed = train_module.Trainer(config)
        resumed.resume()
        restored = resumed.source.teacher.teacher.model.state_dict()
        assert all(torch.equal(restored[key], teacher.state_dict()[key]) for key in changed)
    else:
        assert changed == [] and "teacher" not in checkpoint


def test_compiled_student_trains_and_checkpoints_plain_weights(shapes_root, store, tmp_path, monkeypatch):
    """--compile: the compiled student trains, and checkpoints hold the plain module's keys.

    Inductor's C++ build takes ~80 s on a 2-core CPU, so the test traces with the aot_eager backend:
    the same dynamo graphs, without code generation."""
    import torch._dynamo

    torch._dynamo.reset()
    real_compile, compiled = torch.compile, []

    def compile_with_aot_eager(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    summary = train(tiny_run(shapes_root, tmp_path / "run", store=store, epochs=1, compile=True))
    assert len(compiled) == 1 and summary["steps"] == 2
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    keys = load_checkpoint(tmp_path / "run" / "last.pt")["model"].keys()
    assert keys == compiled[0].state_dict().keys()
    assert not any("_orig_mod" in key for key in keys)


def test_eval_and_predict_commands(shapes_root, store, tmp_path):
    train(tiny_run(shapes_root, tmp_path / "run", store=store, epochs=1))
    checkpoint = tmp_path / "run" / "best.pt"
    cli = [sys.executable, "-m", "pipeline.cli"]
    shown = subprocess.run(
        [*cli, "eval", "--checkpoint", str(checkpoint), "--data-root", str(shapes_root), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    results = json.loads(shown.stdout)
    assert set(results) == {"val", "test"}
    for split, row in results.items():  # every record: eval does not inherit the run's --max-samples
        assert row["n"] == len(load_split("shapes", split, shapes_root))
        assert 0 <= row["acc@0.5"] <= 1 and 0 <= row["miou"] <= 1
    sample = load_split("shapes", "val", shapes_root)[0]
    drawn = subprocess.run(
        [
            *cli,
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(sample.image_path),
            "--text",
            sample.text,
            "--out",
            str(tmp_path / "pred.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert drawn.returncode == 0, drawn.stderr
    box = json.loads(drawn.stdout.strip().splitlines()[-1])["box_xyxy"]
    assert len(box) == 4 and box[0] <= box[2] and box[1] <= box[3]
    assert_png(tmp_path / "pred.png", size=(600, 600))  # the image, its box and the expression drawn


def test_two_process_gloo_ddp_evaluates_every_sample_exactly_once(shapes_root, store, tmp_path):
    out = tmp_path / "ddp"
    args = ["train_student.py", "shapes", "--data-root", shapes_root, "--cache", store, "--out", out]
    args += ["--student", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2"]
    args += ["--max-samples", "7", "--workers", "0", "--device", "cpu", "--student-set", "dropout=0.05"]
    run_torchrun(2, args)
    summary = json.loads((out / "summary.json").read_text())
    assert load_checkpoint(out / "last.pt")["student_config"]["dropout"] == 0.05  # --student-set reached it
    assert summary["results"]["val"]["n"] == 7  # odd: no padded duplicates across the two ranks
    single = train_module.Trainer(
        tiny_run(shapes_root, tmp_path / "single", store=store, epochs=1, max_samples=7)
    )
    payload = load_checkpoint(out / "last.pt")
    single.model.load_state_dict(payload["model"])
    from pipeline.engine.evaluate import summarize

    for split in ("val", "test"):
        expected = summarize(single.evaluate(split))
        assert summary["results"][split]["n"] == expected["n"]
        assert summary["results"][split]["acc@0.5"] == pytest.approx(expected["acc@0.5"])
        assert summary["results"][split]["miou"] == pytest.approx(
            expected["miou"], abs=1e-4
        )  # batch shapes differ per rank


def test_batch_size_is_the_global_batch_split_across_torchrun_ranks(shapes_root, tmp_path):
    """2 ranks with --batch-size 4 take 2 each: 8 records, 4 per rank, 2 steps an epoch (not 1)."""
    out = tmp_path / "global"
    args = ["train_student.py", "shapes", "--data-root", shapes_root, "--distill", "none", "--out", out]
    args += ["--student", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "4"]
    args += ["--max-samples", "8", "--workers", "0", "--device", "cpu"]
    done = run_torchrun(2, args)
    assert "batch: 4 global = 2 rank(s) x 2" in done.stdout
    assert load_checkpoint(out / "last.pt")["step"] == 2
    written = json.loads((out / "config.json").read_text())
    assert (written["batch_size"], written["world_size"], written["batch_size_per_rank"]) == (4, 2, 2)
    refused = run_torchrun(2, [*args[:-8], "--batch-size", "3", *args[-6:]], check=False)
    assert refused.returncode != 0
    assert "error: --batch-size 3 is the global batch and does not divide by the 2 ranks" in refused.stderr
    assert (
        "pipeline/engine" not in refused.stderr
    )  # the ranks' one line, no traceback (torchrun's own follows)


def test_the_ablation_grid_runs_under_torchrun_with_the_baselines_options(shapes_root, store, tmp_path):
    """`train --ablations`: every variant in one process group with the baseline's settings; resumable."""
    import csv

    from pipeline.studies.ablations import ablation_grid

    out = tmp_path / "grid"
    args = ["train_student.py", "shapes", "--data-root", shapes_root, "--cache", store, "--out", out]
    args += ["--student", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2"]
    args += ["--max-samples", "5", "--workers", "0", "--device", "cpu", "--ablations"]
    done = run_torchrun(2, args)
    assert done.stdout.count("results: ") == 1
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["variant"] for row in rows] == list(ablation_grid())
    runs = {json.loads(path.read_text())["out"]: path.parent for path in out.glob("*/config.json")}
    assert len(runs) == len(rows)
    for folder in runs.values():
        config = json.loads((folder / "config.json").read_text())
        assert (config["student"], config["max_samples"]) == ("tiny", 5)
        assert json.loads((folder / "summary.json").read_text())["results"]["val"]["n"] == 5  # once each
    assert json.loads((out / "no_distillation" / "config.json").read_text())["distill"] == "none"
    assert json.loads((out / "lambda0.5" / "config.json").read_text())["loss"]["giou_weight"] == 0.5

    # An interrupted grid picks up where it stopped: finished variants are kept, the missing one is run.
    import shutil

    shutil.rmtree(out / "lambda2.0")
    run_torchrun(2, [*args, "--resume"])
    for folder in runs.values():  # metrics.jsonl gains a line per epoch trained: none for finished runs
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1, folder.name
    assert list(csv.DictReader((out / "results.csv").open())) == rows


def overfit_config(data_root: Path, out: Path, samples: int) -> TrainConfig:
    """Fit `samples` training records and evaluate on them: the tiny student, no regularisation."""
    return tiny_run(
        data_root,
        out,
        student_overrides={"dropout": 0.0, "freeze_bn": True},
        epochs=150,
        lr_drop=112,
        batch_size=8,
        lr=1e-3,
        lr_pretrained=1e-3,
        weight_decay=0.0,
        clip_grad=1.0,
        max_samples=samples,
        augment=False,
        val_split="train",
        eval_splits=("train",),
        gallery_size=12,
    )


@pytest.mark.slow
def test_tiny_student_fits_its_32_training_records(shapes_root, tmp_path):
    """Measured on the records it trained on (val_split and eval_splits are "train"): a capacity check."""
    summary = train(overfit_config(shapes_root, tmp_path / "overfit", samples=32))
    assert summary["results"]["train"]["acc@0.5"] >= 0.9


@pytest.mark.slow
def test_fitting_its_training_records_takes_the_box_from_the_image_when_the_text_cannot_tell(tmp_path):
    """One object an image, and queries that repeat ("the triangle" at several places): the text
    alone cannot place the box, so fitting these training records (measured on them, not held out)
    needs the visual pathway."""
    from pipeline.data.shapes import ShapesConfig
    from pipeline.engine.diagnose import diagnose_checkpoint

    root = tmp_path / "single"
    make_shapes(root, n=24, seed=0, config=ShapesConfig(min_objects=1, max_objects=1))
    texts = [sample.text for sample in load_split("shapes", "train", root)[:16]]
    assert len(set(texts)) < len(texts)
    summary = train(overfit_config(root, tmp_path / "run", samples=16))
    assert summary["results"]["train"]["acc@0.5"] >= 0.9
    probes = diagnose_checkpoint(tmp_path / "run" / "last.pt", root, "train", samples=16)
    assert probes["box_std_over_images"] > 0.01  # a text-only model: ~1e-6 (README, the demo)


def test_a_bad_student_setting_stops_the_train_command_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(
        app, ["train", "shapes", "--data-root", str(tmp_path), "--student-set", "vl_layer=1"]
    )
    assert result.exit_code == 2
    assert "unknown StudentConfig field 'vl_layer'" in result.output


def test_default_loader_workers_share_the_usable_cpus_among_the_local_ranks(monkeypatch):
    import os

    from pipeline.cli.options import default_loader_workers

    assert default_loader_workers(usable=2, local_world_size=1) == 2
    assert default_loader_workers(usable=16, local_world_size=1) == 8  # capped
    assert default_loader_workers(usable=16, local_world_size=4) == 4
    assert default_loader_workers(usable=128, local_world_size=8) == 8
    assert default_loader_workers(usable=4, local_world_size=8) == 1  # never 0: in-process is slower
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's ranks on this node
    assert default_loader_workers() == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_loader_workers() == 2
