"""SpaceTimeGPT: ChannelGPT with attention across channels, so that every prediction sees every channel's past.

ChannelGPT reads each channel as its own sequence, so it can only predict a channel
from that channel's past, while brain signals are strongly coupled across sensors (a
multichannel linear predictor, VAR, beats it on real EEG). SpaceTimeGPT factorises
attention over space and time: every layer is ChannelGPT's causal block over time,
within each channel, followed by attention over the channels of the same time step.
A channel's state at step t then holds every channel's inputs up to t, and the next
layer's time attention spreads that over the past.

Why factorised rather than one flat sequence of channels x time tokens: attention over
a flat sequence costs (C T)^2, against C T^2 + T C^2 here (with 8 channels of 100
steps: 640,000 against 86,400 pairs per layer), and a flat sequence of C T tokens would
need C times the position range; the KV cache of generation stays per channel, and the
channel step attends only within the new time step, so generation needs no cache for
it. Causality holds: channel attention at step t reads inputs at step t, which a
prediction of step t + 1 may use.
"""

from __future__ import annotations

import torch
from torch import nn

from brain_gen.models.channel_gpt import ChannelGPT
from brain_gen.models.transformer import CausalTransformer, init_weights


class ChannelAttention(nn.Module):
    """Pre-norm attention across the channels of one time step, ``[N, C, d_model]``, with a residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return x + self.attention(normed, normed, normed, need_weights=False)[0]


class SpaceTimeTransformer(CausalTransformer):
    """CausalTransformer over the rows ``b * C + c`` of B windows of C channels, with channel attention after every block."""

    def __init__(self, num_channels: int, vocab_size: int, d_model: int, n_layers: int, n_heads: int, dropout: float, max_position_embeddings: int, rope_theta: float):
        super().__init__(vocab_size, d_model, n_layers, n_heads, dropout, max_position_embeddings, rope_theta)
        self.num_channels = num_channels
        self.channel_attention = nn.ModuleList(ChannelAttention(d_model, n_heads, dropout) for _ in range(n_layers))
        self.channel_attention.apply(init_weights)

    def after_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        rows, time, width = x.shape
        channels = self.num_channels
        by_step = x.view(rows // channels, channels, time, width).transpose(1, 2).reshape(-1, channels, width)
        mixed = self.channel_attention[layer](by_step)
        return mixed.view(rows // channels, time, channels, width).transpose(1, 2).reshape(rows, time, width)


class SpaceTimeGPT(ChannelGPT):
    """Next-code logits ``[B, C, T, vocab_size]`` from int64 mu-law codes ``[B, C, T]``, every channel's past mixed.

    The same arguments, checkpoint extras (token corruption), ``resize_context`` and
    KV-cached ``forecast`` as ``ChannelGPT``; each layer adds attention across channels
    (``n_heads`` heads). The channel count is fixed by the learned channel embeddings and
    the channel attention sees them all at once.
    """

    @staticmethod
    def make_transformer(num_channels: int, *arguments) -> CausalTransformer:
        return SpaceTimeTransformer(num_channels, *arguments)
