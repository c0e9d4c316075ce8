"""TextGPT: a causal transformer over BPE tokens of brain signals rendered as text."""

from __future__ import annotations

import torch
from torch import nn

from brain_gen.models.channel_gpt import Block, rotary_tables


class TextGPT(nn.Module):
    """Next-token prediction over TextDataLoader batches.

    Each token's embedding is its token embedding plus the embedding of the channel it
    came from (one extra embedding stands for separators and padding, channel id -1).

    Args:
        vocab_size: tokens in the tokenizer (at least its vocabulary size).
        num_channels: channels in the dataset's layout.
        d_model, n_layers, n_heads, dropout: transformer size.
        max_position_embeddings: longest token sequence.
        rope_theta: base of the rotary position encoding.

    Input: ``(input_ids, attention_mask, channel_ids)``, each ``[B, T]``. Output: logits
    ``[B, T, vocab_size]``. Padding sits at the end of each row, so causal attention
    already keeps real tokens from seeing it; the loss ignores padded positions.
    """

    def __init__(
        self,
        vocab_size: int,
        num_channels: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("num_channels", num_channels), ("n_layers", n_layers), ("n_heads", n_heads)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must split into {n_heads} heads of even size")
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.max_position_embeddings = max_position_embeddings
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.channel_embedding = nn.Embedding(num_channels + 1, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        cos, sin = rotary_tables(max_position_embeddings, d_model // n_heads, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        time = input_ids.shape[1]
        if time > self.max_position_embeddings:
            raise ValueError(f"sequence of {time} tokens exceeds max_position_embeddings={self.max_position_embeddings}")
        # Channel id -1 (separators, padding) uses the extra last embedding.
        channels = torch.where(channel_ids < 0, self.num_channels, channel_ids)
        x = self.dropout(self.token_embedding(input_ids) + self.channel_embedding(channels))
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x))
