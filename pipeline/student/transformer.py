"""DETR's transformer encoder, used for both the visual and the visual-linguistic encoders of TransVG."""

from __future__ import annotations

from torch import Tensor, nn


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN layer that adds the position embedding to queries and keys.

    torch's nn.TransformerEncoderLayer takes positions only once, at the input; DETR and TransVG
    re-inject them at every layer and keep them out of the values, which this layer does.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )
        self.attn_dropout = nn.Dropout(dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, pos: Tensor, pad_mask: Tensor) -> Tensor:
        """tokens, pos: [B, N, dim]; pad_mask: [B, N] bool, True = padding (ignored as a key)."""
        query_key = tokens + pos
        attended = self.self_attn(
            query_key, query_key, tokens, key_padding_mask=pad_mask, need_weights=False
        )[0]
        tokens = self.attn_norm(tokens + self.attn_dropout(attended))
        return self.ffn_norm(tokens + self.ffn(tokens))


class Encoder(nn.Module):
    """A stack of `EncoderLayer`s with DETR's Xavier initialisation and no final norm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, tokens: Tensor, pos: Tensor, pad_mask: Tensor) -> Tensor:
        for layer in self.layers:
            tokens = layer(tokens, pos, pad_mask)
        return tokens
