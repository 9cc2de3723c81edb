"""Phase 1: the frozen teacher and its cache. CLIP (`clip.py`), training a tiny CLIP on a dataset's
own pairs (`training.py`), the cache job (`cache_job.py`), exact views (`views.py`) and how well cached
targets stand for the student's pixels (`fidelity.py`). The only package that imports open_clip; a
cached training run never imports it (a test checks this in a fresh process)."""

from pipeline.teacher.clip import (
    RANDOM_TEACHER_SEED,
    Teacher,
    TeacherConfig,
    TeacherWeightsError,
    build_teacher,
    create_random_model,
    encode_text_trimmed,
)

__all__ = [
    "RANDOM_TEACHER_SEED",
    "Teacher",
    "TeacherConfig",
    "TeacherWeightsError",
    "build_teacher",
    "create_random_model",
    "encode_text_trimmed",
]
