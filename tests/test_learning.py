"""Does the student learn to ground? Held-out checks against the trivial baselines, computed here.

Both sets train the demo's `shapes` student (frozen, precomputed EfficientNet-Lite0 + MiniLM, a small
fusion) for a CPU budget and evaluate on images it never saw:
- text-blind: one object an image and every expression "the object", so only the image can place the
  box; the student must end far above the centre prior and the text-only prior;
- referring: several objects with look-alike distractors; the student must end above the best
  text-only prior (the mean training box of each expression), which a text shortcut cannot pass.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.data import load_split, make_shapes
from pipeline.data.safe_pickle import load_pickle, write_split_file
from pipeline.engine.baselines import prior_results
from pipeline.engine.train import train
from pipeline.studies.demo import DEMO_SHAPES, DemoConfig, demo_run

pytestmark = pytest.mark.slow


def _blank_expressions(root: Path) -> None:
    """Rewrite every split so that each record says only "the object"."""
    for path in (root / "splits" / "shapes").glob("*.pth"):
        records = [(*record[:3], "the object", *record[4:]) for record in load_pickle(path)]
        write_split_file(path, records)


def _train_and_compare(root: Path, out: Path, epochs: int) -> tuple[dict, dict]:
    config = DemoConfig(out=out, epochs=epochs, lr_drop=epochs, workers=0, input_size=128, dropout=0.1)
    summary = train(demo_run(config, root, None, out / "run", distill="none", gallery_size=0))
    splits = {split: load_split("shapes", split, root) for split in ("val", "test")}
    priors = prior_results(load_split("shapes", "train", root), splits)
    print({"student": summary["results"], **priors})  # the figures, for `pytest -s`
    return summary["results"], priors


def test_the_student_places_the_box_from_the_image_alone(tmp_path):
    root = tmp_path / "single"
    make_shapes(
        root, n=500, seed=1, image_size=128, config=replace(DEMO_SHAPES, min_objects=1, max_objects=1)
    )
    _blank_expressions(root)
    results, priors = _train_and_compare(root, tmp_path, epochs=50)
    for split in ("val", "test"):
        ceiling = max(priors["centre prior"][split]["acc@0.5"], priors["text-only prior"][split]["acc@0.5"])
        assert results[split]["acc@0.5"] >= ceiling + 0.4, (split, results[split], priors)


def test_the_student_passes_the_text_only_ceiling_on_referring_scenes(tmp_path):
    root = tmp_path / "scenes"
    make_shapes(root, n=1200, seed=2, image_size=128, config=DEMO_SHAPES)
    results, priors = _train_and_compare(root, tmp_path, epochs=25)
    for split in ("val", "test"):
        ceiling = max(priors["centre prior"][split]["acc@0.5"], priors["text-only prior"][split]["acc@0.5"])
        assert results[split]["acc@0.5"] >= ceiling + 0.04, (split, results[split], priors)
