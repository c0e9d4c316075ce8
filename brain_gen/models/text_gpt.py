"""TextGPT: a causal transformer over BPE tokens of brain signals rendered as text."""

from __future__ import annotations

import torch
from torch import nn

from brain_gen.models.transformer import CausalTransformer, init_weights


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
        if num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {num_channels}")
        self.transformer = CausalTransformer(vocab_size, d_model, n_layers, n_heads, dropout, max_position_embeddings, rope_theta)
        self.channel_embedding = nn.Embedding(num_channels + 1, d_model)
        init_weights(self.channel_embedding)
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.max_position_embeddings = max_position_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        # Channel id -1 (separators, padding) uses the extra last embedding.
        channels = torch.where(channel_ids < 0, self.num_channels, channel_ids)
        return self.transformer(self.transformer.token_embedding(input_ids) + self.channel_embedding(channels))
