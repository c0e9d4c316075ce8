"""Drawing the next code (or token) from logits while generating, and the mode generation runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from brain_gen.config.schema import SamplingConfig

# A temperature at or below this draws nothing: it is the temperature -> 0 limit, argmax.
# Dividing by anything smaller would overflow float32 logits into inf/nan.
ARGMAX_TEMPERATURE = 1e-5
# Slack when comparing cumulative probabilities with top_p, so that float32 rounding of a
# softmax (0.49999997 for 0.5) does not decide whether a code is kept.
TOP_P_TOLERANCE = 1e-6


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One code per row of ``logits`` ``[N, V]``, drawn as ``sampling`` says: int64 ``[N]``.

    argmax takes the most likely code. The drawing strategies first divide the logits by
    ``sampling.temperature`` (a temperature <= ``ARGMAX_TEMPERATURE`` is argmax), then
    roulette draws from the whole softmax, top_k among the ``top_k`` most likely codes
    (0: all), and top_p from the smallest set of most likely codes whose probability
    reaches ``top_p``, the code that crosses it included, renormalised.
    Every draw goes through ``generator`` (on the logits' device), so a seeded
    generator gives the same codes again. Computed in float32 whatever the logits' dtype.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits [N, vocab], got shape {tuple(logits.shape)}")
    logits = logits.float()
    if sampling.strategy == "argmax" or sampling.temperature <= ARGMAX_TEMPERATURE:
        return logits.argmax(dim=-1)
    scaled = logits / sampling.temperature
    if sampling.strategy == "top_k" and 0 < sampling.top_k < scaled.shape[-1]:
        best, codes = scaled.topk(sampling.top_k, dim=-1)
        drawn = torch.multinomial(best.softmax(dim=-1), 1, generator=generator)
        return codes.gather(-1, drawn).squeeze(-1)
    probabilities = scaled.softmax(dim=-1)
    if sampling.strategy == "top_p" and sampling.top_p < 1.0:
        sorted_probabilities, codes = probabilities.sort(dim=-1, descending=True)
        # A code is kept while the mass of the codes before it is still short of top_p:
        # that keeps the code which crosses top_p and nothing after it.
        mass_before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
        keep = mass_before < sampling.top_p - TOP_P_TOLERANCE
        keep[:, 0] = True  # the most likely code, however small top_p is
        kept = torch.where(keep, sorted_probabilities, 0.0)
        drawn = torch.multinomial(kept / kept.sum(dim=-1, keepdim=True), 1, generator=generator)
        return codes.gather(-1, drawn).squeeze(-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


@contextmanager
def generating(module: nn.Module) -> Iterator[None]:
    """Run the body in eval mode without autograd, then give ``module`` back its training flag."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


def check_code_context(model: nn.Module, context: torch.Tensor) -> None:
    """Refuse a forecast context that is not int64 codes ``[batch, model.num_channels, time >= 1]``.

    A model whose ``num_channels`` is None takes any number of channels (each on its own).
    """
    expected = model.num_channels
    if context.dim() != 3 or (expected is not None and context.shape[1] != expected) or context.is_floating_point() or context.shape[2] < 1:
        channels = "channels" if expected is None else expected
        raise ValueError(
            f"{type(model).__name__}.forecast expects int64 codes [batch, {channels}, time >= 1], "
            f"got {context.dtype} {tuple(context.shape)}"
        )


def sample_per_channel(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One code per channel of logits ``[B, C, V]``, drawn as ``sample_next`` draws: int64 ``[B, C]``."""
    batch, channels, _ = logits.shape
    return sample_next(logits.reshape(batch * channels, -1), sampling, generator).view(batch, channels)


def forecast_by_recomputing(
    model: nn.Module,
    context: torch.Tensor,
    steps: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Continue int64 codes ``context`` ``[B, C, T]`` by ``steps`` codes, running ``model`` anew for each: int64 ``[B, C, steps]``.

    Each step runs ``model`` (codes ``[B, C, t]`` to logits ``[B, C, t, V]``) over the
    last ``window`` codes so far (all of them when None) and draws every channel's next
    code from the last position. Call it inside ``generating(model)``.
    """
    batch, channels, time = context.shape
    codes = torch.empty(batch, channels, time + steps, dtype=torch.long, device=context.device)
    codes[:, :, :time] = context
    for step in range(time, time + steps):
        start = 0 if window is None else max(0, step - window)
        codes[:, :, step] = sample_per_channel(model(codes[:, :, start:step])[:, :, -1], sampling, generator)
    return codes[:, :, time:].clone()
