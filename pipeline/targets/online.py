"""The `online` target source: the teacher runs on every augmented batch (the comparison mode, and
Table 4's unfrozen teacher when it trains too). The only target source that imports the teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline.targets.source import SourceContext, TargetSource, TeacherBatch
from pipeline.teacher import TeacherConfig, build_teacher
from pipeline.teacher.clip import encode_image_batch, encode_token_batch, is_trimmable, token_context


class TeacherEncoders(torch.nn.Module):
    """CLIP's two encoders behind one `forward`, so that DDP, which syncs gradients only for what runs
    through its own forward, can wrap a trainable teacher."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixels: torch.Tensor, tokens: torch.Tensor, context: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B, 3, S, S], tokens [B, L] -> ([B, d], [B, d]) float32, through the cache's own
        encode functions (same autocast, same trimmed text tower), so both modes compute alike."""
        return encode_image_batch(self.model, pixels), encode_token_batch(self.model, tokens, context)


class OnlineTeacher:
    """Runs the frozen (or trainable) teacher on the student's augmented pixels and texts."""

    def __init__(self, config: Any, device: torch.device, student_mean_std: tuple):
        self.teacher = build_teacher(
            TeacherConfig(
                model=config.teacher_model,
                pretrained=config.teacher_pretrained,
                allow_random=config.allow_random_teacher,
                device=str(device),
            )
        )
        self.trainable = config.teacher_trainable
        self.teacher.model.requires_grad_(self.trainable).train(self.trainable)
        self.student_mean_std = student_mean_std
        self.device = device
        self.encoders: torch.nn.Module = TeacherEncoders(self.teacher.model)

    def wrap_for_ddp(self, env: Any) -> None:
        """Under torchrun a trainable teacher must see every rank's gradients, as the student does;
        without it each rank's teacher drifts apart. CLIP's `logit_scale` takes no part in encoding."""
        if self.trainable and env.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.encoders = DistributedDataParallel(
                self.encoders, device_ids=device_ids, find_unused_parameters=True
            )

    def parameters(self):
        return self.teacher.model.parameters()

    def __call__(
        self, pixels: torch.Tensor, pixel_mask: torch.Tensor, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The cache's own preprocessing (centred letterbox of the un-padded image), on the student's pixels.
        # It runs per image on the CPU (PIL, as the cache does): the online mode is a comparison mode,
        # and being the same function as the cache's is what makes the comparison fair.
        clip_pixels = self.teacher.preprocess_student_pixels(
            pixels.cpu(), pixel_mask.cpu(), self.student_mean_std[0], self.student_mean_std[1]
        ).to(self.device)
        host_tokens = self.teacher.tokenize(texts)
        # The trimmed context is read from the host tokens: no device sync per batch.
        context = token_context(host_tokens) if is_trimmable(self.teacher.model) else None
        tokens = host_tokens.to(self.device, non_blocking=True)
        grad = torch.enable_grad() if self.trainable else torch.no_grad()
        with grad:
            image, text = self.encoders(clip_pixels, tokens, context)
        return image.float(), text.float()


class OnlineTargets(TargetSource):
    """[DIE]/[DTE] of the teacher run on each augmented batch; with `teacher_trainable`, the teacher
    trains too (at the pretrained lr) and its weights go into the checkpoint."""

    def __init__(self, ctx: SourceContext) -> None:
        self.teacher = OnlineTeacher(ctx.config, ctx.device, (ctx.transform.mean, ctx.transform.std))
        self.teacher.wrap_for_ddp(ctx.env)
        self.teacher_grad = self.teacher.trainable

    def targets(self, batch: dict[str, Any]) -> TeacherBatch:
        return self.teacher(batch["pixels"], batch["pixel_mask"], batch["text"])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.teacher.parameters()) if self.teacher.trainable else []

    def state_dict(self) -> dict[str, Any] | None:
        # A trainable teacher changes as it trains: resuming needs its weights.
        return self.teacher.teacher.model.state_dict() if self.teacher.trainable else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.teacher.model.load_state_dict(state)

    def describe(self) -> str:
        fingerprint = self.teacher.teacher.fingerprint()
        mode = "trainable" if self.teacher.trainable else "frozen"
        return (
            f"online {mode} teacher {fingerprint['teacher']} ({fingerprint['weights']['kind']} weights) "
            "on each augmented batch"
        )

    def summary(self) -> dict[str, Any]:
        return {"targets": self.describe(), "teacher_built": True, "teacher_fingerprint": None}
