"""SpaceTimeGPT: a prediction sees every channel's past, which beats ChannelGPT where channels are coupled."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from brain_gen.config.schema import SamplingConfig
from brain_gen.dataset.session import SessionMeta, write_session
from brain_gen.models.space_time_gpt import SpaceTimeGPT
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config


def test_causal_in_time_and_mixing_across_channels():
    torch.manual_seed(0)
    model = SpaceTimeGPT(vocab_size=16, num_channels=3, d_model=16, n_layers=2, n_heads=2).eval()
    codes = torch.randint(0, 16, (2, 3, 10))
    changed = codes.clone()
    changed[:, 0, 5] = (changed[:, 0, 5] + 1) % 16
    moved = (model(changed) - model(codes)).abs().sum(dim=(0, 3))  # [C, T]
    assert moved[:, :5].sum() == 0  # nothing before the change
    assert (moved[:, 5] > 0).all()  # every channel's prediction at that step sees it


def test_forecast_with_the_cache_equals_recomputation_also_past_the_window():
    torch.manual_seed(1)
    model = SpaceTimeGPT(vocab_size=16, num_channels=3, d_model=16, n_layers=2, n_heads=2, max_position_embeddings=12)
    context = torch.randint(0, 16, (2, 3, 10))
    argmax = SamplingConfig(strategy="argmax")
    cached = model.forecast(context, 20, argmax)
    assert torch.equal(cached, model.forecast(context, 20, argmax, use_cache=False))
    model.eval()
    codes = context
    with torch.no_grad():
        for _ in range(2):  # inside the window, greedy recomputation over the whole sequence agrees too
            codes = torch.cat([codes, model(codes)[:, :, -1].argmax(dim=-1, keepdim=True)], dim=2)
    assert torch.equal(cached[:, :, :2], codes[:, :, 10:])


def coupled_dataset(root):
    """Two channels: a random signal, and the same signal one step later, scaled by 0.8, plus noise."""
    rng = np.random.default_rng(0)
    for index in range(8):
        source = rng.standard_normal(2001).astype(np.float32)
        copy = 0.8 * source[:-1] + 0.05 * rng.standard_normal(2000).astype(np.float32)
        meta = SessionMeta(50.0, ["A", "B"], [[0.0, 0.0], [1.0, 0.0]], subject=f"{index:02d}")
        write_session(root / f"sub-{index:02d}", [np.stack([source[1:], copy])], meta)
    return root


def held_out_nats_of_channel(experiment: ExperimentDL, channel: int) -> float:
    model = experiment.model.eval()
    dataset = experiment.datasets["val"]
    inputs = torch.stack([dataset[index][0] for index in range(len(dataset))])
    targets = torch.stack([dataset[index][1] for index in range(len(dataset))])
    with torch.no_grad():
        logits = model(inputs)[:, channel]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, channel].reshape(-1)))


def test_a_channel_that_copies_another_is_predicted_far_better_than_by_channel_gpt(tmp_path):
    data = coupled_dataset(tmp_path / "data")
    scores = {}
    for name in ("ChannelGPT", "SpaceTimeGPT"):
        config = tiny_config(
            tmp_path / name, data, model_name=name,
            trainer={"max_epochs": 15, "log_every_n_steps": 50},
            datasplitter={"val_ratio": 0.25, "test_ratio": 0.0, "split_strategy": "subject"},
            dataloader={"batch_size": 16},
        )
        config["model_config"] = {"vocab_size": 256, "num_channels": 2, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_position_embeddings": 64}
        config["eval_runner"] = {"enabled": False}
        config["seed"] = 3
        experiment = ExperimentDL(config)
        experiment.train()
        scores[name] = held_out_nats_of_channel(experiment, channel=1)
    assert scores["SpaceTimeGPT"] < scores["ChannelGPT"] - 1.0  # nats per code; about 2 when measured


def test_resize_context_keeps_the_weights_and_accepts_longer_windows():
    torch.manual_seed(2)
    model = SpaceTimeGPT(vocab_size=16, num_channels=3, d_model=16, n_layers=2, n_heads=2, max_position_embeddings=8).eval()
    codes = torch.randint(0, 16, (1, 3, 8))
    before = model(codes)
    model.resize_context(input_shape=[3, 20])
    assert model.max_position_embeddings == 20
    assert torch.allclose(model(codes), before)  # rotary positions: the first 8 steps read the same
    assert model(torch.randint(0, 16, (1, 3, 20))).shape == (1, 3, 20, 16)
