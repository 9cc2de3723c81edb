"""pipeline.engine.evaluate: predictions back to pixel boxes."""

import pytest
import torch

from pipeline.data.transforms import EvalTransform, TransformConfig
from pipeline.engine.evaluate import to_pixels


@pytest.mark.parametrize("pad_position", ["bottom_right", "center"])
@pytest.mark.parametrize("size", [(640, 427), (333, 500), (64, 64)])
def test_to_pixels_undoes_the_eval_transform_whatever_the_padding(pad_position, size):
    config = TransformConfig(image_size=64, pad_position=pad_position)
    box = (31.0, 17.5, 60.25, 52.0)
    normalized = EvalTransform(config).box(box, size)
    back = to_pixels(normalized[None], torch.tensor([size]), config)[0]
    assert torch.allclose(back, torch.tensor(box), atol=1e-3), back


def test_eval_of_a_checkpoint_uses_the_runs_autocast_batch_and_the_given_workers(
    shapes_root, tmp_path, monkeypatch
):
    """`epmvg eval` evaluates as training did: the trainer's autocast factory with the run's amp, the
    run's batch, and the loader workers it is given (the CLI's default: `train`'s)."""
    import pipeline.engine.evaluate as evaluate_module
    from pipeline.engine.checkpoint import save_checkpoint
    from pipeline.engine.config import TrainConfig
    from pipeline.engine.setup import student_config_for
    from pipeline.student import build_student

    config = TrainConfig(
        dataset="shapes", data_root=shapes_root, distill="none", student="tiny",
        student_overrides={"image_size": 64}, batch_size=6, amp=True,
    )  # fmt: skip
    student_config = student_config_for(config)
    payload = {
        "model": build_student(student_config).state_dict(),
        "student_config": student_config.to_dict(),
        "train_config": config.to_dict(),
    }
    save_checkpoint(tmp_path / "best.pt", payload)
    seen: dict = {"autocast": [], "loaders": []}
    real_factory, real_loader = evaluate_module.autocast_factory, evaluate_module.eval_loader

    def factory(device, enabled):
        seen["autocast"].append((device, enabled))
        return real_factory(device, enabled)

    def loader(dataset, collate, env, batch_size, workers, persistent=True):
        seen["loaders"].append((batch_size, workers))
        return real_loader(dataset, collate, env, batch_size, workers, persistent)

    monkeypatch.setattr(evaluate_module, "autocast_factory", factory)
    monkeypatch.setattr(evaluate_module, "eval_loader", loader)
    results = evaluate_module.evaluate_checkpoint(
        tmp_path / "best.pt", shapes_root, None, ["val"], None, "cpu", False, workers=1
    )
    assert results["val"]["n"] > 0
    assert seen["autocast"] == [(torch.device("cpu"), True)]
    assert seen["loaders"] == [(6, 1)]


def test_the_eval_command_defaults_to_trains_loader_workers_and_the_runs_batch(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import pipeline.engine.evaluate as evaluate_module
    from pipeline.cli import app
    from pipeline.cli.options import default_loader_workers

    seen = {}

    def fake(checkpoint, data_root, dataset, splits, batch_size, device, skip_missing, workers=0):
        seen.update(batch_size=batch_size, workers=workers)
        return {}

    monkeypatch.setattr(evaluate_module, "evaluate_checkpoint", fake)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "x.pt"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen == {"batch_size": None, "workers": default_loader_workers()}
