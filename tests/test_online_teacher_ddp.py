"""Under torchrun a trainable online teacher is wrapped in DDP like the student, a frozen one is not."""

import json

import pytest
import torch
from conftest import TINY_TEACHER, run_torchrun, tiny_run

import pipeline.engine.train as train_module
import pipeline.targets.online as online_module
from pipeline.data import make_shapes
from pipeline.engine.distributed import DistEnv
from pipeline.targets.online import TeacherEncoders

# conftest's tiny run with a random tiny online teacher: one epoch of batches of 2, no lr drop
ONLINE = dict(
    distill="online",
    teacher_model=TINY_TEACHER,
    teacher_pretrained="none",
    allow_random_teacher=True,
    epochs=1,
    lr_drop=None,
    batch_size=2,
    gallery_size=12,
)
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
    monkeypatch.setattr(online_module, "DistributedDataParallel", RecordingDDP)
    RecordingDDP.wrapped = []
    config = tiny_run(
        tmp_path / "data", tmp_path / "run", **ONLINE, teacher_trainable=trainable, max_samples=None
    )
    trainer = train_module.Trainer(config)
    teachers = [ddp for ddp in RecordingDDP.wrapped if isinstance(ddp.module, TeacherEncoders)]
    assert len(teachers) == (1 if trainable else 0)
    pixels, pad = torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    image, text = trainer.source.teacher(pixels, pad, ["a red circle", "the blue square"])
    assert image.shape[0] == text.shape[0] == 2
    if trainable:
        assert teachers[0].calls == 1 and teachers[0].options["find_unused_parameters"]


RANK_SCRIPT = """
import json
import sys
from pathlib import Path

import torch

from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import shutdown_distributed
from pipeline.engine.train import Trainer

config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
trainer = Trainer(config)
before = {k: v.clone() for k, v in trainer.source.teacher.teacher.model.state_dict().items()}
trainer.fit()
after = trainer.source.teacher.teacher.model.state_dict()
torch.save({"before": before, "after": after}, config.out / f"teacher-rank{trainer.env.rank}.pt")
shutdown_distributed(trainer.env)
"""


@pytest.mark.slow
def test_two_gloo_ranks_end_with_the_same_trained_teacher(shapes_root, tmp_path):
    """Each rank sees other samples: only all-reduced teacher gradients keep the two teachers equal."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    config = tiny_run(shapes_root, out, **ONLINE, teacher_trainable=True, device="cpu", lr_pretrained=1e-3)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    run_torchrun(2, [script, tmp_path / "config.json"])
    ranks = [torch.load(out / f"teacher-rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    changed = [k for k, v in ranks[0]["after"].items() if not torch.equal(v, ranks[0]["before"][k])]
    assert changed, "the teacher did not train"
    for key in ranks[0]["after"]:
        assert torch.equal(ranks[0]["after"][key], ranks[1]["after"][key]), key
