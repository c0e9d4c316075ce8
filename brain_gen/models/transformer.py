"""The causal transformer shared by ChannelGPT and TextGPT: rotary positions, pre-norm blocks, tied head."""

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


class CausalTransformer(nn.Module):
    """Token embedding, causal pre-norm blocks with rotary positions, and a tied output head.

    Args:
        vocab_size: tokens (or codes) in and out.
        d_model: width; n_layers: blocks; n_heads: attention heads (even head size).
        dropout: dropout on embeddings, attention and MLP outputs.
        max_position_embeddings: longest sequence accepted; rope_theta: rotary base.

    ``forward`` takes embedded sequences ``[N, T, d_model]`` (the caller adds what else
    it embeds, such as channels) and returns logits ``[N, T, vocab_size]``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        max_position_embeddings: int,
        rope_theta: float,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads), ("max_position_embeddings", max_position_embeddings)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must split into {n_heads} heads of even size")
        self.vocab_size = vocab_size
        self.head_dim = d_model // n_heads
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        # Tied input and output embeddings: fewer parameters, and it trains faster.
        self.head.weight = self.token_embedding.weight
        self.set_context(max_position_embeddings, rope_theta)
        self.apply(init_weights)

    def set_context(self, max_position_embeddings: int, rope_theta: float) -> None:
        """(Re)build the rotary tables for a new longest sequence or rotary base."""
        if max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings must be at least 1, got {max_position_embeddings}")
        if not rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {rope_theta}")
        self.max_position_embeddings = int(max_position_embeddings)
        self.rope_theta = float(rope_theta)
        device = self.token_embedding.weight.device
        cos, sin = rotary_tables(self.max_position_embeddings, self.head_dim, self.rope_theta)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time = x.shape[1]
        if time > self.max_position_embeddings:
            raise ValueError(f"sequence of {time} steps exceeds max_position_embeddings={self.max_position_embeddings}")
        x = self.dropout(x)
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x))


def init_weights(module: nn.Module) -> None:
    """GPT-style initialisation: small normal weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
