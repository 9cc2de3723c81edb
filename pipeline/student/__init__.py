"""The EpmVG students: TransVG (visual branch + linguistic branch + visual-linguistic fusion) and
LGR-NET, picked by `StudentConfig.architecture` through `registry.py`."""

from pipeline.student.backbone import pixel_normalization
from pipeline.student.config import (
    StudentConfig,
    list_student_presets,
    parse_field_assignments,
    student_preset,
)
from pipeline.student.factory import build_student, create_student, load_student_weights
from pipeline.student.inputs import make_collate, transform_config_for
from pipeline.student.lgrnet import LGRNet
from pipeline.student.model import Branch, StudentBase, TransVG, param_groups
from pipeline.student.output import LGRNetOutput, StudentOutput, TransVGOutput
from pipeline.student.registry import (
    STUDENTS,
    StudentArchitecture,
    student_architecture,
)
from pipeline.student.text import build_tokenizer, tokenize
from pipeline.student.weights import WeightsUnavailableError

__all__ = [
    "STUDENTS",
    "Branch",
    "LGRNet",
    "LGRNetOutput",
    "StudentArchitecture",
    "StudentBase",
    "load_student_weights",
    "student_architecture",
    "StudentConfig",
    "StudentOutput",
    "TransVG",
    "TransVGOutput",
    "WeightsUnavailableError",
    "build_student",
    "build_tokenizer",
    "create_student",
    "list_student_presets",
    "make_collate",
    "parse_field_assignments",
    "param_groups",
    "pixel_normalization",
    "student_preset",
    "tokenize",
    "transform_config_for",
]
