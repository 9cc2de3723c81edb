"""`epmvg data ...`: inspect a dataset, make the synthetic shapes dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.errors import one_line_errors
from pipeline.data.errors import UnknownDatasetError
from pipeline.data.inspect import inspect_dataset
from pipeline.data.shapes import make_shapes

app = typer.Typer(
    help="Inspect grounding datasets and generate the synthetic 'shapes' dataset.", no_args_is_help=True
)


def _format_lengths(lengths: dict[str, Any]) -> str:
    if lengths["min"] is None:
        return "-"
    return f"{lengths['min']}/{lengths['median']:g}/{lengths['p95']:g}/{lengths['max']}"


def format_inspection(result: dict[str, Any]) -> str:
    """A plain-text table: one column per split, one row per statistic."""
    splits = result["splits"]
    rows: list[tuple[str, list[str]]] = [
        (label, [str(stats[key]) for stats in splits.values()])
        for label, key in (
            ("records", "records"),
            ("unique images", "unique_images"),
            ("images present", "images_present"),
            ("unique expressions", "unique_expressions"),
        )
    ]
    kinds = next(iter(splits.values()))["problems"] if splits else {}
    rows += [
        (kind.replace("_", " "), [str(stats["problems"][kind]) for stats in splits.values()])
        for kind in kinds
    ]
    rows.append(
        ("tokens min/med/p95/max", [_format_lengths(stats["token_lengths"]) for stats in splits.values()])
    )
    limit = result["max_query_len"]
    rows.append(
        (
            f"over {limit} tokens",
            [str(stats["token_lengths"]["over_max_query_len"]) for stats in splits.values()],
        )
    )
    header = ("", list(splits))
    label_width = max(len(label) for label, _ in [header, *rows])
    widths = [max(len(values[i]) for _, values in [header, *rows]) for i in range(len(splits))]

    def line(label: str, values: list[str]) -> str:
        cells = "  ".join(value.rjust(width) for value, width in zip(values, widths, strict=True))
        return f"{label.ljust(label_width)}  {cells}".rstrip()

    title = f"{result['dataset']} ({result['data_root'] or 'no data root'})"
    lines = [title, line(*header), *(line(label, values) for label, values in rows)]
    if result["unavailable_splits"]:
        lines.append(f"unavailable splits: {', '.join(result['unavailable_splits'])}")
    return "\n".join(lines)


@app.command("inspect")
@one_line_errors
def inspect_command(
    dataset: Annotated[
        str, typer.Argument(help="Registered name (refcoco, refcoco+, refcocog, ...) or a .jsonl file.")
    ],
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="DATA_ROOT holding splits/ and images/.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    check_images: Annotated[
        bool, typer.Option("--check-images/--no-check-images", help="Open images to find unreadable ones.")
    ] = True,
) -> None:
    """Records, images present, problems and expression lengths (student tokens) per split."""
    try:
        result = inspect_dataset(dataset, data_root, check_images=check_images)
    except UnknownDatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="DATASET") from None
    typer.echo(json.dumps(result, indent=2) if as_json else format_inspection(result))


@app.command("make-shapes")
@one_line_errors
def make_shapes_command(
    out: Annotated[
        Path, typer.Option("--out", help="DATA_ROOT to write images/shapes and splits/shapes into.")
    ],
    n: Annotated[int, typer.Option("--n", min=3, help="Number of images.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    image_size: Annotated[int, typer.Option("--image-size", min=64, help="Image width and height.")] = 256,
) -> None:
    """Generate the synthetic 'shapes' dataset (train/val/test 80/10/10 of the images)."""
    summary = make_shapes(out, n=n, seed=seed, image_size=image_size)
    per_split = ", ".join(
        f"{split} {info['images']}/{info['records']}" for split, info in summary["splits"].items()
    )
    typer.echo(f"wrote {summary['images']} images, {summary['records']} expressions to {out}")
    typer.echo(f"images/expressions per split: {per_split}")
    typer.echo(f"use it as: --data-root {out} with dataset 'shapes'")
