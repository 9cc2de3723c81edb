"""What a training mode needs from the records, and the check that they have it.

Fully supervised training (TransVG, LGR-NET, the distilled students) regresses a box per record;
weakly supervised training (RefCLIP, CMA: image-text pairs scored against a frozen detector's anchors)
needs none. The engine states its mode and calls `check_supervision` on the train records before any
image is read, so a box-less record stops the run with one line naming it instead of a crash deep in
a loss. Evaluation scores against boxes, so it needs a box on every record whatever the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from pipeline.data.errors import MissingSupervisionError
from pipeline.data.sample import Sample

_NAMED_RECORDS = 3  # records named in the message; the rest are counted


@dataclass(frozen=True)
class Needs:
    """What each record must carry."""

    box: bool


class Supervision(Enum):
    """A training mode, by what its records carry."""

    FULL = "full"  # a box on every record
    WEAK = "weak"  # image-text pairs: a box is used (for evaluation) where present, never required

    @property
    def needs(self) -> Needs:
        """What this mode needs from every train record."""
        return Needs(box=self is Supervision.FULL)

    @property
    def purpose(self) -> str:
        """The mode in words, as `check_supervision`'s message names it."""
        return "fully supervised training" if self is Supervision.FULL else "weakly supervised training"

    def check(self, samples: Sequence[Sample], split: str) -> None:
        """`check_supervision` with this mode's needs and words."""
        check_supervision(samples, self.needs.box, split, self.purpose)


def _name(sample: Sample) -> str:
    """'#<index> (id <sample_id>)', the id left out where it is only the index again."""
    if sample.sample_id == str(sample.index):
        return f"#{sample.index}"
    return f"#{sample.index} (id {' '.join(sample.sample_id.split())})"  # a JSONL id may hold a newline


def check_supervision(
    samples: Sequence[Sample], needs_box: bool, split: str, purpose: str = "fully supervised training"
) -> None:
    """Raise `MissingSupervisionError` (one line) when `needs_box` and some record of `split` has no box.

    The message counts the box-less records and names the first few by their index in the split
    (`Sample.index`) and their own id, e.g. "fully supervised training needs a box on every train
    record; 3 of 40 have none: #4 (id 117), #9 (id 131), #17 (id 160)". Evaluation needs boxes in
    every mode: `check_supervision(samples, True, "val", "evaluation")`.
    """
    if not needs_box:
        return
    boxless = [sample for sample in samples if sample.box_xyxy is None]
    if not boxless:
        return
    named = ", ".join(_name(sample) for sample in boxless[:_NAMED_RECORDS])
    more = len(boxless) - _NAMED_RECORDS
    raise MissingSupervisionError(
        f"{purpose} needs a box on every {split} record; {len(boxless)} of {len(samples)} have none: "
        f"{named}{f' and {more} more' if more > 0 else ''}"
    )
