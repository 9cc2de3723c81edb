"""Referring-expression text helpers shared by the train transform and the teacher cache.

`swap_left_right` must stay the single implementation: the cache stores teacher embeddings of the
swapped expressions, and they only match the student's flipped samples if both sides swap alike.
"""

from __future__ import annotations

import re
from types import MappingProxyType

_LEFT_RIGHT_SWAPS = MappingProxyType(
    {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
)
# Whole words only: TransVG's substring replace turned "bright" into "bleft".
_LEFT_RIGHT_PATTERN = re.compile(r"\b(?:leftmost|rightmost|left|right)\b", re.IGNORECASE)

# Words whose meaning a random crop can change (what is "leftmost" or "in the middle" depends on the
# frame). TransVG skips the crop when any of left/right/top/bottom/middle occurs; this list adds
# their close relatives.
SPATIAL_WORDS = frozenset(
    {
        "left", "right", "leftmost", "rightmost", "top", "bottom", "topmost", "bottommost",
        "middle", "center", "centre", "central", "above", "below", "upper", "lower", "under",
        "beneath", "over", "behind", "front", "corner", "side", "edge", "near", "nearest",
        "closest", "far", "farthest", "furthest", "beside", "between", "next",
    }
)  # fmt: skip
_WORD_PATTERN = re.compile(r"[a-z]+")


def normalize_expression(text: str) -> str:
    """Strip, collapse runs of whitespace to one space and lowercase."""
    return " ".join(text.split()).lower()


def _match_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement.capitalize()
    return replacement


def swap_left_right(text: str) -> str:
    """Swap the whole words left↔right and leftmost↔rightmost, keeping each word's case.

    "left-hand" becomes "right-hand" (the hyphen is a word boundary); "bright" is left alone.
    """
    return _LEFT_RIGHT_PATTERN.sub(
        lambda match: _match_case(_LEFT_RIGHT_SWAPS[match.group(0).lower()], match.group(0)), text
    )


def has_spatial_word(text: str) -> bool:
    """True when the expression uses a word from `SPATIAL_WORDS` (as a whole word, any case)."""
    return any(word in SPATIAL_WORDS for word in _WORD_PATTERN.findall(text.lower()))
