"""Mu-law companding: float signals to integer codes and back."""

from __future__ import annotations

import math

import torch


def mu_law_encode(x: torch.Tensor, mu: int = 255, max_val: float = 10.0) -> torch.Tensor:
    """Quantize ``x`` into int64 codes in [0, mu].

    ``x`` is divided by ``max_val`` and clipped to [-1, 1] first, so ``max_val`` is the
    amplitude (in the signal's units) that maps to the outermost codes.
    """
    scaled = (x.float() / max_val).clamp(-1.0, 1.0)
    companded = torch.sign(scaled) * torch.log1p(mu * scaled.abs()) / math.log1p(mu)
    return torch.floor((companded + 1.0) / 2.0 * mu + 0.5).long()


def mu_law_decode(codes: torch.Tensor, mu: int = 255, max_val: float = 10.0) -> torch.Tensor:
    """Map codes in [0, mu] back to float values in [-max_val, max_val]."""
    companded = codes.float() / mu * 2.0 - 1.0
    return torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu * max_val
