"""Causal convolution baselines, univariate and multivariate, on float windows and on mu-law codes.

The class names and constructor keys (``in_channels``, ``num_classes``,
``num_embeddings``, ``num_layers``, ``hidden_channels``, ``kernel_size``, ``linear``,
``groups``) are those of the reference toolkit's CNN baselines, so that its model
configs load here unchanged.

Every layer is a 1-D convolution padded on the left only, so the output at step t sees
the inputs at steps <= t: with the datasets' pairs (inputs up to t, target at t + 1)
it is a next-step prediction. ``num_layers`` layers of width ``kernel_size`` see
``num_layers * (kernel_size - 1) + 1`` steps (the receptive field): the defaults (one
layer of 5) see 5 steps, 0.02 s at 250 Hz. ``linear: true`` leaves out the ReLU
between layers, which makes the stack one linear filter of that length (an AR model
of order receptive field - 1 when one layer, fitted by gradient descent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.sampling import check_code_context, forecast_by_recomputing, generating


def receptive_field(num_layers: int, kernel_size: int) -> int:
    """Steps of input that one output of a stack of ``num_layers`` causal convolutions sees."""
    return num_layers * (kernel_size - 1) + 1


class CausalConvStack(nn.Module):
    """``num_layers`` left-padded convolutions ``[B, in_channels, T]`` -> ``[B, in_channels, T]``.

    The first maps ``in_channels`` to ``hidden_channels``, the others keep
    ``hidden_channels``; ReLU between them unless ``linear``; a 1x1 convolution back to
    ``in_channels`` where the widths differ. ``groups`` splits every layer into that many
    independent groups of channels (``groups = in_channels``: one filter per channel).
    """

    def __init__(self, in_channels: int, num_layers: int = 1, hidden_channels: int | None = None, kernel_size: int = 5, linear: bool = False, groups: int = 1):
        super().__init__()
        if num_layers < 1 or kernel_size < 1:
            raise ValueError(f"num_layers and kernel_size must be at least 1, got {num_layers} and {kernel_size}")
        hidden_channels = hidden_channels or in_channels
        self.kernel_size = kernel_size
        self.linear = linear
        widths = [in_channels] + [hidden_channels] * num_layers
        self.convolutions = nn.ModuleList(nn.Conv1d(widths[index], widths[index + 1], kernel_size, groups=groups) for index in range(num_layers))
        self.back = nn.Conv1d(hidden_channels, in_channels, 1) if hidden_channels != in_channels else None
        self.receptive_field = receptive_field(num_layers, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for convolution in self.convolutions:
            x = convolution(F.pad(x, (self.kernel_size - 1, 0)))
            if not self.linear:
                x = torch.relu(x)
        return x if self.back is None else self.back(x)


class CNNMultivariate(nn.Module):
    """Next values ``[B, in_channels, T]`` from float windows ``[B, in_channels, T]``, every channel's past mixed.

    Args:
        in_channels: channels per window.
        num_layers: causal convolution layers.
        hidden_channels: width of the layers (default: ``in_channels``).
        kernel_size: steps each layer sees.
        linear: no ReLU between layers.
        groups: independent groups of channels in every layer.
    """

    # The names of the geometry the data checks compare (brain_gen.training.checks).
    config_keys = {"num_channels": "in_channels"}

    def __init__(self, in_channels: int, num_layers: int = 1, hidden_channels: int | None = None, kernel_size: int = 5, linear: bool = False, groups: int = 1):
        super().__init__()
        self.num_channels = in_channels
        self.stack = CausalConvStack(in_channels, num_layers, hidden_channels, kernel_size, linear, groups)
        self.receptive_field = self.stack.receptive_field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x)


class CNNUnivariate(nn.Module):
    """Next values ``[B, C, T]`` from float windows ``[B, C, T]``: one filter stack shared by all channels, each channel on its own past.

    Args:
        num_layers, hidden_channels (default 1), kernel_size, linear: as for ``CNNMultivariate``.
    """

    def __init__(self, num_layers: int = 1, hidden_channels: int = 1, kernel_size: int = 5, linear: bool = False):
        super().__init__()
        self.stack = CausalConvStack(1, num_layers, hidden_channels, kernel_size, linear)
        self.receptive_field = self.stack.receptive_field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, steps = x.shape
        return self.stack(x.reshape(batch * channels, 1, steps)).reshape(batch, channels, steps)


class CNNMultivariateQuantized(nn.Module):
    """Next-code logits ``[B, in_channels, T, num_classes]`` from int64 codes ``[B, in_channels, T]``.

    Each code becomes ``num_embeddings`` numbers; the ``in_channels x num_embeddings``
    series go through one causal convolution stack (every channel's past mixed, unless
    ``groups`` splits them) and a linear head maps each channel's ``num_embeddings``
    outputs to the codes' logits.

    Args:
        in_channels: channels per window.
        num_classes: codes (mu + 1).
        num_embeddings: numbers per code.
        num_layers, kernel_size, linear, groups: as for ``CNNMultivariate``.
        hidden_channels: width of the layers (default: ``in_channels x num_embeddings``).
    """

    config_keys = {"num_channels": "in_channels", "vocab_size": "num_classes"}

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_embeddings: int = 1,
        num_layers: int = 1,
        hidden_channels: int | None = None,
        kernel_size: int = 5,
        linear: bool = False,
        groups: int = 1,
    ):
        super().__init__()
        self.num_channels = in_channels
        self.vocab_size = num_classes
        self.num_embeddings = num_embeddings
        self.embedding = nn.Embedding(num_classes, num_embeddings)
        self.stack = CausalConvStack(in_channels * num_embeddings, num_layers, hidden_channels, kernel_size, linear, groups)
        self.head = nn.Linear(num_embeddings, num_classes)
        self.receptive_field = self.stack.receptive_field

    def series(self, codes: torch.Tensor) -> torch.Tensor:
        """Embedded codes ``[B, C * E, T]`` for codes ``[B, C, T]``: each channel's E numbers in adjacent rows."""
        batch, channels, steps = codes.shape
        return self.embedding(codes).permute(0, 1, 3, 2).reshape(batch, channels * self.num_embeddings, steps)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch, channels, steps = codes.shape
        outputs = self.stack(self.series(codes))  # [B, C * E, T]
        outputs = outputs.reshape(batch, channels, self.num_embeddings, steps).permute(0, 1, 3, 2)
        return self.head(outputs)

    def forecast(
        self,
        context: torch.Tensor,
        steps: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue int64 codes ``context`` ``[B, C, T]`` (T >= 1) by ``steps`` codes: int64 ``[B, C, steps]``.

        Each step runs the stack over the last ``receptive_field`` codes only, all an
        output can see, so a step costs the same however long the sequence grows
        (``use_cache`` is accepted for the common interface; there is nothing to cache).
        Codes are drawn by ``sampling`` (default ``SamplingConfig()``) through ``generator``.
        """
        check_code_context(self, context)
        with generating(self):
            return forecast_by_recomputing(self, context, steps, sampling or SamplingConfig(), generator, self.receptive_field)


class CNNUnivariateQuantized(CNNMultivariateQuantized):
    """Next-code logits ``[B, C, T, num_classes]`` from int64 codes ``[B, C, T]``, each channel on its own past, any C.

    Args:
        num_classes, num_embeddings, num_layers, kernel_size, linear: as for ``CNNMultivariateQuantized``.
        hidden_channels: width of the layers (default: ``num_embeddings``).
    """

    def __init__(
        self,
        num_classes: int,
        num_embeddings: int = 1,
        num_layers: int = 1,
        hidden_channels: int | None = None,
        kernel_size: int = 5,
        linear: bool = False,
    ):
        super().__init__(1, num_classes, num_embeddings, num_layers, hidden_channels, kernel_size, linear)
        self.num_channels = None  # any number: channels are handled one by one

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch, channels, steps = codes.shape
        one_by_one = self.series(codes.reshape(batch * channels, 1, steps))  # [B * C, E, T]
        outputs = self.stack(one_by_one).reshape(batch, channels, self.num_embeddings, steps).permute(0, 1, 3, 2)
        return self.head(outputs)
