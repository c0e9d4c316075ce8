"""ChannelGPT: a decoder-only transformer that predicts each channel's next mu-law code.

Every channel is its own sequence over time. A learned channel embedding tells the
shared transformer which sensor it is reading; rotary position encoding gives it
time. Channels do not attend to each other, which keeps attention cost linear in
the number of channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_tables(max_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[max_positions, head_dim // 2]`` for rotary position encoding."""
    inverse_frequency = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inverse_frequency)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features of ``x`` ``[..., T, head_dim]`` by their position's angle."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_dropout(self.proj(attended.transpose(1, 2).reshape(batch, time, width)))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ChannelGPT(nn.Module):
    """Next-code prediction for every channel of a mu-law coded recording.

    Args:
        vocab_size: number of codes (mu + 1 for mu-law with parameter mu).
        num_channels: channels of the input, in the dataset's canonical order.
        d_model: width of the token representation.
        n_layers: transformer blocks.
        n_heads: attention heads; must divide d_model into even head sizes.
        dropout: dropout probability in attention and MLP outputs.
        max_position_embeddings: longest sequence (time steps) the model accepts.
        rope_theta: base of the rotary position encoding frequencies.

    Input: int64 codes ``[B, C, T]``. Output: logits ``[B, C, T, vocab_size]``.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        num_channels: int = 1,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must split into {n_heads} heads of even size")
        for name, value in (("vocab_size", vocab_size), ("num_channels", num_channels), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.channel_embedding = nn.Embedding(num_channels, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        # Tied input and output embeddings: fewer parameters, and it trains faster.
        self.head.weight = self.token_embedding.weight
        cos, sin = rotary_tables(max_position_embeddings, d_model // n_heads, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch, channels, time = codes.shape
        if channels != self.num_channels:
            raise ValueError(f"ChannelGPT was built for {self.num_channels} channels, got input with {channels}")
        if time > self.max_position_embeddings:
            raise ValueError(f"sequence of {time} steps exceeds max_position_embeddings={self.max_position_embeddings}")
        channel_ids = torch.arange(channels, device=codes.device)
        x = self.token_embedding(codes) + self.channel_embedding(channel_ids)[None, :, None, :]
        x = self.dropout(x).reshape(batch * channels, time, -1)
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x)).view(batch, channels, time, self.vocab_size)
