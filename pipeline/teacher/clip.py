"""The frozen CLIP teacher; with `teacher_training.py` (which trains one), the only open_clip importer.

It builds the model with its weights, preprocesses images (letterbox by default, so the teacher sees
the whole image the student grounds in), and encodes images ([DIE]) and texts ([DTE]).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import open_clip
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from pipeline.data import file_sha256
from pipeline.data.images import read_rgb
from pipeline.data.transforms import TransformedSample, student_view_image
from pipeline.errors import ExpectedError

CROP_MODES = {"letterbox": "longest", "center": "shortest"}
RANDOM_TEACHER_SEED = 0


class TeacherWeightsError(ExpectedError, RuntimeError):
    """The teacher's weights cannot be had (offline, wrong tag, missing file)."""


@dataclass(frozen=True)
class TeacherConfig:
    """Which CLIP to run and how to feed it.

    `model` is an open_clip model name or a path to an open_clip model-config JSON; `pretrained` an
    open_clip tag (e.g. `openai`), a local checkpoint file, or `none` (random weights, which must be
    asked for explicitly with `allow_random`).
    """

    model: str = "ViT-B-16"
    pretrained: str = "openai"
    allow_random: bool = False
    crop: str = "letterbox"
    device: str = "cpu"
    jpeg_draft: bool = True  # decode JPEGs at a reduced scale that still covers the input size


def _register_model(model: str) -> str:
    """Make a JSON model config known to open_clip and return the name to create it by."""
    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"teacher model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ValueError(
            f"unknown teacher {model!r}: give an open_clip model name (see open_clip.list_models()) "
            "or a path to an open_clip model-config JSON"
        )
    return model


def _weights_offline_message(config: TeacherConfig, error: Exception) -> str:
    return (
        f"cannot load teacher weights {config.pretrained!r} for {config.model}: {error}\n"
        "This machine may be offline. Supply the weights in one of these ways:\n"
        "  --pretrained /path/to/open_clip_model.safetensors   (a local open_clip checkpoint file)\n"
        "  pre-fill the Hugging Face cache (HF_HOME) on a machine with internet, then rerun here\n"
        "  --pretrained none --allow-random-teacher            (random weights: for tests only)"
    )


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Without a network, let the hub client use its local cache only, instead of retrying for a minute."""
    if _hub_reachable():
        yield
        return
    previous = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = previous


def create_random_model(model_name: str, seed: int) -> torch.nn.Module:
    """open_clip's model with random weights drawn from `seed`, the global RNG left untouched: every
    process (and every dask worker) builds the same one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(model_name, pretrained=None, pretrained_text=False)


def _model_config_digest(name: str) -> str:
    """Hash of the architecture config, so two JSON configs of the same name cannot be confused."""
    config = open_clip.get_model_config(name) or {}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class Teacher:
    """A frozen open_clip model with the preprocessing the cache uses."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        if config.crop not in CROP_MODES:
            raise ValueError(f"teacher crop must be one of {sorted(CROP_MODES)}, got {config.crop!r}")
        self.model_name = _register_model(config.model)
        self.model, self.weights_id = self._build_model()
        self.model.eval().requires_grad_(False).to(config.device)
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self.preprocess_cfg = open_clip.get_model_preprocess_cfg(self.model)
        self.image_size = int(_first(self.preprocess_cfg["size"]))
        mean_rgb = tuple(round(255 * channel) for channel in self.preprocess_cfg["mean"])
        self.image_transform = open_clip.image_transform(
            self.image_size,
            is_train=False,
            mean=self.preprocess_cfg["mean"],
            std=self.preprocess_cfg["std"],
            resize_mode=CROP_MODES[config.crop],
            interpolation=self.preprocess_cfg.get("interpolation", "bicubic"),
            fill_color=mean_rgb,
        )
        self.embedding_dim = int(self.encode_texts(["a"]).shape[-1])

    def _build_model(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        pretrained = self.config.pretrained
        if pretrained == "none":
            if not self.config.allow_random:
                raise TeacherWeightsError(
                    "--pretrained none gives a teacher with random weights; pass --allow-random-teacher "
                    "to confirm (the store will be marked as such)"
                )
            model = create_random_model(self.model_name, RANDOM_TEACHER_SEED)
            return model, {"kind": "random", "seed": RANDOM_TEACHER_SEED}
        path = Path(pretrained)
        if path.is_file():
            model = open_clip.create_model(self.model_name, pretrained=str(path), pretrained_text=False)
            return model, {"kind": "file", "sha256": file_sha256(path)}
        tags = open_clip.list_pretrained_tags_by_model(self.model_name)
        if pretrained not in tags:
            raise TeacherWeightsError(
                f"--pretrained {pretrained!r} is neither a file nor an open_clip tag of {self.model_name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        try:
            with _offline_unless_reachable():
                model = open_clip.create_model(
                    self.model_name, pretrained=pretrained, require_pretrained=True
                )
        except Exception as error:  # noqa: BLE001 - any download/load failure means the same to the user
            raise TeacherWeightsError(_weights_offline_message(self.config, error)) from error
        return model, {"kind": "tag", "tag": pretrained}

    @property
    def is_random(self) -> bool:
        return self.weights_id["kind"] == "random"

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the teacher's outputs: architecture, weights, preprocessing."""
        return {
            "teacher": self.model_name,
            "teacher_config_sha": _model_config_digest(self.model_name),
            "weights": self.weights_id,
            "open_clip": open_clip.__version__,
            "preprocess": {
                "crop": self.config.crop,
                "size": self.image_size,
                "mean": list(self.preprocess_cfg["mean"]),
                "std": list(self.preprocess_cfg["std"]),
                "interpolation": self.preprocess_cfg.get("interpolation", "bicubic"),
                "jpeg_draft": self.config.jpeg_draft,
                "flip_variant": "horizontal flip of the preprocessed image",
            },
            # bf16 on CUDA and fp32 on CPU give different rows: a store resumed on another kind of
            # machine must be refused rather than mix the two.
            "compute": compute_fingerprint(self.device),
        }

    def load_image(self, path: Path) -> torch.Tensor:
        """Decode and preprocess one image to the teacher's input tensor [3, S, S]."""
        # JPEG DCT scaling decodes at 1/2..1/8 size for far less work; the result still covers the
        # teacher's input size, so only the resampling filter's input changes.
        draft = (self.image_size, self.image_size) if self.config.jpeg_draft else None
        return self.preprocess(read_rgb(path, draft_size=draft))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The one preprocessing of every teacher input (cache and online): [3, S, S] float32."""
        return self.image_transform(image.convert("RGB"))

    def preprocess_student_pixels(
        self, pixels: torch.Tensor, pixel_mask: torch.Tensor, mean: Sequence[float], std: Sequence[float]
    ) -> torch.Tensor:
        """The teacher's input for a batch of the student's normalized, padded tensors [B, 3, H, W].

        The student's padding is dropped and its content goes through `preprocess`, so the online
        teacher sees the student's pixels framed exactly as the cache frames an image file.
        """
        views = [student_view_image(p, m, mean, std) for p, m in zip(pixels, pixel_mask, strict=True)]
        return torch.stack([self.preprocess(view) for view in views])

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def preprocess_view(self, view: TransformedSample) -> torch.Tensor:
        """The teacher's input [3, S_t, S_t] float32 for one rendered student view (`render_view`): the
        content the student sees (its uint8 pixels, without the padding), through `preprocess`, as the
        cache preprocesses an image file. Equal to `preprocess_student_pixels` on the view's float
        tensor; the exact-view cache job calls it in its loader workers."""
        return self.preprocess(F.to_pil_image(view.pixels.cpu()))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[DIE] of pixels [B, 3, S, S] (host or device): CLIP image embeddings (not normalized), [B, d]."""
        return encode_image_batch(self.model, pixels.to(self.device, non_blocking=True))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [B, L] on the host (the tokenizer's own output)."""
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], trim_context: bool = True) -> torch.Tensor:
        """[DTE]: CLIP text embeddings (not normalized), [B, d] float32.

        With `trim_context` the text tower runs only up to the batch's longest token sequence; for a
        causal tower pooled at the end token this gives the full-context result (see `trimmable`).
        """
        return self.encode_tokens(self.tokenize(texts), trim_context)

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor, trim_context: bool = True) -> torch.Tensor:
        """[DTE] of host token ids [B, L]: [B, d] float32 on the teacher's device."""
        context = token_context(tokens) if trim_context and self.trimmable else None
        return encode_token_batch(self.model, tokens.to(self.device, non_blocking=True), context)

    @property
    def trimmable(self) -> bool:
        """Whether shortening the context cannot change the output.

        True for open_clip's standard CLIP text tower: causal attention means no position attends to
        padding after the end token, and the end token's output is the one pooled.
        """
        return is_trimmable(self.model)


def is_trimmable(model: torch.nn.Module) -> bool:
    """See `Teacher.trimmable`."""
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def compute_dtype(device: torch.device) -> str:
    """The precision the teacher computes in on `device`: bf16 autocast on CUDA, fp32 elsewhere."""
    return "bfloat16" if device.type == "cuda" else "float32"


def compute_fingerprint(device: torch.device) -> dict[str, str]:
    """The fingerprint entry naming how a teacher on `device` computes (device type and dtype)."""
    return {"device": device.type, "dtype": compute_dtype(device)}


def teacher_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The one autocast of every teacher forward (cache and online): bf16 on CUDA, none (fp32) on CPU."""
    dtype = compute_dtype(device)
    return torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")


def token_context(tokens: torch.Tensor) -> int:
    """Length of the longest token sequence of host token ids [B, L] (pad id 0): read on the host, so
    no device sync is needed to trim a batch."""
    return int((tokens != 0).sum(dim=1).max()) if len(tokens) else tokens.shape[1]


def encode_image_batch(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The teacher's image forward, shared by the cache and the online mode: [B, 3, S, S] -> [B, d] float32.

    Gradients flow when the caller enables them (the trainable online teacher)."""
    if pixels.is_cuda:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with teacher_autocast(pixels.device):
        return model.encode_image(pixels).float()


def encode_token_batch(model: torch.nn.Module, tokens: torch.Tensor, context: int | None) -> torch.Tensor:
    """The teacher's text forward, shared by the cache and the online mode: [B, L] -> [B, d] float32.

    `context` (from `token_context` on the host tokens, only for an `is_trimmable` model) runs the
    tower on that many positions; None runs the library's full-context `encode_text`."""
    with teacher_autocast(tokens.device):
        if context is not None:
            return encode_text_trimmed(model, tokens, context).float()
        return model.encode_text(tokens).float()


def encode_text_trimmed(
    model: torch.nn.Module, tokens: torch.Tensor, context: int | None = None
) -> torch.Tensor:
    """open_clip's `CLIP.encode_text`, run on the shortest context that holds every end token.

    The positional embeddings and the causal mask are sliced to that length; everything else is
    the library's own modules in the library's order. Pass `context` (`token_context` of the host
    tokens) to avoid reading the device tokens back.
    """
    if context is None:
        context = token_context(tokens.cpu())
    tokens = tokens[:, :context]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:context].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:context, :context])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def build_teacher(config: TeacherConfig) -> Teacher:
    """Factory; warns loudly when the teacher is random."""
    teacher = Teacher(config)
    if teacher.is_random:
        warnings.warn(
            "the CLIP teacher has RANDOM weights (--pretrained none): its targets carry no knowledge",
            stacklevel=2,
        )
    return teacher


def _first(size: Any) -> int:
    return size[0] if isinstance(size, list | tuple) else size
