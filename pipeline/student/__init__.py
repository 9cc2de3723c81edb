"""The EpmVG student: TransVG (visual branch + linguistic branch + visual-linguistic fusion)."""

from pipeline.student.backbone import pixel_normalization
from pipeline.student.config import (
    StudentConfig,
    list_student_presets,
    parse_field_assignments,
    student_preset,
)
from pipeline.student.model import StudentOutput, TransVG, build_student, create_student, param_groups
from pipeline.student.text import build_tokenizer, tokenize
from pipeline.student.weights import WeightsUnavailableError

__all__ = [
    "StudentConfig",
    "StudentOutput",
    "TransVG",
    "WeightsUnavailableError",
    "build_student",
    "build_tokenizer",
    "create_student",
    "list_student_presets",
    "parse_field_assignments",
    "param_groups",
    "pixel_normalization",
    "student_preset",
    "tokenize",
]
