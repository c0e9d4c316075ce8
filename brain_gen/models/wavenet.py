"""WaveNet: a stack of causal dilated convolutions that predicts each channel's next mu-law code.

van den Oord et al. (2016): gated dilated convolutions, doubling the dilation at every
layer, see 2^n_layers past steps with n_layers layers. Here all channels are mixed
at the input, so every prediction sees the past of every sensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedResidualLayer(nn.Module):
    """tanh(filter) x sigmoid(gate) of a causal dilated convolution, with residual and skip outputs."""

    def __init__(self, residual_channels: int, skip_channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.left_padding = (kernel_size - 1) * dilation
        self.dilated = nn.Conv1d(residual_channels, 2 * residual_channels, kernel_size, dilation=dilation)
        self.residual = nn.Conv1d(residual_channels, residual_channels, 1)
        self.skip = nn.Conv1d(residual_channels, skip_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Padding on the left only: step t sees steps <= t.
        filtered, gate = self.dilated(F.pad(x, (self.left_padding, 0))).chunk(2, dim=1)
        hidden = self.dropout(torch.tanh(filtered) * torch.sigmoid(gate))
        return x + self.residual(hidden), self.skip(hidden)


class WaveNet(nn.Module):
    """Next-code logits ``[B, C, T, vocab_size]`` from int64 mu-law codes ``[B, C, T]``.

    Args:
        vocab_size: number of codes (mu + 1).
        num_channels: sensors per window.
        embedding_dim: size of each code's embedding before channels are mixed.
        residual_channels: width of the residual stack.
        skip_channels: width of the skip connections and the output head.
        n_layers: gated layers; the dilation doubles at each one and starts over
            every ``dilation_cycle`` layers.
        dilation_cycle: layers per dilation cycle (receptive field grows by
            2^dilation_cycle - 1 steps per cycle, times kernel_size - 1).
        kernel_size: taps of each dilated convolution.
        dropout: dropout probability inside each layer.
    """

    def __init__(
        self,
        vocab_size: int,
        num_channels: int,
        embedding_dim: int = 16,
        residual_channels: int = 64,
        skip_channels: int = 64,
        n_layers: int = 8,
        dilation_cycle: int = 8,
        kernel_size: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_layers < 1 or dilation_cycle < 1 or kernel_size < 2:
            raise ValueError(f"need n_layers >= 1, dilation_cycle >= 1 and kernel_size >= 2, got {n_layers}, {dilation_cycle}, {kernel_size}")
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.mix_channels = nn.Conv1d(num_channels * embedding_dim, residual_channels, 1)
        self.layers = nn.ModuleList(
            GatedResidualLayer(residual_channels, skip_channels, kernel_size, 2 ** (layer % dilation_cycle), dropout)
            for layer in range(n_layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(), nn.Conv1d(skip_channels, num_channels * vocab_size, 1))
        self.receptive_field = 1 + (kernel_size - 1) * sum(2 ** (layer % dilation_cycle) for layer in range(n_layers))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3 or codes.shape[1] != self.num_channels or codes.is_floating_point():
            raise ValueError(f"WaveNet expects int64 codes [batch, {self.num_channels}, time], got {codes.dtype} {tuple(codes.shape)}")
        batch, channels, steps = codes.shape
        embedded = self.embedding(codes)  # [B, C, T, E]
        x = self.mix_channels(embedded.permute(0, 1, 3, 2).reshape(batch, -1, steps))
        skips = 0
        for layer in self.layers:
            x, skip = layer(x)
            skips = skips + skip
        logits = self.head(skips)  # [B, C * V, T]
        return logits.reshape(batch, channels, self.vocab_size, steps).permute(0, 1, 3, 2)
