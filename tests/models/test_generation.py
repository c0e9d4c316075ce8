"""Generation: sampling strategies, and forecasts that match their slow references code for code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.channel_gpt import ChannelGPT
from brain_gen.models.sampling import sample_next
from brain_gen.models.text_gpt import TextGPT
from brain_gen.models.wavenet import WaveNet

ARGMAX = SamplingConfig(strategy="argmax")
VOCAB = 32


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Larger random weights and an untied head, so argmax rollouts wander instead of repeating one code.

    A freshly initialised model mostly predicts its input code back (tied embeddings,
    small weights): a rollout of one repeated code would hide a wrong position or a
    stale cache entry.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
        transformer = getattr(model, "transformer", None)
        if transformer is not None:
            transformer.head.weight = nn.Parameter(torch.randn(transformer.head.weight.shape, generator=generator))
    return model.eval()


def channel_gpt(max_position_embeddings: int = 16) -> ChannelGPT:
    torch.manual_seed(0)
    model = ChannelGPT(VOCAB, num_channels=3, d_model=32, n_layers=2, n_heads=4, max_position_embeddings=max_position_embeddings)
    return lively(model)


def codes(batch: int, channels: int, time: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, channels, time), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- sample_next -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["roulette", "top_k", "top_p"])
@pytest.mark.parametrize("temperature", [0.0, 1e-8])
def test_temperature_near_zero_draws_the_argmax(strategy, temperature):
    logits = torch.randn(64, 10, generator=seeded(0))
    sampling = SamplingConfig(strategy=strategy, temperature=temperature, top_k=3, top_p=0.9)
    assert torch.equal(sample_next(logits, sampling, seeded(1)), logits.argmax(dim=-1))


@pytest.mark.parametrize("strategy", ["roulette", "top_p"])
def test_same_seed_repeats_the_draws_and_another_seed_does_not(strategy):
    logits = torch.zeros(256, 16)  # uniform: every draw is a real choice
    sampling = SamplingConfig(strategy=strategy, top_p=0.9)
    first = sample_next(logits, sampling, seeded(7))
    assert torch.equal(first, sample_next(logits, sampling, seeded(7)))
    assert not torch.equal(first, sample_next(logits, sampling, seeded(8)))


def test_top_p_keeps_the_code_that_crosses_p():
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probabilities.log().repeat(4000, 1)
    # 0.5 alone falls short of 0.6, so the code that crosses it (0.3) is kept too; 0.15 is not.
    drawn = sample_next(logits, SamplingConfig(strategy="top_p", top_p=0.6), seeded(0))
    assert set(drawn.tolist()) == {0, 1}
    share_of_first = (drawn == 0).float().mean().item()
    assert share_of_first == pytest.approx(0.5 / 0.8, abs=0.03)  # renormalised over the two kept
    # 0.5 reaches 0.5 on its own: nothing else is needed.
    drawn = sample_next(logits, SamplingConfig(strategy="top_p", top_p=0.5), seeded(0))
    assert set(drawn.tolist()) == {0}
    drawn = sample_next(logits, SamplingConfig(strategy="top_p", top_p=1.0), seeded(0))
    assert set(drawn.tolist()) == {0, 1, 2, 3}


def test_top_k_draws_only_among_the_k_best():
    logits = torch.randn(2000, 12, generator=seeded(0))
    drawn = sample_next(logits, SamplingConfig(strategy="top_k", top_k=3), seeded(1))
    best_three = logits.topk(3, dim=-1).indices
    assert (best_three == drawn[:, None]).any(dim=-1).all()
    rank = (best_three == drawn[:, None]).float().argmax(dim=-1)
    assert set(rank.tolist()) == {0, 1, 2}


def test_draws_follow_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(20000, 1)
    drawn = sample_next(logits, SamplingConfig(strategy="roulette", temperature=2.0), seeded(0))
    expected = (logits[0] / 2.0).softmax(dim=-1)
    observed = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert torch.allclose(observed, expected, atol=0.015)


# --- ChannelGPT --------------------------------------------------------------------------


@pytest.mark.parametrize("context_steps", [3, 40])
def test_channel_gpt_cached_rollout_matches_recompute_across_window_slides(context_steps):
    model = channel_gpt(max_position_embeddings=16)
    context = codes(2, 3, context_steps)
    # 40 steps with W = 16 slide the window (to its last 8 codes) at least three times.
    cached = model.forecast(context, 40, ARGMAX)
    recomputed = model.forecast(context, 40, ARGMAX, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert len(set(cached.flatten().tolist())) > 3  # the rollout does move


def test_channel_gpt_window_policy_is_the_documented_one():
    """Written out with forward alone: the last W codes, then the last W // 2 whenever the window overflows."""
    window_limit, steps = 16, 30
    model = channel_gpt(max_position_embeddings=window_limit)
    context = codes(1, 3, 25)
    window, expected = context[:, :, -window_limit:], []
    with torch.no_grad():
        for _ in range(steps):
            expected.append(model(window)[:, :, -1].argmax(dim=-1))
            window = torch.cat((window, expected[-1][:, :, None]), dim=2)
            if window.shape[2] > window_limit:
                window = window[:, :, -(window_limit // 2) :]
    assert torch.equal(model.forecast(context, steps, ARGMAX), torch.stack(expected, dim=2))


def test_channel_gpt_forecast_shapes_and_training_flag():
    model = channel_gpt()
    model.train()
    out = model.forecast(codes(2, 3, 5), 7, SamplingConfig(strategy="top_k", top_k=4), seeded(0))
    assert out.shape == (2, 3, 7) and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    assert model.training
    model.eval()
    model.forecast(codes(1, 3, 1), 2)
    assert not model.training
    assert model.forecast(codes(1, 3, 4), 0).shape == (1, 3, 0)


def test_channel_gpt_rollouts_repeat_with_the_seed():
    model = channel_gpt()
    context = codes(2, 3, 6)
    sampling = SamplingConfig(strategy="top_p", top_p=0.95, temperature=1.5)
    first = model.forecast(context, 24, sampling, seeded(3))
    assert torch.equal(first, model.forecast(context, 24, sampling, seeded(3)))
    assert not torch.equal(first, model.forecast(context, 24, sampling, seeded(4)))
    # The cache changes nothing about what is drawn either.
    assert torch.equal(first, model.forecast(context, 24, sampling, seeded(3), use_cache=False))


def test_channel_gpt_forecast_rejects_a_wrong_context():
    model = channel_gpt()
    with pytest.raises(ValueError, match="3"):
        model.forecast(codes(1, 2, 5), 3)
    with pytest.raises(ValueError, match="int64"):
        model.forecast(codes(1, 3, 5).float(), 3)


# --- WaveNet -----------------------------------------------------------------------------


@pytest.mark.parametrize("context_steps", [1, 40])
def test_wavenet_incremental_rollout_matches_recompute(context_steps):
    torch.manual_seed(0)
    model = WaveNet(VOCAB, 3, embedding_dim=8, residual_channels=16, skip_channels=16, n_layers=6, dilation_cycle=3, kernel_size=3)
    lively(model)
    context = codes(2, 3, context_steps)
    steps = 50  # well past the receptive field of 29 steps
    cached = model.forecast(context, steps, ARGMAX)
    assert cached.shape == (2, 3, steps) and cached.dtype == torch.int64
    assert torch.equal(cached, model.forecast(context, steps, ARGMAX, use_cache=False))
    assert len(set(cached.flatten().tolist())) > 3


def test_wavenet_forecast_keeps_the_training_flag():
    model = WaveNet(VOCAB, 2, embedding_dim=4, residual_channels=8, skip_channels=8, n_layers=2, dropout=0.5)
    model.train()
    out = model.forecast(codes(1, 2, 4), 5, SamplingConfig(strategy="roulette"), seeded(0))
    assert out.shape == (1, 2, 5) and model.training


# --- TextGPT -----------------------------------------------------------------------------


def text_gpt() -> TextGPT:
    torch.manual_seed(0)
    return lively(TextGPT(VOCAB, num_channels=4, d_model=32, n_layers=2, n_heads=4, max_position_embeddings=12))


def text_context(batch: int, time: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids = torch.randint(0, VOCAB, (batch, time), generator=seeded(2))
    channel_ids = (torch.arange(time) // 3 % 5 - 1).repeat(batch, 1)  # -1 (separator), 0, 1, 2, 3, ...
    return input_ids, torch.ones_like(input_ids), channel_ids


def test_text_gpt_cached_rollout_matches_recompute_with_channel_ids():
    model = text_gpt()
    context = text_context(2, 15)  # longer than W = 12
    seen_lengths = []

    def next_channel_ids(token_ids: torch.Tensor) -> torch.Tensor:
        seen_lengths.append(token_ids.shape[1])
        return token_ids[:, -1] % 5 - 1  # a channel that depends on the text, -1 included

    cached = model.forecast(context, 30, ARGMAX, next_channel_ids=next_channel_ids)
    cached_lengths, seen_lengths[:] = list(seen_lengths), []
    recomputed = model.forecast(context, 30, ARGMAX, use_cache=False, next_channel_ids=next_channel_ids)
    assert cached.shape == (2, 30) and cached.dtype == torch.int64
    assert torch.equal(cached, recomputed)
    # Asked once per generated token that is fed back: the context, then one more token each time.
    assert cached_lengths == seen_lengths == list(range(16, 45))
    assert len(set(cached.flatten().tolist())) > 3


def test_text_gpt_without_a_channel_callable_feeds_tokens_back_on_channel_minus_one():
    model = text_gpt()
    context = text_context(1, 5)
    default = model.forecast(context, 10, ARGMAX)
    separators = model.forecast(context, 10, ARGMAX, next_channel_ids=lambda ids: torch.full((ids.shape[0],), -1))
    assert torch.equal(default, separators)


def test_text_gpt_forecast_refuses_padding_and_keeps_the_training_flag():
    model = text_gpt().train()
    input_ids, attention_mask, channel_ids = text_context(2, 6)
    attention_mask[1, -1] = 0
    with pytest.raises(ValueError, match="unpadded"):
        model.forecast((input_ids, attention_mask, channel_ids), 3)
    out = model.forecast(text_context(2, 6), 4, SamplingConfig(), seeded(0))
    assert out.shape == (2, 4) and model.training

