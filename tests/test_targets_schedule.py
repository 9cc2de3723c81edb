"""The trainer's small pure pieces: teacher-target variant lookup and the learning-rate schedule."""

import torch

from pipeline.engine.config import TrainConfig
from pipeline.engine.setup import lr_factor
from pipeline.targets import TargetsMismatchError, TeacherTargets


def make_targets() -> TeacherTargets:
    images = torch.arange(3 * 2 * 2, dtype=torch.float16).view(3, 2, 2)  # [row, variant, d]
    texts = torch.arange(4 * 2, dtype=torch.float16).view(4, 2) + 100
    rows = {
        "train": {
            "image_row": torch.tensor([2, 0, -1]),
            "text_row": torch.tensor([1, 3, 0]),
            "text_swapped_row": torch.tensor([2, 3, 0]),
        }
    }
    return TeacherTargets(images, texts, rows, fingerprint={})


def test_lookup_serves_the_flipped_image_and_the_swapped_text():
    targets = make_targets()
    image, text = targets.lookup(
        "train",
        torch.tensor([0, 1, 0]),
        torch.tensor([False, True, True]),
        torch.tensor([False, False, True]),
    )
    assert torch.equal(image, targets.image_embeddings[[2, 0, 2], [0, 1, 1]].float())
    assert torch.equal(text, targets.text_embeddings[[1, 3, 2]].float())
    assert image.dtype == text.dtype == torch.float32


def test_lookup_of_a_skipped_record_is_a_clear_error():
    targets = make_targets()
    try:
        targets.lookup("train", torch.tensor([2]), torch.tensor([False]), torch.tensor([False]))
    except TargetsMismatchError as error:
        assert "--skip-missing" in str(error)
    else:
        raise AssertionError("a record the store skipped was served")


def test_lr_factor_warms_up_then_drops_tenfold():
    config = TrainConfig(dataset="shapes", distill="none", epochs=4, lr_drop=3, warmup_epochs=0.5)
    steps_per_epoch = 10
    factors = [lr_factor(step, steps_per_epoch, config) for step in range(40)]
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert set(factors[5:30]) == {1.0}
    assert set(factors[30:]) == {0.1}


def test_paper_schedule_is_the_default():
    assert (
        TrainConfig(dataset="refcocog", distill="none").epochs,
        TrainConfig(dataset="refcocog", distill="none").lr_drop,
    ) == (90, 60)
    plus = TrainConfig(dataset="refcoco+", distill="none")
    assert (plus.epochs, plus.lr_drop) == (180, 120)
