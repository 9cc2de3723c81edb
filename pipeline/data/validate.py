"""Check samples against their images before training, and decide what to do with bad ones.

`validate_samples` looks at each unique image once (size from the header, plus a cheap truncation
check) and counts problems by kind. `select_samples` then either refuses (the default: silently
training on a fraction of the data is worse than an error) or, with `skip_missing`, drops what cannot
be used and records the drop counts in the report so that callers can print them.

A record without a box (an image-text pair) is not a problem here: its box checks are skipped.
Whether a training mode may use it is `supervision.check_supervision`'s question.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pipeline.data.errors import DataProblemsError, MissingImagesError
from pipeline.data.images import BadImageError, check_declared_size
from pipeline.data.sample import Sample

MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
BOX_OUTSIDE_IMAGE = "box_outside_image"
ZERO_AREA_BOX = "zero_area_box"
EMPTY_EXPRESSION = "empty_expression"
PROBLEM_KINDS = (MISSING_IMAGE, UNREADABLE_IMAGE, BOX_OUTSIDE_IMAGE, ZERO_AREA_BOX, EMPTY_EXPRESSION)
# Boxes outside the image are clipped, not dropped; everything else makes a sample unusable.
DROPPED_KINDS = (MISSING_IMAGE, UNREADABLE_IMAGE, ZERO_AREA_BOX, EMPTY_EXPRESSION)
SKIP_FLAG = "--skip-missing"

_EXAMPLES_PER_KIND = 5
_JPEG_END_MARKER = b"\xff\xd9"
_JPEG_TAIL_BYTES = 1024  # encoders may pad after the end marker; a truncated file has none at all


@dataclass
class ValidationReport:
    """Problems found in a list of samples; `dropped`/`clipped` are filled by `select_samples`."""

    total: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # samples per problem kind
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few human-readable cases per kind
    missing_images: list[Path] = field(default_factory=list)  # unique, sorted
    unreadable_images: dict[Path, str] = field(default_factory=dict)  # path -> reason
    image_sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # (width, height) of readable ones
    problems: dict[Sample, tuple[str, ...]] = field(default_factory=dict)  # only samples with problems
    dropped: Counter[str] = field(default_factory=Counter)  # dropped samples per problem kind
    dropped_samples: int = 0  # a sample with two problems counts once here, in two kinds above
    clipped: int = 0

    @property
    def ok(self) -> bool:
        """True when no sample has any problem."""
        return not self.problems

    def summary(self) -> str:
        """One line per problem kind with its count and examples."""
        lines = [f"{self.total} samples checked"]
        for kind in PROBLEM_KINDS:
            if self.counts[kind]:
                lines.append(f"  {kind}: {self.counts[kind]} (e.g. {'; '.join(self.examples.get(kind, []))})")
        return "\n".join(lines)

    def record_problem(self, sample: Sample, kind: str, detail: str) -> None:
        """Count one problem of `sample` and keep `detail` as an example while there are few."""
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES_PER_KIND and detail not in examples:
            examples.append(detail)
        self.problems[sample] = (*self.problems.get(sample, ()), kind)


def _jpeg_is_complete(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, os.path.getsize(path) - _JPEG_TAIL_BYTES))
        return _JPEG_END_MARKER in file.read()


def probe_image(path: Path) -> tuple[int, int] | str:
    """(width, height) of a readable image, else the reason it cannot be read.

    JPEGs are not decoded (size from the header, truncation from the end marker); other formats are
    decoded fully because they have no equally cheap integrity check.
    """
    try:
        with Image.open(path) as image:
            size = image.size
            check_declared_size(path, size)
            if image.format == "JPEG":
                if not _jpeg_is_complete(path):
                    return "truncated JPEG (no end-of-image marker)"
            else:
                image.load()
    except BadImageError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return size


def _box_is_degenerate(box: tuple[float, float, float, float]) -> bool:
    x1, y1, x2, y2 = box
    return not all(math.isfinite(value) for value in box) or x2 <= x1 or y2 <= y1


def clip_box(
    box: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """`box` (x1 y1 x2 y2) clipped to an image of `size` (width, height)."""
    width, height = size
    x1, y1, x2, y2 = box
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


def _check_images(report: ValidationReport, paths: Iterable[Path], open_images: bool) -> None:
    for path in sorted(set(paths)):
        if not path.is_file():
            report.missing_images.append(path)
        elif open_images:
            probed = probe_image(path)
            if isinstance(probed, str):
                report.unreadable_images[path] = probed
            else:
                report.image_sizes[path] = probed


def _check_sample(report: ValidationReport, sample: Sample, missing: set[Path]) -> None:
    if sample.image_path in missing:
        report.record_problem(sample, MISSING_IMAGE, str(sample.image_path))
    elif sample.image_path in report.unreadable_images:
        report.record_problem(
            sample, UNREADABLE_IMAGE, f"{sample.image_path}: {report.unreadable_images[sample.image_path]}"
        )
    if not sample.text.strip():
        report.record_problem(
            sample,
            EMPTY_EXPRESSION,
            f"{sample.split}[{sample.index}] {sample.image_key} box {sample.box_xyxy}",
        )
    size = report.image_sizes.get(sample.image_path)
    box = sample.box_xyxy
    if box is None:  # an image-text pair: nothing to check
        return
    if size is not None and clip_box(box, size) != box:
        report.record_problem(
            sample,
            BOX_OUTSIDE_IMAGE,
            f"{sample.split}[{sample.index}] {sample.image_key} {size[0]}x{size[1]} box {box}",
        )
        box = clip_box(box, size)
    if _box_is_degenerate(box):
        report.record_problem(
            sample, ZERO_AREA_BOX, f"{sample.split}[{sample.index}] {sample.image_key} box {sample.box_xyxy}"
        )


def validate_samples(samples: Sequence[Sample], check_images: bool = True) -> ValidationReport:
    """Count the problems of `samples`, checking each unique image once.

    Image existence is always checked; with `check_images` the images are also opened (header only
    for JPEGs) to find unreadable or truncated files and boxes that leave the image.
    """
    report = ValidationReport(total=len(samples))
    _check_images(report, (sample.image_path for sample in samples), check_images)
    missing = set(report.missing_images)
    for sample in samples:
        _check_sample(report, sample, missing)
    return report


def _refusal_message(report: ValidationReport) -> str:
    if report.missing_images:
        shown = ", ".join(str(path) for path in report.missing_images[:_EXAMPLES_PER_KIND])
        more = len(report.missing_images) - _EXAMPLES_PER_KIND
        head = (
            f"{len(report.missing_images)} images are missing ({report.counts[MISSING_IMAGE]} of "
            f"{report.total} samples), e.g. {shown}{f' and {more} more' if more > 0 else ''}."
        )
    else:
        head = "some samples cannot be used."
    other = [f"{kind}: {report.counts[kind]}" for kind in DROPPED_KINDS[1:] if report.counts[kind]]
    tail = f" Other problems: {', '.join(other)}." if other else ""
    return f"{head}{tail} Pass {SKIP_FLAG} to drop these samples and continue with the rest."


def select_samples(
    samples: Sequence[Sample], report: ValidationReport, skip_missing: bool = False
) -> list[Sample]:
    """The usable samples, with boxes clipped to their image.

    Without `skip_missing`, raise `MissingImagesError` (or `DataProblemsError` when no image is
    missing but other samples are unusable) naming the `--skip-missing` flag. With it, drop samples
    whose kinds are in `DROPPED_KINDS` and count the drops in `report.dropped`.
    """
    unusable = {sample: kinds for sample, kinds in report.problems.items() if set(kinds) & set(DROPPED_KINDS)}
    if unusable and not skip_missing:
        error = MissingImagesError if report.missing_images else DataProblemsError
        raise error(_refusal_message(report))
    report.dropped.clear()
    report.dropped_samples = report.clipped = 0
    kept = []
    for sample in samples:
        kinds = report.problems.get(sample, ())
        if sample in unusable:
            report.dropped.update(kind for kind in kinds if kind in DROPPED_KINDS)
            report.dropped_samples += 1
            continue
        if BOX_OUTSIDE_IMAGE in kinds and sample.box_xyxy is not None:
            sample = dataclasses.replace(
                sample, box_xyxy=clip_box(sample.box_xyxy, report.image_sizes[sample.image_path])
            )
            report.clipped += 1
        kept.append(sample)
    return kept
