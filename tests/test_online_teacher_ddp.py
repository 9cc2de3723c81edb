"""Under torchrun a trainable online teacher is wrapped in DDP like the student, a frozen one is not."""

from pathlib import Path

import pytest
import torch

import pipeline.engine.train as train_module
from pipeline.data import make_shapes
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


class RecordingDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel (no process group here): records what it wraps and runs."""

    wrapped: list["RecordingDDP"] = []

    def __init__(self, module, device_ids=None, **options):
        super().__init__()
        self.module, self.options, self.calls = module, options, 0
        RecordingDDP.wrapped.append(self)

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("trainable", [False, True])
def test_a_trainable_teacher_runs_through_ddp(tmp_path, monkeypatch, trainable):
    make_shapes(tmp_path / "data", n=6, seed=0, image_size=64)
    monkeypatch.setattr(train_module, "init_distributed", lambda device: DistEnv(rank=0, world_size=2))
    monkeypatch.setattr(train_module, "DistributedDataParallel", RecordingDDP)
    RecordingDDP.wrapped = []
    config = TrainConfig(
        dataset="shapes", data_root=tmp_path / "data", out=tmp_path / "run", student="tiny",
        student_overrides={"image_size": 64}, distill="online", teacher_model=TINY_TEACHER,
        teacher_pretrained="none", allow_random_teacher=True, teacher_trainable=trainable, epochs=1,
        batch_size=2, workers=0, progress=False,
    )  # fmt: skip
    trainer = train_module.Trainer(config)
    teachers = [ddp for ddp in RecordingDDP.wrapped if isinstance(ddp.module, train_module.TeacherEncoders)]
    assert len(teachers) == (1 if trainable else 0)
    image, text = trainer.online_teacher(torch.zeros(2, 3, 64, 64), ["a red circle", "the blue square"])
    assert image.shape[0] == text.shape[0] == 2
    if trainable:
        assert teachers[0].calls == 1 and teachers[0].options["find_unused_parameters"]
