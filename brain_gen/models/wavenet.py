"""WaveNet: a stack of causal dilated convolutions that predicts each channel's next mu-law code.

van den Oord et al. (2016): gated dilated convolutions, doubling the dilation at every
layer, see 2^n_layers past steps with n_layers layers. Here all channels are mixed
at the input, so every prediction sees the past of every sensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.sampling import check_code_context, forecast_by_recomputing, generating, sample_per_channel


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

    def step(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` at one new time step ``x`` ``[B, R, 1]``, given the ``left_padding`` inputs before it.

        ``past`` ``[B, R, left_padding]`` holds this layer's latest inputs, oldest first
        (zeros before the sequence's start, as the padding of ``forward``). Returns the
        residual output ``[B, R, 1]``, the skip output ``[B, S, 1]`` and the updated ``past``.
        """
        window = torch.cat((past, x), dim=2)
        # The dilated convolution over exactly its receptive field yields one output: the new step's.
        filtered, gate = self.dilated(window).chunk(2, dim=1)
        hidden = torch.tanh(filtered) * torch.sigmoid(gate)
        return x + self.residual(hidden), self.skip(hidden), window[:, :, 1:]


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

    ``forecast`` continues a context code by code.
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
        x = self.mixed_embedding(codes)
        skips = 0
        for layer in self.layers:
            x, skip = layer(x)
            skips = skips + skip
        return self.code_logits(skips)

    def mixed_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """Input ``[B, residual_channels, T]`` of the first layer for codes ``[B, C, T]``."""
        batch, _, steps = codes.shape
        embedded = self.embedding(codes)  # [B, C, T, E]
        return self.mix_channels(embedded.permute(0, 1, 3, 2).reshape(batch, -1, steps))

    def code_logits(self, skips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, T, vocab_size]`` from the summed skip outputs ``[B, skip_channels, T]``."""
        batch, _, steps = skips.shape
        logits = self.head(skips)  # [B, C * V, T]
        return logits.reshape(batch, self.num_channels, self.vocab_size, steps).permute(0, 1, 3, 2)

    def forecast(
        self,
        context: torch.Tensor,
        steps: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue int64 codes ``context`` ``[B, C, T]`` (T >= 1) by ``steps`` codes: int64 ``[B, C, steps]``.

        Each code is drawn by ``sampling`` (default ``SamplingConfig()``) through
        ``generator``. The cached path runs the context through the stack once, keeps
        each layer's last ``(kernel_size - 1) * dilation`` inputs, and then computes only
        the new time step of every layer. ``use_cache=False`` runs ``forward`` over the
        whole sequence so far at every step (slow; the reference). Runs in eval mode
        without autograd and leaves the training flag as it was.
        """
        check_code_context(self, context)
        sampling = sampling or SamplingConfig()
        batch, channels, time = context.shape
        with generating(self):
            if not use_cache:
                return forecast_by_recomputing(self, context, steps, sampling, generator)
            codes = torch.empty(batch, channels, time + steps, dtype=torch.long, device=context.device)
            codes[:, :, :time] = context
            x, skips, pasts = self.mixed_embedding(context.long()), 0, []
            for layer in self.layers:
                # The layer's inputs before the new step; zeros stand for steps before the start.
                pasts.append(F.pad(x, (layer.left_padding, 0))[:, :, -layer.left_padding :])
                x, skip = layer(x)
                skips = skips + skip
            for step in range(time, time + steps):
                if step > time:
                    x, skips = self.mixed_embedding(codes[:, :, step - 1 : step]), 0
                    for index, layer in enumerate(self.layers):
                        x, skip, pasts[index] = layer.step(x, pasts[index])
                        skips = skips + skip
                codes[:, :, step] = sample_per_channel(self.code_logits(skips[:, :, -1:])[:, :, -1], sampling, generator)
        return codes[:, :, time:].clone()
