from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
TINY_TEACHER = str(REPO_ROOT / "pipeline" / "configs" / "teacher" / "clip-tiny.json")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data beside the checkout (see ../shared/data/README.md)."""
    if not (SHARED_DATA / "splits").is_dir():
        pytest.fail(f"real sample data not found at {SHARED_DATA}: the checkout must sit beside shared/")
    return SHARED_DATA


def write_tiny_checkpoint(path: Path, data_root: Path, dataset: str = "shapes") -> Path:
    """A tiny, untrained student's checkpoint: what eval and predict read, without a training run."""
    from pipeline.engine.checkpoint import save_checkpoint
    from pipeline.engine.config import TrainConfig
    from pipeline.student import build_student, student_preset

    student_config = student_preset("tiny", image_size=64)
    train_config = TrainConfig(dataset=dataset, data_root=data_root, distill="none", student="tiny")
    payload = {
        "model": build_student(student_config, pretrained=False).state_dict(),
        "student_config": student_config.to_dict(),
        "train_config": train_config.to_dict(),
    }
    save_checkpoint(path, payload)
    return path


# The training tests' shared data: 40 shapes scenes and a store of the random tiny teacher, once per
# module (a test module may define its own `shapes_root` instead).
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    from pipeline.data import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=40, seed=0)
    return root


@pytest.fixture(scope="module")
def store(shapes_root, tmp_path_factory) -> Path:
    from pipeline.cache_job import CacheJobConfig, build_cache
    from pipeline.teacher import TeacherConfig

    return build_cache(
        CacheJobConfig(
            dataset="shapes",
            data_root=shapes_root,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path_factory.mktemp("cache") / "store",
            decode_workers=0,
            progress=False,
        )
    )
