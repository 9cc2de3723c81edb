"""What a student reads: the transform config its input size and backbone call for, and the batch
collation with its tokenizer. The trainer, evaluation, diagnosis and the cache's exact views all take
a student's inputs from here."""

from __future__ import annotations

import functools

from pipeline.data import GroundingCollate, TransformConfig
from pipeline.student.backbone import pixel_normalization
from pipeline.student.config import StudentConfig
from pipeline.student.text import build_tokenizer, tokenize


def transform_config_for(student_config: StudentConfig) -> TransformConfig:
    """The student's input size and the normalization its backbone's pretrained weights expect."""
    mean, std = pixel_normalization(student_config)
    return TransformConfig(image_size=student_config.image_size, mean=mean, std=std)


def make_collate(student_config: StudentConfig) -> GroundingCollate:
    """Batch collation with the student's tokenizer; picklable for DataLoader workers."""
    tokenizer = build_tokenizer(student_config)
    return GroundingCollate(
        functools.partial(tokenize, tokenizer=tokenizer, max_len=student_config.max_query_len)
    )
