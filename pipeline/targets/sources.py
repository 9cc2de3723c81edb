"""Target sources: where a training step's teacher targets come from, behind one interface.

The interface is `TargetSource` (`source.py`): given a batch, a source returns its ([DIE], [DTE])
targets (or (None, None): no distillation); it exposes its trainable parameters and its checkpoint
state, and says in one line what it is. The trainer builds the one its `TrainConfig.distill` names
from `TARGET_SOURCES` and never branches on the mode. A new source (a detector's anchors,
pseudo-boxes) is one class here and one entry in `TARGET_SOURCES`.

- `none`: no targets (plain TransVG / LGR-NET training).
- `cached`: rows of a Phase-1 store's in-RAM tables, by (record, flipped, text swapped); on an
  exact-view store with augmentation, `CachedViewTargets`: the dataset replays the stored views and
  [DIE] is each view's own embedding.
- `online`: the teacher runs on the augmented batch (`pipeline/targets/online.py`; only this source
  imports the teacher, and open_clip with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.data import dataset_fingerprint
from pipeline.targets.replay import ViewReplay, check_views
from pipeline.targets.schema import VIEW_ROW
from pipeline.targets.source import SourceContext, TargetSource, TeacherBatch
from pipeline.targets.store import TeacherTargets, load_targets


class CachedTargets(TargetSource):
    """[DIE]/[DTE] rows of a Phase-1 store, by (record index, flipped, text swapped)."""

    def __init__(self, targets: TeacherTargets, ctx: SourceContext) -> None:
        # The tables go to the training device once; each batch's rows are gathered there.
        self.tables = targets.to(ctx.device)
        self.split = ctx.config.train_split
        self.store = ctx.config.cache
        self.device = ctx.device

    def lookup(self, batch: dict[str, Any], view: torch.Tensor | None = None) -> TeacherBatch:
        image, text = self.tables.lookup(
            self.split, batch["index"], batch["flipped"], batch["text_swapped"], view
        )
        return image, text  # already on self.device, where the tables are

    def targets(self, batch: dict[str, Any]) -> TeacherBatch:
        # A view-less lookup of a batch that replays stored views (`--view-targets whole-image`): the
        # whole image's (or its flip's) embedding, as a view-less store would give.
        return self.lookup(batch)

    def describe(self) -> str:
        fingerprint = self.tables.fingerprint
        weights = fingerprint.get("weights", {}).get("kind", "?")
        return (
            f"cached targets from {self.store} (teacher {fingerprint.get('teacher', '?')}, {weights} weights)"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "targets": self.describe(),
            "teacher_built": False,
            "teacher_fingerprint": self.tables.fingerprint,
        }


class CachedViewTargets(CachedTargets):
    """An exact-view store under augmentation: the dataset replays the stored views (view e mod K of
    each record in epoch e) and [DIE] is the teacher's embedding of exactly that view's pixels
    (`view_targets="exact"`), or the whole image's (`"whole-image"`, the comparison)."""

    def __init__(self, targets: TeacherTargets, ctx: SourceContext) -> None:
        super().__init__(targets, ctx)
        config = ctx.config
        check_views(targets.fingerprint["views"], ctx.transform, config.train_split, config.cache)
        view_row = targets.rows[config.train_split][VIEW_ROW].numpy()
        self.views = ViewReplay(targets.view_params, view_row, ctx.transform)
        self.exact = config.view_targets == "exact"

    def targets(self, batch: dict[str, Any]) -> TeacherBatch:
        return self.lookup(batch, batch.get("view") if self.exact else None)

    def describe(self) -> str:
        target = "each view's own [DIE]" if self.exact else "the whole image's [DIE]"
        return f"{super().describe()}; replays {self.views.count} stored views per record, {target}"

    def table_settings(self) -> dict[str, Any]:
        return {"views": self.tables.fingerprint["views"]}


def cached_source(ctx: SourceContext) -> CachedTargets:
    """The store's targets; an exact-view store under augmentation replays its views."""
    config = ctx.config
    targets = load_targets(
        config.cache, [config.train_split], dataset_fingerprint(config.dataset, config.data_root)
    )
    if targets.view_params is not None and config.augment:
        return CachedViewTargets(targets, ctx)
    return CachedTargets(targets, ctx)


def online_source(ctx: SourceContext) -> TargetSource:
    # Imported here, not at the top: only an online run may import the teacher, and open_clip with it
    # (a cached run never does; a test checks it in a fresh process).
    from pipeline.targets.online import OnlineTargets

    return OnlineTargets(ctx)


# TrainConfig.distill → the source's factory. engine/config.py's DISTILL_MODES lists the same keys
# (a test checks it) so that a bad mode fails while the config is parsed.
TARGET_SOURCES: dict[str, Callable[[SourceContext], TargetSource]] = {
    "none": lambda ctx: TargetSource(),
    "cached": cached_source,
    "online": online_source,
}


def build_target_source(ctx: SourceContext) -> TargetSource:
    return TARGET_SOURCES[ctx.config.distill](ctx)
