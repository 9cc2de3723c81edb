"""Readers that turn each on-disk source format into `Sample`s.

- ReSC/TransVG split files (`splits/<dir>/<dir>_<split>.pth`), through the allow-listed unpickler;
- the refer toolkit's `refs(<splitBy>).p` + COCO `instances.json`;
- a custom JSON-lines file.

Every format error names the file and the record index (or line number).

A record may carry no box (an image-text pair, for weak supervision): a ReSC record whose box slot is
None, a refer ref whose `ann_id` is None, a JSONL line without "box" or with `"box": null`. Such a
record becomes a `Sample` with `box_xyxy=None`; a box that is there but malformed is still an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from pipeline.data.errors import ImagePathOutsideRootError, SplitFormatError, SplitNotFoundError
from pipeline.data.safe_pickle import load_pickle
from pipeline.data.sample import Sample

BoxFormat = Literal["xywh", "xyxy"]
BoxXYXY = tuple[float, float, float, float]

_RESC_LAYOUTS = (
    "(image_file, '<id>.pth', box, expression, attributes), (image_file, '<id>.pth', box, expression) "
    "or (image_file, box, expression); box None for an image-text pair"
)


@dataclass(frozen=True)
class ParsedRecord:
    """The fields of one split-file record that a `Sample` needs."""

    image_file: str
    source_id: str | None
    box_xyxy: BoxXYXY | None  # None: an image-text pair without a box
    expression: str


def _as_box(value: Any) -> tuple[float, float, float, float] | None:
    """Four finite numbers from a list, tuple or numpy array, else None."""
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != 4:
        return None
    if any(isinstance(number, bool | str | bytes) for number in value):
        return None
    try:
        x1, y1, x2, y2 = (float(number) for number in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(number) for number in (x1, y1, x2, y2)):
        return None
    return x1, y1, x2, y2


def to_xyxy(box: tuple[float, float, float, float] | None, box_format: BoxFormat) -> BoxXYXY | None:
    """Convert a box given in `box_format` to pixel x1 y1 x2 y2 (None stays None: no box)."""
    if box is None or box_format == "xyxy":
        return box
    x, y, width, height = box
    return (x, y, x + width, y + height)


def _strip_pth(source_id: str) -> str:
    return source_id[: -len(".pth")] if source_id.endswith(".pth") else source_id


def parse_resc_record(record: Any, box_format: BoxFormat, where: str) -> ParsedRecord:
    """Parse one ReSC record (any of the layouts in `_RESC_LAYOUTS`); `where` prefixes errors."""
    if not isinstance(record, tuple | list) or not 3 <= len(record) <= 5:
        raise SplitFormatError(f"{where}: expected a record {_RESC_LAYOUTS}, got {type(record).__name__}")
    if len(record) >= 4 and isinstance(record[1], str):
        image_file, source_id, raw_box, expression = record[:4]
    elif len(record) <= 4:
        (image_file, raw_box, expression), source_id = record[:3], None
    else:
        raise SplitFormatError(f"{where}: unknown record layout; expected {_RESC_LAYOUTS}")
    box = None if raw_box is None else _as_box(raw_box)
    malformed_box = raw_box is not None and box is None
    if not isinstance(image_file, str) or malformed_box or not isinstance(expression, str):
        raise SplitFormatError(
            f"{where}: unknown record layout (image {type(image_file).__name__}, box {raw_box!r}, "
            f"expression {type(expression).__name__}); expected {_RESC_LAYOUTS}"
        )
    return ParsedRecord(
        image_file=image_file,
        source_id=None if source_id is None else _strip_pth(source_id),
        box_xyxy=to_xyxy(box, box_format),
        expression=expression,
    )


def _image_key(relative: str, where: str) -> str:
    """A normalized POSIX path relative to the image directory."""
    key = PurePosixPath(relative.replace("\\", "/"))
    if key.is_absolute() or not key.parts:
        raise SplitFormatError(f"{where}: image path {relative!r} must be relative to the image directory")
    return key.as_posix()


class ImagePaths:
    """The one place a record's image name becomes a file path; refuses names that leave the root.

    A split file or JSONL line is untrusted: `../..` or a symlink out of the image directory would put
    an outside file's pixels into the cache and gallery, and "missing" messages would reveal whether
    it exists. Such names are counted, not resolved further, and `check()` refuses them all at once.
    The root itself may be a symlink (images often live on another disk); only what lies below it is
    held to it. Each distinct name is resolved once (images repeat ~7x per split file).
    """

    def __init__(self, image_dir: Path, source: Path) -> None:
        self.image_dir = image_dir
        self.real_root = image_dir.resolve()
        self.source = source
        self._seen: dict[str, tuple[str, Path] | None] = {}
        self.outside: list[str] = []  # one `where: name` per refused record

    def _resolve(self, relative: str, where: str) -> tuple[str, Path] | None:
        key = _image_key(relative, where)
        path = self.image_dir / key
        if ".." in PurePosixPath(key).parts or not path.resolve().is_relative_to(self.real_root):
            return None
        return key, path

    def get(self, relative: str, where: str) -> tuple[str, Path]:
        """(key, path) of an image name; a refused name is recorded and gets a placeholder."""
        if relative not in self._seen:
            self._seen[relative] = self._resolve(relative, where)
        resolved = self._seen[relative]
        if resolved is None:
            self.outside.append(f"{where}: {relative!r}")
            return relative, self.image_dir
        return resolved

    def check(self) -> None:
        """Raise `ImagePathOutsideRootError` with the count and the first offenders, if any."""
        if self.outside:
            shown = "; ".join(self.outside[:3])
            raise ImagePathOutsideRootError(
                f"{self.source}: {len(self.outside)} record(s) name an image outside {self.image_dir} "
                f"(a '..' or a symlink out of it), e.g. {shown}; refusing to read outside the data root"
            )


def read_resc_split(path: Path, split: str, image_dir: Path, box_format: BoxFormat) -> list[Sample]:
    """All records of one ReSC/TransVG split file as samples (images are not opened)."""
    records = load_pickle(path)
    if not isinstance(records, list):
        raise SplitFormatError(f"{path}: expected a list of records, got {type(records).__name__}")
    samples = []
    image_paths = ImagePaths(image_dir, path)
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        parsed = parse_resc_record(record, box_format, where)
        key, image_path = image_paths.get(parsed.image_file, where)
        samples.append(
            Sample(
                image_path=image_path,
                image_key=key,
                box_xyxy=parsed.box_xyxy,
                text=parsed.expression,
                split=split,
                sample_id=parsed.source_id if parsed.source_id is not None else str(index),
                index=index,
            )
        )
    image_paths.check()
    return samples


def _load_coco(instances_path: Path) -> Any:
    from pycocotools.coco import COCO  # deferred: only the refer format needs it

    # COCO() prints progress to stdout, which would corrupt `--json` output of the CLI.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(str(instances_path))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
            raise SplitFormatError(f"{instances_path}: not a COCO instances file ({exc})") from exc


def _sentence_text(sentence: Any, where: str) -> str:
    text = sentence.get("sent", sentence.get("raw")) if isinstance(sentence, dict) else None
    if not isinstance(text, str):
        raise SplitFormatError(f"{where}: sentence without a 'sent' or 'raw' string")
    return text


def read_refer_split(refs_path: Path, instances_path: Path, split: str, image_dir: Path) -> list[Sample]:
    """Samples of `split` from the refer toolkit's files: one sample per sentence of each ref.

    The box is the COCO annotation's (xywh → xyxy); the image file name comes from COCO's image
    table (refs' own `file_name` carries an annotation suffix). A ref whose `ann_id` is None is an
    image-text pair: its samples have no box, and their id is "ref<ref_id>" (else "ref<position>").
    """
    refs = load_pickle(refs_path)
    if not isinstance(refs, list):
        raise SplitFormatError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    coco = _load_coco(instances_path)
    samples: list[Sample] = []
    image_paths = ImagePaths(image_dir, refs_path)
    for ref_position, ref in enumerate(refs):
        where = f"{refs_path}: ref {ref_position}"
        if not isinstance(ref, dict) or "split" not in ref:
            raise SplitFormatError(
                f"{where}: expected a dict with 'split', 'ann_id', 'image_id', 'sentences'"
            )
        if ref["split"] != split:
            continue
        try:
            boxed = ref["ann_id"] is not None
            annotation = coco.anns[ref["ann_id"]] if boxed else None
            image_file = coco.imgs[ref["image_id"]]["file_name"]
            sentences = ref["sentences"]
        except KeyError as exc:
            raise SplitFormatError(f"{where}: {exc} not found (in the ref or in {instances_path})") from exc
        box_xyxy, sample_id = None, f"ref{ref.get('ref_id', ref_position)}"
        if annotation is not None:
            box = _as_box(annotation.get("bbox"))
            if box is None:
                raise SplitFormatError(f"{where}: annotation {ref['ann_id']} has no valid bbox")
            box_xyxy, sample_id = to_xyxy(box, "xywh"), str(ref["ann_id"])
        key, image_path = image_paths.get(image_file, where)
        for sentence in sentences:
            samples.append(
                Sample(
                    image_path=image_path,
                    image_key=key,
                    box_xyxy=box_xyxy,
                    text=_sentence_text(sentence, where),
                    split=split,
                    sample_id=sample_id,
                    index=len(samples),
                )
            )
    image_paths.check()
    return samples


@dataclass(frozen=True)
class JsonlRecord:
    """One validated line of a custom JSON-lines dataset."""

    line_number: int
    image: str
    box_xyxy: BoxXYXY | None  # None: no "box" or "box": null, an image-text pair
    expression: str
    split: str
    sample_id: str | None


def _parse_jsonl_line(line: str, path: Path, line_number: int) -> JsonlRecord | None:
    where = f"{path}:{line_number}"
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SplitFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(entry, dict):
        raise SplitFormatError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [field for field in ("image", "expression", "split") if field not in entry]
    if missing:
        raise SplitFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    raw_box = entry.get("box")  # absent or null: an image-text pair without a box
    box = None if raw_box is None else _as_box(raw_box)
    if raw_box is not None and box is None:
        raise SplitFormatError(
            f"{where}: 'box' must be [x1, y1, x2, y2] numbers (or null for no box), got {raw_box!r}"
        )
    for field in ("image", "expression", "split"):
        if not isinstance(entry[field], str):
            raise SplitFormatError(f"{where}: '{field}' must be a string, got {entry[field]!r}")
    sample_id = entry.get("id")
    return JsonlRecord(
        line_number=line_number,
        image=_image_key(entry["image"], where),
        box_xyxy=box,
        expression=entry["expression"],
        split=entry["split"],
        sample_id=None if sample_id is None else str(sample_id),
    )


def iter_jsonl(path: Path) -> Iterator[JsonlRecord]:
    """Validated records of a JSON-lines dataset; errors name `file:line`."""
    if not path.is_file():
        raise SplitNotFoundError(f"{path}: no such JSON-lines file")
    with open(path, "rb") as lines:
        for line_number, raw_line in enumerate(lines, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SplitFormatError(f"{path}:{line_number}: not UTF-8 text ({exc.reason})") from exc
            record = _parse_jsonl_line(line, path, line_number)
            if record is not None:
                yield record


def jsonl_splits(path: Path) -> list[str]:
    """The splits named in a JSON-lines dataset, in order of first appearance."""
    return list(dict.fromkeys(record.split for record in iter_jsonl(path)))


def read_jsonl(path: Path, split: str) -> list[Sample]:
    """The samples of `split` in a JSON-lines dataset; image paths are relative to the file's folder."""
    records = list(iter_jsonl(path))
    splits = list(dict.fromkeys(record.split for record in records))
    if split not in splits:
        raise SplitNotFoundError(f"{path}: no split {split!r}; available: {', '.join(splits) or 'none'}")
    samples: list[Sample] = []
    image_paths = ImagePaths(path.parent, path)
    for record in records:
        if record.split != split:
            continue
        key, image_path = image_paths.get(record.image, f"{path}:{record.line_number}")
        samples.append(
            Sample(
                image_path=image_path,
                image_key=key,
                box_xyxy=record.box_xyxy,
                text=record.expression,
                split=split,
                sample_id=record.sample_id if record.sample_id is not None else f"line{record.line_number}",
                index=len(samples),
            )
        )
    image_paths.check()
    return samples
