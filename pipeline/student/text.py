"""The linguistic branch: a Hugging Face BERT-like encoder, its tokenizer, and fixed-length tokenization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.student.config import StudentConfig
from pipeline.student.weights import WeightsUnavailableError, resolve_text_encoder, text_encoder_hint


def build_text_encoder(config: StudentConfig, pretrained: bool = True) -> PreTrainedModel:
    """The text encoder named by `config`, pretrained or randomly initialised, truncated to
    `text_layers_used` layers and without its pooler.

    pretrained=False builds random weights (a checkpoint will overwrite them); the model's config
    still has to be readable (hub cache or local folder).
    """
    source = resolve_text_encoder(config.text_encoder)
    overrides = config.text_config_overrides
    try:
        if pretrained and config.text_encoder_weights == "pretrained":
            encoder = AutoModel.from_pretrained(source, **overrides)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source, **overrides))
    except OSError as error:  # hub download failed: no network and nothing cached
        raise WeightsUnavailableError(f"{text_encoder_hint(config.text_encoder)} ({error})") from error
    if config.text_layers_used is not None:
        _keep_first_layers(encoder, config.text_layers_used)
    # TransVG reads token states only; an unused pooler would get no gradient, which DDP rejects.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def _keep_first_layers(encoder: PreTrainedModel, count: int) -> None:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"text_layers_used needs a BERT-like encoder (encoder.layer); got {type(encoder).__name__}"
        )
    if count > len(layers):
        raise ValueError(f"text_layers_used={count}, but the text encoder has {len(layers)} layers")
    encoder.encoder.layer = layers[:count]
    encoder.config.num_hidden_layers = count


def build_tokenizer(config: StudentConfig) -> PreTrainedTokenizerBase:
    """The tokenizer that belongs to `config.text_encoder` (real even when its weights are random)."""
    try:
        return AutoTokenizer.from_pretrained(resolve_text_encoder(config.text_encoder))
    except OSError as error:
        raise WeightsUnavailableError(f"{text_encoder_hint(config.text_encoder)} ({error})") from error


def tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_len: int) -> tuple[Tensor, Tensor]:
    """Token ids [B, max_len] (long) and token mask [B, max_len] (bool, True = real token).

    Longer texts are truncated with their closing [SEP] kept; shorter ones are padded.
    """
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return encoded["input_ids"].to(torch.long), encoded["attention_mask"].to(torch.bool)
