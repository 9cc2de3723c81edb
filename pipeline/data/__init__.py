"""Data layer: split readers, validation, TransVG transforms, the torch dataset, the shapes generator.

Knows files on disk and samples, not models. Typical use::

    samples = load_split("refcoco", "val", data_root)
    report = validate_samples(samples)
    samples = select_samples(samples, report, skip_missing=args.skip_missing)
    dataset = GroundingDataset(samples, EvalTransform(TransformConfig()))
"""

from pipeline.data.datasets import (
    DATASET_NAMES,
    DatasetSpec,
    available_splits,
    dataset_files,
    dataset_fingerprint,
    dataset_spec,
    file_sha256,
    is_jsonl_dataset,
    load_split,
    max_query_len,
)
from pipeline.data.errors import (
    DataError,
    DataProblemsError,
    ImagePathOutsideRootError,
    MissingImagesError,
    MissingSupervisionError,
    SplitFormatError,
    SplitNotFoundError,
    UnknownDatasetError,
    UnsafePickleError,
)
from pipeline.data.inspect import default_tokenizer, inspect_dataset
from pipeline.data.safe_pickle import load_pickle, write_split_file
from pipeline.data.sample import Sample, image_subset
from pipeline.data.shapes import ShapesConfig, make_shapes
from pipeline.data.supervision import Needs, Supervision, check_supervision
from pipeline.data.text import has_spatial_word, normalize_expression, swap_left_right
from pipeline.data.torch_dataset import (
    GroundingCollate,
    GroundingDataset,
    Tokenize,
    collate_grounding,
    open_rgb,
    stack_optional,
)
from pipeline.data.transforms import (
    EvalTransform,
    TrainTransform,
    Transform,
    TransformConfig,
    TransformedSample,
)
from pipeline.data.validate import PROBLEM_KINDS, ValidationReport, select_samples, validate_samples

__all__ = [
    "DATASET_NAMES",
    "PROBLEM_KINDS",
    "DataError",
    "DataProblemsError",
    "DatasetSpec",
    "EvalTransform",
    "ImagePathOutsideRootError",
    "GroundingCollate",
    "GroundingDataset",
    "MissingImagesError",
    "MissingSupervisionError",
    "Needs",
    "Sample",
    "ShapesConfig",
    "SplitFormatError",
    "SplitNotFoundError",
    "Supervision",
    "Tokenize",
    "TrainTransform",
    "Transform",
    "TransformConfig",
    "TransformedSample",
    "UnknownDatasetError",
    "UnsafePickleError",
    "ValidationReport",
    "available_splits",
    "check_supervision",
    "dataset_fingerprint",
    "collate_grounding",
    "dataset_files",
    "dataset_spec",
    "file_sha256",
    "default_tokenizer",
    "has_spatial_word",
    "image_subset",
    "inspect_dataset",
    "is_jsonl_dataset",
    "load_pickle",
    "load_split",
    "make_shapes",
    "max_query_len",
    "normalize_expression",
    "open_rgb",
    "select_samples",
    "stack_optional",
    "swap_left_right",
    "validate_samples",
    "write_split_file",
]
