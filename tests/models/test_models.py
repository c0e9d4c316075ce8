"""ChannelGPT and the losses."""

from __future__ import annotations

import math

import pytest
import torch

from brain_gen.losses.next_step import MSE, CrossEntropy
from brain_gen.models.channel_gpt import ChannelGPT


def small_model(**overrides):
    options = dict(vocab_size=32, num_channels=3, d_model=16, n_layers=2, n_heads=2, max_position_embeddings=20)
    options.update(overrides)
    torch.manual_seed(0)
    return ChannelGPT(**options).eval()


def test_output_shape_is_batch_channels_time_vocab():
    codes = torch.randint(0, 32, (4, 3, 11))
    assert small_model()(codes).shape == (4, 3, 11, 32)


def test_predictions_never_see_the_future():
    model = small_model()
    codes = torch.randint(0, 32, (1, 3, 12))
    changed = codes.clone()
    changed[..., 8:] = (changed[..., 8:] + 5) % 32
    with torch.no_grad():
        before, after = model(codes), model(changed)
    assert torch.allclose(before[..., :8, :], after[..., :8, :], atol=1e-6)
    assert not torch.allclose(before[..., 8:, :], after[..., 8:, :])


def test_channels_are_told_apart_by_their_embedding():
    model = small_model()
    same = torch.full((1, 3, 5), 7)
    with torch.no_grad():
        logits = model(same)
    assert not torch.allclose(logits[0, 0], logits[0, 1])


def test_bad_geometry_is_reported():
    with pytest.raises(ValueError, match="heads of even size"):
        ChannelGPT(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="built for 3 channels"):
        small_model()(torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=20"):
        small_model()(torch.zeros(1, 3, 21, dtype=torch.long))


def test_cross_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.zeros(2, 3, 4, 10)
    targets = torch.randint(0, 10, (2, 3, 4))
    targets[0, 1] = -100
    loss = CrossEntropy()
    assert loss(logits, targets).item() == pytest.approx(math.log(10))
    perfect = torch.nn.functional.one_hot(targets.clamp(min=0), 10).float() * 50
    assert loss.metrics["accuracy"](perfect, targets).item() == 1.0


def test_accuracy_and_f1_of_permuted_logits_with_ties_match_torchmetrics_on_the_argmax():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    torch.manual_seed(0)
    stored = torch.randint(0, 3, (2, 3, 5, 7)).float()  # [B, C, V, T]: few values, many ties
    logits = stored.permute(0, 1, 3, 2)  # [B, C, T, V], a view that is not contiguous
    targets = torch.randint(0, 5, (2, 3, 7))
    targets[1, 2] = -100
    expected_preds = logits.contiguous().reshape(-1, 5).argmax(dim=-1)  # the first maximal class
    options = dict(num_classes=5, ignore_index=-100)
    loss = CrossEntropy()
    assert loss.metrics["accuracy"](logits, targets) == multiclass_accuracy(expected_preds, targets.reshape(-1), average="micro", **options)
    assert loss.metrics["f1"](logits, targets) == multiclass_f1_score(expected_preds, targets.reshape(-1), average="macro", **options)


def test_mse_skips_nan_targets():
    outputs = torch.zeros(2, 2, 3)
    targets = torch.full((2, 2, 3), 2.0)
    targets[:, 0] = float("nan")
    loss = MSE()
    assert loss(outputs, targets).item() == pytest.approx(4.0)
    assert loss.metrics["mae"](outputs, targets).item() == pytest.approx(2.0)


def test_token_corruption_applies_in_training_only():
    model = small_model(token_corruption_cfg={"p": 1.0})
    codes = torch.randint(0, 32, (2, 3, 10))
    assert torch.equal(model.corrupt(codes), codes)  # eval mode
    model.train()
    corrupted = model.corrupt(codes)
    assert corrupted.shape == codes.shape and corrupted.dtype == codes.dtype
    assert (corrupted != codes).float().mean() > 0.8 and corrupted.min() >= 0 and corrupted.max() < 32
    model.update_token_corruption_cfg({"enabled": False})
    assert torch.equal(model.corrupt(codes), codes)
    model.update_token_corruption_cfg(None)
    assert model.token_corruption.p == 1.0 and model.token_corruption.enabled


def test_token_corruption_settings_are_checked():
    with pytest.raises(ValueError, match="p must be a number in"):
        small_model(token_corruption_cfg={"p": 2.0})
    with pytest.raises(ValueError, match="mode 'mask' is not supported"):
        small_model(token_corruption_cfg={"mode": "mask"})
    with pytest.raises(ValueError, match="unknown token corruption key"):
        small_model(token_corruption_cfg={"prob": 0.1})


def test_resize_context_keeps_weights_and_accepts_longer_sequences():
    model = small_model()
    weights = {k: v.clone() for k, v in model.state_dict().items() if k != "_extra_state"}
    model.resize_context(input_shape=[3, 40], rope_theta=500.0)
    assert model.max_position_embeddings == 40 and model.transformer.rope_cos.shape == (40, 4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert model(torch.zeros(1, 3, 40, dtype=torch.long)).shape == (1, 3, 40, 32)
    with pytest.raises(ValueError, match="channel count cannot change"):
        model.resize_context(input_shape=[4, 40])
