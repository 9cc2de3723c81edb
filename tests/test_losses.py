"""Each loss term (and the IoU metrics) against numbers worked out by hand."""

import pytest
import torch

from pipeline.criterion import LossTargets
from pipeline.losses import (
    LossConfig,
    box_regression_loss,
    distillation_loss,
    giou_loss,
    pool_teacher,
)
from pipeline.metrics import accuracy_at, box_iou_pairs
from pipeline.student import STUDENTS, TransVGOutput


def grounding_loss(output, box, teacher_image=None, teacher_text=None, config=None):
    """TransVG's criterion (its declared terms, `config`'s weights): the losses it returns."""
    losses, _ = STUDENTS["transvg"].criterion(config)(output, LossTargets(box, teacher_image, teacher_text))
    return losses


def approx(value: float):
    return pytest.approx(value, abs=1e-5)  # torchvision adds eps=1e-7 to GIoU denominators


# Sample 0 is off by 0.1 in cx and 0.2 in h; sample 1 is exact.
PRED = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.1, 0.2]])
TARGET = torch.tensor([[0.6, 0.5, 0.2, 0.4], [0.3, 0.4, 0.1, 0.2]])


def test_smooth_l1_sums_coordinates_and_averages_the_batch():
    # |d| < 1 everywhere → 0.5·d²: (0.5·0.01 + 0.5·0.04 + 0) / 2 samples
    assert box_regression_loss(PRED, TARGET).item() == approx(0.0125)


def test_smooth_l1_linear_part():
    # beta = 0.1: d = 0.1 → |d| − beta/2 = 0.05; d = 0.2 → 0.15; sample sum 0.2, batch mean 0.1
    assert box_regression_loss(PRED, TARGET, beta=0.1).item() == approx(0.1)


def test_l1_box_loss():
    # (0.1 + 0.2) / 2 samples
    assert box_regression_loss(PRED, TARGET, kind="l1").item() == approx(0.15)


def test_unknown_box_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown box loss"):
        box_regression_loss(PRED, TARGET, kind="l2")


def test_giou_overlapping_boxes():
    # xyxy (0,0,2,2) vs (1,1,3,3): IoU = 1/7, hull 9, union 7 → GIoU = 1/7 − 2/9 = −5/63
    pred = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert giou_loss(pred, target).item() == approx(1 + 5 / 63)


def test_giou_disjoint_boxes():
    # xyxy (0,0,1,1) vs (2,0,3,1): IoU = 0, hull 3, union 2 → GIoU = −1/3
    pred = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    target = torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert giou_loss(pred, target).item() == approx(4 / 3)


def test_giou_averages_the_batch_and_is_zero_for_identical_boxes():
    pred = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.2, 0.2]])
    target = torch.tensor([[2.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.2, 0.2]])
    assert giou_loss(pred, target).item() == approx((4 / 3 + 0) / 2)


def test_pool_teacher_even_bins():
    teacher = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert pool_teacher(teacher, 3).tolist() == [[1.5, 3.5, 5.5]]


def test_pool_teacher_overlapping_bins():
    # adaptive bins of 6 → 4: [0,2) [1,3) [3,5) [4,6)
    teacher = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert pool_teacher(teacher, 4).tolist() == [[1.5, 2.5, 4.5, 5.5]]


def test_pool_teacher_identity_at_same_width():
    teacher = torch.randn(3, 8)
    assert torch.equal(pool_teacher(teacher, 8), teacher)


STUDENT = torch.tensor([[1.0, 0.0]] * 3)
# Pooled to width 2: [3, 0] (parallel), [0, 5] (orthogonal), [−1, 0] (opposite).
TEACHERS = torch.tensor([[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 5.0, 5.0], [-1.0, -1.0, 0.0, 0.0]])


@pytest.mark.parametrize(("row", "expected"), [(0, 0.0), (1, 1.0), (2, 2.0)])
def test_cosine_distillation_parallel_orthogonal_opposite(row: int, expected: float):
    loss = distillation_loss(STUDENT[row : row + 1], TEACHERS[row : row + 1])
    assert loss.item() == approx(expected)


def test_cosine_distillation_averages_the_batch():
    assert distillation_loss(STUDENT, TEACHERS).item() == approx(1.0)


def test_l1_distillation():
    # |1−3|, |0−0|, |1−0|, |0−5|, |1+1|, |0−0| → mean over 6 elements = 10/6
    assert distillation_loss(STUDENT, TEACHERS, kind="l1").item() == approx(10 / 6)


def test_distillation_does_not_train_the_teacher():
    student = torch.randn(2, 4, requires_grad=True)
    teacher = torch.randn(2, 8, requires_grad=True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_distillation_trains_the_teacher_only_when_asked():
    student = torch.randn(2, 4, requires_grad=True)
    teacher = torch.randn(2, 8, requires_grad=True)
    distillation_loss(student, teacher, teacher_grad=True).backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def _output() -> TransVGOutput:
    # box: smooth-L1 0.5·(0.2² + 0.2²) = 0.04; xyxy (.4,.4,.6,.6) inside (.3,.3,.7,.7) → IoU = GIoU = 0.25
    return TransVGOutput(
        box=torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
        vls=torch.tensor([[1.0, 0.0]]),  # vs pooled [0, 5]: cosine loss 1, L1 (1 + 5)/2 = 3
        cls=torch.tensor([[1.0, 0.0]]),  # vs pooled [−1, 0]: cosine loss 2, L1 (2 + 0)/2 = 1
    )


GT_BOX = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
TEACHER_IMAGE = torch.tensor([[0.0, 0.0, 5.0, 5.0]])
TEACHER_TEXT = torch.tensor([[-1.0, -1.0, 0.0, 0.0]])


def test_total_with_paper_weights():
    terms = grounding_loss(_output(), GT_BOX, TEACHER_IMAGE, TEACHER_TEXT)
    assert terms["box"].item() == approx(0.04)
    assert terms["giou"].item() == approx(0.75)
    assert terms["distill_image"].item() == approx(1.0)
    assert terms["distill_text"].item() == approx(2.0)
    # 0.04 + λ·0.75 + α·1 + β·2 with λ = 1, α = 1.5, β = 2
    assert terms["total"].item() == approx(6.29)


def test_total_with_custom_weights_and_l1_variants():
    config = LossConfig(giou_weight=2.0, image_weight=0.5, text_weight=3.0, box="l1", distill="l1")
    terms = grounding_loss(_output(), GT_BOX, TEACHER_IMAGE, TEACHER_TEXT, config)
    # L1 box 0.4; 0.4 + 2·0.75 + 0.5·3 + 3·1
    assert terms["total"].item() == approx(6.4)


def test_box_beta_sets_the_smooth_l1_switch_point():
    # two coordinates off by 0.2: β = 1 → 2·½·0.2² = 0.04; β = 0.1 → 2·(0.2 − 0.05) = 0.3
    terms = grounding_loss(_output(), GT_BOX, config=LossConfig(box_beta=0.1))
    assert terms["box"].item() == approx(0.3)


def test_switching_the_image_term_off():
    terms = grounding_loss(_output(), GT_BOX, TEACHER_IMAGE, TEACHER_TEXT, LossConfig(image_term=False))
    assert "distill_image" not in terms
    assert terms["total"].item() == approx(0.04 + 0.75 + 2 * 2.0)


def test_switching_the_text_term_off():
    terms = grounding_loss(_output(), GT_BOX, TEACHER_IMAGE, TEACHER_TEXT, LossConfig(text_term=False))
    assert "distill_text" not in terms
    assert terms["total"].item() == approx(0.04 + 0.75 + 1.5 * 1.0)


def test_without_teacher_it_is_plain_transvg():
    terms = grounding_loss(_output(), GT_BOX)
    assert set(terms) == {"box", "giou", "total"}
    assert terms["total"].item() == approx(0.79)


def test_low_precision_outputs_give_a_float32_loss():
    plain = _output()
    output = TransVGOutput(*(getattr(plain, name).to(torch.bfloat16) for name in ("box", "vls", "cls")))
    terms = grounding_loss(output, GT_BOX, TEACHER_IMAGE.half(), TEACHER_TEXT.half())
    assert terms["total"].dtype == torch.float32
    assert terms["total"].item() == pytest.approx(6.29, abs=1e-2)


def test_box_iou_pairs_matches_rows():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    assert box_iou_pairs(pred, target).tolist() == pytest.approx([1 / 7, 1.0, 0.0])


def test_accuracy_counts_iou_of_exactly_the_threshold_as_transvg_does():
    ious = torch.tensor([0.5, 0.49999, 0.9, 0.1])
    assert accuracy_at(ious, 0.5).item() == approx(0.5)


def test_target_cell_loss_by_hand():
    """A 2x2 grid (cell centres at 0.25 and 0.75); the box x 0.1..0.4, y 0.1..0.9 holds cells 0 and 2."""
    import math

    from pipeline.losses import target_cell_loss

    box = torch.tensor([[0.25, 0.5, 0.3, 0.8]])
    logits = torch.tensor([[2.0, -1.0, 0.0, 3.0]])
    labels = [1.0, 0.0, 1.0, 0.0]

    def bce(z, y):
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = sum(bce(z, y) for z, y in zip(logits[0].tolist(), labels, strict=True)) / 4
    assert float(target_cell_loss(logits, box)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="square"):
        target_cell_loss(torch.zeros(1, 3), box)


def test_a_box_less_batch_leaves_the_box_terms_out():
    losses, _ = STUDENTS["transvg"].criterion()(_output(), LossTargets(None, TEACHER_IMAGE, TEACHER_TEXT))
    assert set(losses) == {"distill_image", "distill_text", "total"}
    assert losses["total"].item() == approx(1.5 * 1.0 + 2 * 2.0)


def test_a_batch_no_term_applies_to_is_an_error_not_a_zero_loss():
    with pytest.raises(ValueError, match="no loss term applied"):
        STUDENTS["transvg"].criterion()(_output(), LossTargets(None))


def test_a_term_without_a_weight_is_refused():
    from pipeline.criterion import Criterion, box_term

    with pytest.raises(ValueError, match=r"loss terms \['boxx'\] have no weight"):
        Criterion({"boxx": box_term})
