"""ChannelGPT: a decoder-only transformer that predicts each channel's next mu-law code.

Every channel is its own sequence over time. A learned channel embedding tells the
shared transformer which sensor it is reading; rotary position encoding gives it
time. Channels do not attend to each other, which keeps attention cost linear in
the number of channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

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


@dataclass
class TokenCorruption:
    """Replace a share ``p`` of input codes with uniformly random codes while training.

    A regulariser: the model learns not to trust every input code. Never applied in eval.
    """

    enabled: bool = True
    p: float = 0.1
    mode: str = "random"

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"token corruption enabled must be true or false, got {self.enabled!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p <= 1.0:
            raise ValueError(f"token corruption p must be a number in [0, 1], got {self.p!r}")
        if self.mode != "random":
            raise ValueError(f"token corruption mode {self.mode!r} is not supported; use 'random'")

    @classmethod
    def from_mapping(cls, settings: dict[str, Any] | None) -> TokenCorruption:
        if settings is None:
            return cls(enabled=False, p=0.0)
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown token corruption key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**settings)


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
        token_corruption_cfg: ``{enabled, p, mode}``: while training, replace a share
            ``p`` of the input codes with random codes (mode ``random``). Off by default.
            The settings in force are saved in checkpoints.

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
        token_corruption_cfg: dict[str, Any] | None = None,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("num_channels", num_channels), ("n_layers", n_layers), ("n_heads", n_heads), ("d_model", d_model)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must split into {n_heads} heads of even size")
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.head_dim = d_model // n_heads
        self.configured_token_corruption = TokenCorruption.from_mapping(token_corruption_cfg)
        self.token_corruption = self.configured_token_corruption
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.channel_embedding = nn.Embedding(num_channels, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        # Tied input and output embeddings: fewer parameters, and it trains faster.
        self.head.weight = self.token_embedding.weight
        self._set_rotary_tables()
        self.apply(self._init_weights)

    def _set_rotary_tables(self) -> None:
        device = self.token_embedding.weight.device
        cos, sin = rotary_tables(self.max_position_embeddings, self.head_dim, self.rope_theta)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def resize_context(
        self,
        input_shape: list[int] | None = None,
        rope_theta: float | None = None,
        max_position_embeddings: int | None = None,
    ) -> None:
        """Change the context the model accepts, keeping every learned weight.

        Args:
            input_shape: ``[channels, time]`` of the new windows; the channel count
                must stay the same, and the model will accept ``time`` steps.
            rope_theta: new base of the rotary frequencies.
            max_position_embeddings: new longest sequence.
        """
        if input_shape is not None:
            if len(input_shape) != 2:
                raise ValueError(f"input_shape must be [channels, time], got {input_shape}")
            channels, steps = input_shape
            if channels != self.num_channels:
                raise ValueError(
                    f"input_shape has {channels} channels but ChannelGPT has {self.num_channels} learned "
                    "channel embeddings; the channel count cannot change on resume"
                )
            if max_position_embeddings is not None and max_position_embeddings < steps:
                raise ValueError(f"max_position_embeddings ({max_position_embeddings}) is below input_shape's {steps} steps")
            max_position_embeddings = max_position_embeddings or max(self.max_position_embeddings, steps)
        if max_position_embeddings is not None:
            if max_position_embeddings < 1:
                raise ValueError(f"max_position_embeddings must be at least 1, got {max_position_embeddings}")
            self.max_position_embeddings = int(max_position_embeddings)
        if rope_theta is not None:
            if not rope_theta > 0:
                raise ValueError(f"rope_theta must be positive, got {rope_theta}")
            self.rope_theta = float(rope_theta)
        self._set_rotary_tables()

    def update_token_corruption_cfg(self, settings: dict[str, Any] | None) -> None:
        """Replace the token corruption settings; None restores those given to the constructor."""
        if settings is None:
            self.token_corruption = self.configured_token_corruption
        else:
            self.token_corruption = TokenCorruption.from_mapping(settings)

    def get_extra_state(self) -> dict[str, Any]:
        return {"token_corruption_cfg": asdict(self.token_corruption)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.token_corruption = TokenCorruption.from_mapping(state["token_corruption_cfg"])

    def corrupt(self, codes: torch.Tensor) -> torch.Tensor:
        """Training-time corruption of the input codes (identity in eval or when off)."""
        settings = self.token_corruption
        if not (self.training and settings.enabled and settings.p > 0):
            return codes
        replace = torch.rand(codes.shape, device=codes.device) < settings.p
        return torch.where(replace, torch.randint_like(codes, self.vocab_size), codes)

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
        x = self.token_embedding(self.corrupt(codes)) + self.channel_embedding(channel_ids)[None, :, None, :]
        x = self.dropout(x).reshape(batch * channels, time, -1)
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x)).view(batch, channels, time, self.vocab_size)
