"""Expression helpers: normalization, the left/right swap used by flips, spatial words."""

from __future__ import annotations

import pytest

from pipeline.data import has_spatial_word, normalize_expression, swap_left_right


@pytest.mark.parametrize(
    ("text", "swapped"),
    [
        ("man on the left", "man on the right"),
        ("right guy left of the car", "left guy right of the car"),
        ("Left chair", "Right chair"),
        ("LEFT", "RIGHT"),
        ("the leftmost red circle", "the rightmost red circle"),
        ("Rightmost one", "Leftmost one"),
        ("left-hand side", "right-hand side"),
        ("bright light, copyright", "bright light, copyright"),
        ("lefty leftover", "lefty leftover"),
        ("left, right; left.", "right, left; right."),
        ("", ""),
    ],
)
def test_swap_left_right(text: str, swapped: str) -> None:
    assert swap_left_right(text) == swapped
    assert swap_left_right(swapped) == text


def test_normalize_expression() -> None:
    assert normalize_expression("  The  Man\tin\nRED ") == "the man in red"


@pytest.mark.parametrize(
    ("text", "spatial"),
    [
        ("guy on the Right", True),
        ("the middle one", True),
        ("cup above the plate", True),
        ("the leftmost red circle", True),
        ("bright red bus", False),
        ("woman in a topless car", False),
        ("the big blue square", False),
    ],
)
def test_has_spatial_word(text: str, spatial: bool) -> None:
    assert has_spatial_word(text) is spatial
