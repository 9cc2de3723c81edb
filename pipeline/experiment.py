"""Controlled experiments on the demo's learnable benchmark, one command each (`epmvg experiment`).

- `distillation`: does EpmVG's cached distillation help? The demo's student with both CD terms, the
  image term only, the text term only and none, over seeds, on the full training set and on 25% of
  its images. Targets come from the cache of the shapes-trained teacher.
- `students`: TransVG (the `shapes` preset) against LGR-NET (`lgrnet-shapes`, the same frozen
  branches and width), each with and without CD.
- `box-loss`: the coordinate loss of the total objective: smooth-L1 with β = 1 (EpmVG's, which on
  coordinates in [0, 1] is ½·MSE), smooth-L1 with β = 0.1, and TransVG's L1.

Every variant is the demo's student run (`demo.demo_run`) with one change; the data, teacher and cache
are made once. Finished runs are kept, so an interrupted experiment goes on where it stopped.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.data import image_subset, load_split
from pipeline.demo import DemoConfig, demo_run, prepare_demo_assets
from pipeline.engine.ablations import ablation_config
from pipeline.engine.baselines import prior_results
from pipeline.engine.config import TrainConfig
from pipeline.engine.plots import plot_experiment, read_metrics
from pipeline.engine.train import train

DISTILLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "CD (image + text)": {},
    "CD image term only": {"loss": {"text_term": False}},
    "CD text term only": {"loss": {"image_term": False}},
    "no CD": {"distill": "none"},
}
BOX_LOSS_VARIANTS: dict[str, dict[str, Any]] = {
    "smooth-L1 beta=1": {"loss": {"box": "smooth_l1", "box_beta": 1.0}},
    "smooth-L1 beta=0.1": {"loss": {"box": "smooth_l1", "box_beta": 0.1}},
    "L1": {"loss": {"box": "l1"}},
}

STUDENT_VARIANTS: dict[str, dict[str, Any]] = {
    "TransVG (shapes) + CD": {},
    "TransVG (shapes) no CD": {"distill": "none"},
    "LGR-NET (shapes) + CD": {"preset": "lgrnet-shapes"},
    "LGR-NET (shapes) no CD": {"preset": "lgrnet-shapes", "distill": "none"},
}


@dataclass(frozen=True)
class Study:
    variants: dict[str, dict[str, Any]]
    fractions: tuple[float, ...]  # of the train images


STUDIES = {
    "distillation": Study(DISTILLATION_VARIANTS, (1.0, 0.25)),
    "box-loss": Study(BOX_LOSS_VARIANTS, (1.0,)),
    "students": Study(STUDENT_VARIANTS, (1.0,)),
}
SPLITS = ("val", "test")


@dataclass(frozen=True)
class ExperimentConfig:
    """The default fits 60 minutes on 2 CPU cores: 3 seeds, the demo's data, 30 epochs a run."""

    study: str = "distillation"
    out: Path = Path("experiment")
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] | None = None  # None: the study's
    demo: DemoConfig = field(default_factory=lambda: DemoConfig(epochs=30, lr_drop=26))

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise ValueError(f"unknown study {self.study!r}; expected one of {sorted(STUDIES)}")
        if not self.seeds:
            raise ValueError("an experiment needs at least one seed")

    @property
    def train_fractions(self) -> tuple[float, ...]:
        return self.fractions or STUDIES[self.study].fractions

    @classmethod
    def quick(cls, study: str, out: Path) -> ExperimentConfig:
        """The same command at test size: 2 seeds, the demo's QUICK data."""
        return cls(study=study, out=out, seeds=(0, 1), demo=DemoConfig.quick(out))


def run_experiment(config: ExperimentConfig) -> Path:
    """Train every (fraction, variant, seed); write results.csv (one row a run), results.md, results.png."""
    started = time.perf_counter()
    demo = replace(config.demo, out=config.out)
    assets = prepare_demo_assets(demo)
    runs: list[dict[str, Any]] = []
    for fraction in config.train_fractions:
        for seed in config.seeds:
            base = demo_run(
                demo, assets.data_root, assets.store, config.out / f"train{fraction:g}" / f"seed{seed}",
                seed=seed, train_fraction=fraction,
            )  # fmt: skip
            for name, changes in STUDIES[config.study].variants.items():
                run = ablation_config(base, name, changes)
                summary = finished_or_train(run)
                runs.append(
                    {"fraction": fraction, "variant": name, "seed": seed, **flat_results(summary, run.out)}
                )
    priors = fraction_priors(assets.data_root, config.train_fractions)
    write_experiment(config, runs, priors, round(time.perf_counter() - started, 1))
    return config.out / "results.md"


def finished_or_train(run: TrainConfig) -> dict[str, Any]:
    """A run's summary: read back when it finished before (the experiment resumes), else trained now."""
    done = Path(run.out) / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    return train(run)


def flat_results(summary: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """Held-out Acc@0.5 and mIoU, the student's size, and its mean training throughput."""
    results = {
        f"{split} {metric}": summary["results"][split][metric]
        for split in SPLITS
        for metric in ("acc@0.5", "miou")
    }
    epochs = [row for row in read_metrics(run_dir / "metrics.jsonl") if row.get("kind") == "epoch"]
    results["train samples/s"] = statistics.fmean(row["samples_per_s"] for row in epochs)
    results["student parameters"] = summary["student_parameters"]
    return results


def fraction_priors(data_root: Path, fractions: tuple[float, ...]) -> dict[float, dict[str, dict[str, Any]]]:
    """Centre and text-only priors of each training subset, on the held-out splits."""
    train_samples = load_split("shapes", "train", data_root)
    held_out = {split: load_split("shapes", split, data_root) for split in SPLITS}
    return {
        fraction: prior_results(image_subset(train_samples, fraction), held_out) for fraction in fractions
    }


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (fraction, variant), in the order the runs came."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["fraction"], run["variant"]), []).append(run)
    rows = []
    for (fraction, variant), members in groups.items():
        row: dict[str, Any] = {"fraction": fraction, "variant": variant, "seeds": len(members)}
        for key in (k for k in members[0] if " " in k):
            values = [member[key] for member in members]
            row[key] = statistics.fmean(values)
            row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def write_experiment(
    config: ExperimentConfig,
    runs: list[dict[str, Any]],
    priors: dict[float, dict[str, dict[str, Any]]],
    wall_seconds: float,
) -> None:
    out = config.out
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    rows = aggregate(runs)
    (out / "results.md").write_text(experiment_table(config, rows, priors, wall_seconds))
    plot_experiment(rows, priors, out / "results.png", title=f"{config.study} study on shapes")


def experiment_table(
    config: ExperimentConfig,
    rows: list[dict[str, Any]],
    priors: dict[float, dict[str, dict[str, Any]]],
    wall_seconds: float,
) -> str:
    """Markdown: Acc@0.5 and mIoU as mean ± std over seeds, each training size with its priors."""
    demo = config.demo
    lines = [
        f"# The {config.study} study on shapes",
        "",
        f"The demo's student (`shapes` preset, cached targets of the shapes-trained teacher), {demo.epochs} "
        f"epochs (×0.1 at {demo.lr_drop}), lr {demo.lr}, batch {demo.batch_size}; "
        f"seeds {list(config.seeds)}; held-out val and test; {wall_seconds:.0f} s wall time in all.",
        "",
        "| train images | variant | seeds | val Acc@0.5 | test Acc@0.5 | test mIoU | parameters "
        "| train samples/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fraction in config.train_fractions:
        size = f"{100 * fraction:g}%"
        for row in (r for r in rows if r["fraction"] == fraction):
            lines.append(
                f"| {size} | {row['variant']} | {row['seeds']} | {_pct(row, 'val acc@0.5')} | "
                f"{_pct(row, 'test acc@0.5')} | {row['test miou']:.3f} ± {row['test miou std']:.3f} | "
                f"{row['student parameters'] / 1e6:.2f} M | {row['train samples/s']:.0f} |"
            )
        for name, result in priors[fraction].items():
            lines.append(
                f"| {size} | {name} | – | {100 * result['val']['acc@0.5']:.1f}% | "
                f"{100 * result['test']['acc@0.5']:.1f}% | {result['test']['miou']:.3f} | – | – |"
            )
    return "\n".join(lines) + "\n\n![results](results.png)\n"


def _pct(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[key]:.1f} ± {100 * row[f'{key} std']:.1f}%"
