"""ConvClassifier: a compact convolutional decoder of event-locked responses, after EEGNet.

Lawhern et al. (2018) showed that a few factorised convolutions decode EEG/MEG
responses about as well as much larger networks: a temporal convolution learns
frequency filters, a depthwise convolution across all sensors learns spatial filters
per frequency filter, and a separable convolution combines them over time.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvClassifier(nn.Module):
    """Class logits ``[B, n_classes]`` from float windows ``[B, num_channels, n_samples]``.

    temporal conv -> depthwise spatial conv -> separable conv -> average pooling -> linear.

    Args:
        num_channels: sensors per window.
        n_classes: number of classes.
        n_samples: time samples per window.
        temporal_filters: filters of the first, temporal convolution (EEGNet's F1).
        spatial_multiplier: spatial filters per temporal filter (D).
        separable_filters: filters of the separable convolution (F2).
        temporal_kernel: length of the temporal kernel, in samples (about half the
            sampling rate covers frequencies from 2 Hz up).
        separable_kernel: length of the separable convolution's kernel, in samples.
        pool_1, pool_2: average-pooling factors over time after the spatial and the
            separable convolution.
        dropout: dropout probability after each pooling.
    """

    def __init__(
        self,
        num_channels: int,
        n_classes: int,
        n_samples: int,
        temporal_filters: int = 8,
        spatial_multiplier: int = 2,
        separable_filters: int = 16,
        temporal_kernel: int = 63,
        separable_kernel: int = 15,
        pool_1: int = 4,
        pool_2: int = 8,
        dropout: float = 0.25,
    ):
        super().__init__()
        pooled = n_samples // pool_1 // pool_2
        if pooled < 1:
            raise ValueError(f"n_samples ({n_samples}) is shorter than pool_1 x pool_2 ({pool_1 * pool_2}); lower the pooling")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.num_channels = num_channels
        self.n_classes = n_classes
        self.n_samples = n_samples
        spatial_filters = temporal_filters * spatial_multiplier
        self.features = nn.Sequential(
            nn.Conv2d(1, temporal_filters, (1, temporal_kernel), padding="same", bias=False),
            nn.BatchNorm2d(temporal_filters),
            nn.Conv2d(temporal_filters, spatial_filters, (num_channels, 1), groups=temporal_filters, bias=False),
            nn.BatchNorm2d(spatial_filters),
            nn.ELU(),
            nn.AvgPool2d((1, pool_1)),
            nn.Dropout(dropout),
            nn.Conv2d(spatial_filters, spatial_filters, (1, separable_kernel), padding="same", groups=spatial_filters, bias=False),
            nn.Conv2d(spatial_filters, separable_filters, 1, bias=False),
            nn.BatchNorm2d(separable_filters),
            nn.ELU(),
            nn.AvgPool2d((1, pool_2)),
            nn.Dropout(dropout),
        )
        self.classify = nn.Linear(separable_filters * pooled, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_channels or x.shape[2] != self.n_samples:
            raise ValueError(
                f"ConvClassifier expects windows [batch, {self.num_channels}, {self.n_samples}], got {tuple(x.shape)}"
            )
        return self.classify(self.features(x.unsqueeze(1)).flatten(1))
