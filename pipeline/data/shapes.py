"""A small synthetic grounding dataset ("shapes") for smoke tests, demos and sanity-checking training.

Each scene holds 2-6 coloured shapes of three sizes on a textured background. Every expression
names exactly one object, using only the words needed to single it out: the shape, then colour
and/or size when another object shares the shape, then a spatial word ("the leftmost red circle",
"the small triangle left of the blue square") when attributes alone cannot tell objects apart.
A quarter of the objects that attributes could describe get a spatial expression anyway (when one
applies), so that spatial words are not a give-away for look-alike objects.

The output is a DATA_ROOT: `images/shapes/*.jpg` and `splits/shapes/shapes_{train,val,test}.pth`
in the ReSC ReferIt layout (x1 y1 x2 y2 boxes), so it loads like any registered dataset. Generation
is deterministic: the same seed writes the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.safe_pickle import write_split_file

DATASET_NAME = "shapes"
SPLITS = ("train", "val", "test")
COLOURS = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 90, 230),
        "yellow": (235, 205, 40),
        "purple": (150, 60, 200),
        "orange": (245, 135, 30),
    }
)
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = MappingProxyType({"small": 0.055, "medium": 0.085, "big": 0.125})  # radius / image size
ATTRIBUTES = ("size", "colour", "shape")  # the order adjectives take in an expression
# Attribute subsets tried when describing an object, simplest first; the shape is always named.
ATTRIBUTE_COMBOS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))
EXTREMES = (("leftmost", 0, -1), ("rightmost", 0, 1), ("topmost", 1, -1), ("bottommost", 1, 1))
RELATIONS = (("left of", 0, -1), ("right of", 0, 1), ("above", 1, -1), ("below", 1, 1))


@dataclass(frozen=True)
class ShapesConfig:
    """Scene statistics; the defaults give a learnable but not trivial task."""

    min_objects: int = 2
    max_objects: int = 6
    derive_prob: float = 0.5  # chance a new object copies an existing one's attributes (then re-draws some)
    spatial_when_optional_prob: float = 0.25
    spatial_expressions: bool = True  # False: attribute-only expressions; look-alikes stay as distractors
    minimal_description_prob: float = 0.8  # else a longer, still unambiguous, attribute description
    size_scale: float = 1.0  # multiplies every SIZES radius (larger objects for coarse feature maps)
    size_jitter: float = 0.08
    colour_jitter: int = 20
    gap: float = 0.02  # min. free space between objects, fraction of the image size
    spatial_margin: float = 0.04  # min. offset for a spatial word to apply, fraction of the image size
    jpeg_quality: int = 90
    split_fractions: tuple[float, float] = (0.1, 0.1)  # val, test; train takes the rest


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; `box` is its tight pixel box, x2/y2 exclusive."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    radius: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Expression:
    """A referring expression and the parts it uses (kept as ReSC-style attributes)."""

    text: str
    target: ShapeObject
    attributes: tuple[str, ...]
    location: str | None = None
    relation: str | None = None
    reference: ShapeObject | None = None


def _draw_attributes(
    rng: np.random.Generator, existing: Sequence[dict[str, str]], config: ShapesConfig
) -> dict[str, str]:
    choices = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES)}
    if existing and rng.random() < config.derive_prob:
        # Look-alikes are what make colour, size and spatial words necessary.
        attributes = dict(existing[int(rng.integers(len(existing)))])
        # Re-draw none (an identical twin: only a spatial word tells them apart), one or both of colour/size.
        redraw = rng.choice(("colour", "size"), size=int(rng.choice((0, 1, 1, 2))), replace=False)
    else:
        attributes, redraw = {}, np.array(ATTRIBUTES)
    for name in redraw:
        attributes[str(name)] = str(rng.choice(choices[str(name)]))
    return attributes


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        half = 0.85 * r
        return [
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        ]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "triangle":
        angles = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + 0.15 * r + r * math.sin(a)) for a in angles]
    # star: five points, alternating outer and inner radius
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    return [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for a, rad in zip(angles, radii, strict=True)]


def _draw(
    canvas: Image.Image, shape: str, centre: tuple[float, float], r: float, rgb: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Draw the shape on `canvas`; return its tight box (x2/y2 exclusive) from the drawn pixels."""
    # A mask just around the shape: full-canvas masks made pasting the slowest step.
    left, top = math.floor(centre[0] - r) - 2, math.floor(centre[1] - r) - 2
    extent = math.ceil(2 * r) + 5
    mask = Image.new("L", (extent, extent), 0)
    pen = ImageDraw.Draw(mask)
    cx, cy = centre[0] - left, centre[1] - top
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        pen.polygon(_polygon(shape, cx, cy, r), fill=255)
    canvas.paste(rgb, (left, top, left + extent, top + extent), mask=mask)
    box = mask.getbbox()
    if box is None:
        raise ValueError(f"shape of radius {r:.1f} px drew no pixels")
    x1, y1, x2, y2 = box
    width, height = canvas.size
    return max(0, x1 + left), max(0, y1 + top), min(width, x2 + left), min(height, y2 + top)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted solid, gradient or blotchy background with fine noise, uint8 [size, size, 3]."""

    def muted() -> np.ndarray:
        colour = rng.uniform(60, 200, 3)
        return colour.mean() + 0.3 * (colour - colour.mean())

    kind = int(rng.integers(3))
    if kind == 0:
        image = np.broadcast_to(muted().astype(np.float32), (size, size, 3))
    elif kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.arange(size, dtype=np.float32) / size
        t = (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle))[..., None]
        t = (t - t.min()) / (t.max() - t.min())
        image = muted().astype(np.float32) * (1 - t) + muted().astype(np.float32) * t
    else:
        blotches = rng.uniform(-40, 40, (6, 6, 3)) + muted()
        image = np.asarray(
            Image.fromarray(blotches.clip(0, 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 6
    return (image + noise).clip(0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator, radius: float, placed: Sequence[ShapeObject], size: int, gap: float
) -> tuple[float, float] | None:
    for _ in range(50):
        centre = (
            float(rng.uniform(radius + 1, size - radius - 1)),
            float(rng.uniform(radius + 1, size - radius - 1)),
        )
        if all(math.dist(centre, other.centre) > radius + other.radius + gap for other in placed):
            return centre
    return None


def make_scene(
    rng: np.random.Generator, size: int, config: ShapesConfig
) -> tuple[Image.Image, list[ShapeObject]]:
    """Draw one scene; returns the image and its objects."""
    canvas = Image.fromarray(_background(rng, size))
    objects: list[ShapeObject] = []
    wanted = int(rng.integers(config.min_objects, config.max_objects, endpoint=True))
    for _ in range(wanted):
        attributes = _draw_attributes(rng, [_attributes_of(o) for o in objects], config)
        size_factor = config.size_scale * (1 + rng.uniform(-config.size_jitter, config.size_jitter))
        radius = SIZES[attributes["size"]] * size * size_factor
        centre = _place(rng, radius, objects, size, config.gap * size)
        if centre is None:
            continue  # crowded scene: fewer objects rather than overlaps
        jitter = rng.integers(-config.colour_jitter, config.colour_jitter, 3, endpoint=True)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[attributes["colour"]]) + jitter, 0, 255))
        box = _draw(canvas, attributes["shape"], centre, radius, rgb)
        objects.append(
            ShapeObject(attributes["shape"], attributes["colour"], attributes["size"], centre, radius, box)
        )
    return canvas, objects


def _attributes_of(obj: ShapeObject) -> dict[str, str]:
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size}


def _matching(objects: Sequence[ShapeObject], target: ShapeObject, combo: Sequence[str]) -> list[ShapeObject]:
    return [o for o in objects if all(getattr(o, name) == getattr(target, name) for name in combo)]


def _words(obj: ShapeObject, combo: Sequence[str]) -> str:
    return " ".join(getattr(obj, name) for name in ATTRIBUTES if name in combo)


def _unique_combos(objects: Sequence[ShapeObject], target: ShapeObject) -> list[tuple[str, ...]]:
    return [combo for combo in ATTRIBUTE_COMBOS if _matching(objects, target, combo) == [target]]


def _spatial_expressions(
    objects: Sequence[ShapeObject],
    target: ShapeObject,
    references: Sequence[tuple[ShapeObject, tuple[str, ...]]],
    margin: float,
) -> list[Expression]:
    """Extremal ("the leftmost red circle") and relational ("the circle above the blue star") ones.

    `references` are the objects nameable by attributes alone, with their simplest description.
    """
    found = []
    for combo in ATTRIBUTE_COMBOS:
        group = _matching(objects, target, combo)
        if len(group) < 2:
            continue  # the attributes alone already name the target
        others = [o for o in group if o is not target]
        for word, axis, sign in EXTREMES:
            if all(sign * (target.centre[axis] - o.centre[axis]) > margin for o in others):
                text = f"the {word} {_words(target, combo)}"
                found.append(Expression(text, target, combo, location=word))
        for reference, reference_combo in references:
            if reference in group:
                continue  # also excludes the target; "the circle left of the red circle" reads as ambiguous
            for relation, axis, sign in RELATIONS:
                offset = sign * (target.centre[axis] - reference.centre[axis])
                if offset > margin and all(
                    sign * (o.centre[axis] - reference.centre[axis]) < 0 for o in others
                ):
                    text = f"the {_words(target, combo)} {relation} the {_words(reference, reference_combo)}"
                    found.append(Expression(text, target, combo, relation=relation, reference=reference))
    return found


def describe_scene(
    objects: Sequence[ShapeObject], rng: np.random.Generator, config: ShapesConfig, size: int
) -> list[Expression]:
    """One unambiguous expression per object that the scene allows one for."""
    unique = {id(o): _unique_combos(objects, o) for o in objects}
    references = [(o, unique[id(o)][0]) for o in objects if unique[id(o)]]
    expressions = []
    for target in objects:
        combos = unique[id(target)]
        if not config.spatial_expressions:
            if combos:
                combo = _pick_combo(combos, rng, config)
                expressions.append(Expression(f"the {_words(target, combo)}", target, combo))
            continue  # an object only a spatial word could single out is a distractor, never a target
        spatial = _spatial_expressions(objects, target, references, config.spatial_margin * size)
        if spatial and (not combos or rng.random() < config.spatial_when_optional_prob):
            expressions.append(spatial[int(rng.integers(len(spatial)))])
        elif combos:
            combo = _pick_combo(combos, rng, config)
            expressions.append(Expression(f"the {_words(target, combo)}", target, combo))
    return expressions


def _pick_combo(
    combos: Sequence[tuple[str, ...]], rng: np.random.Generator, config: ShapesConfig
) -> tuple[str, ...]:
    """Mostly a shortest unambiguous attribute set, sometimes a longer one."""
    shortest = [combo for combo in combos if len(combo) == len(combos[0])]
    pool = shortest if rng.random() < config.minimal_description_prob else combos
    return pool[int(rng.integers(len(pool)))]


def _resc_attributes(expression: Expression) -> list[tuple[str, list[str]]]:
    """ReSC's r1..r8 slots: name, colour, size, absolute location, relation, related object, -, -."""
    used = expression.attributes
    slots = [
        [expression.target.shape],
        [expression.target.colour] if "colour" in used else ["none"],
        [expression.target.size] if "size" in used else ["none"],
        [expression.location] if expression.location else ["none"],
        [expression.relation] if expression.relation else ["none"],
        [expression.reference.shape] if expression.reference else ["none"],
        ["none"],
        ["none"],
    ]
    return [(f"r{k}", words) for k, words in enumerate(slots, start=1)]


def _split_of_images(n: int, seed: int, fractions: tuple[float, float]) -> list[str]:
    order = np.random.default_rng((seed, 1)).permutation(n)
    n_val, n_test = (max(1, round(fraction * n)) for fraction in fractions)
    split_of = ["train"] * n
    for rank, image in enumerate(order):
        if rank < n_val:
            split_of[image] = "val"
        elif rank < n_val + n_test:
            split_of[image] = "test"
    return split_of


def make_shapes(
    out: Path, n: int, seed: int, image_size: int = 256, config: ShapesConfig | None = None
) -> dict[str, Any]:
    """Write `n` scenes and their expressions as a DATA_ROOT at `out`; returns a summary.

    Images are split 80/10/10 into train/val/test. Each image's content depends only on (seed, its
    number), so growing `n` keeps the earlier scenes.
    """
    config = config or ShapesConfig()
    if n < 3:
        raise ValueError(f"n must be at least 3 (one image per split), got {n}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    out = Path(out)
    image_dir = out / "images" / DATASET_NAME
    image_dir.mkdir(parents=True, exist_ok=True)
    split_of = _split_of_images(n, seed, config.split_fractions)
    records: dict[str, list[tuple[Any, ...]]] = {split: [] for split in SPLITS}
    for number in range(n):
        rng = np.random.default_rng((seed, 0, number))
        image, objects = make_scene(rng, image_size, config)
        image_file = f"{number:06d}.jpg"
        image.save(image_dir / image_file, "JPEG", quality=config.jpeg_quality)
        for expression in describe_scene(objects, rng, config, image_size):
            record_id = f"{number:06d}_{objects.index(expression.target)}.pth"
            record = (
                image_file,
                record_id,
                list(expression.target.box),
                expression.text,
                _resc_attributes(expression),
            )
            records[split_of[number]].append(record)
    for split, split_records in records.items():
        write_split_file(out / "splits" / DATASET_NAME / f"{DATASET_NAME}_{split}.pth", split_records)
    return {
        "out": str(out),
        "dataset": DATASET_NAME,
        "seed": seed,
        "image_size": image_size,
        "images": n,
        "records": sum(len(split_records) for split_records in records.values()),
        "splits": {
            split: {"images": split_of.count(split), "records": len(records[split])} for split in SPLITS
        },
    }
