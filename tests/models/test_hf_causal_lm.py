"""HFCausalLM: transformers backbones from a config mapping or a local folder, trained, resumed and generating."""

from __future__ import annotations

import pytest
import torch

from brain_gen.cli import main
from brain_gen.config.schema import SamplingConfig
from brain_gen.models.hf_causal_lm import HFCausalLM
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config, write_config

BACKBONES = {
    "llama": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
}
QUICK = {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1}


def hf_config(tmp_path, dataset, model_type: str, **trainer) -> dict:
    config = tiny_config(tmp_path / "runs", dataset, trainer={**QUICK, **trainer}, model_name="HFCausalLM")
    config["model_config"] = {"model_type": model_type, "num_channels": 4, "vocab_size": 256, **BACKBONES[model_type]}
    config["eval_runner"] = {"enabled": False}
    return config


@pytest.mark.parametrize("model_type", sorted(BACKBONES))
def test_a_backbone_trains_resumes_and_generates_as_greedy_recomputation_does(tmp_path, tiny_dataset, model_type):
    config = hf_config(tmp_path, tiny_dataset, model_type)
    first = ExperimentDL(config)
    first.train()
    assert first.trainer.global_step == 3 and torch.isfinite(first.trainer.callback_metrics["val/loss"])
    resumed = ExperimentDL({**config, "resume_from": "last", "trainer": {**config["trainer"], "max_epochs": 2}})
    resumed.train()
    assert resumed.trainer.global_step == 6
    model = resumed.model.eval()
    context = torch.randint(0, 256, (2, 4, 9))
    generated = model.forecast(context, 10, SamplingConfig(strategy="argmax"))
    codes = context
    with torch.no_grad():
        for _ in range(10):
            codes = torch.cat([codes, model(codes)[:, :, -1].argmax(dim=-1, keepdim=True)], dim=2)
    assert torch.equal(generated, codes[:, :, 9:])


def test_a_local_folder_gives_its_weights(tmp_path):
    import transformers

    config = transformers.AutoConfig.for_model("llama", vocab_size=32, bos_token_id=None, eos_token_id=None, **BACKBONES["llama"])
    torch.manual_seed(0)
    saved = transformers.AutoModelForCausalLM.from_config(config)
    saved.save_pretrained(tmp_path / "backbone")
    model = HFCausalLM(pretrained_path=str(tmp_path / "backbone"), num_channels=2)
    for name, value in saved.state_dict().items():
        assert torch.equal(model.lm.state_dict()[name], value), name
    assert model.vocab_size == 32 and model(torch.randint(0, 32, (1, 2, 5))).shape == (1, 2, 5, 32)


def test_a_wrong_backbone_is_one_line_naming_model_config(tmp_path, tiny_dataset, capsys):
    config = hf_config(tmp_path, tiny_dataset, "llama")
    config["model_config"]["model_type"] = "not-a-model"
    assert main(["validate", str(write_config(tmp_path, config))]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("brain-gen: error: model_config:") and "not-a-model" in line


def test_a_backbone_trains_on_bpe_text_and_continues_text_as_recomputation_does(tmp_path, tiny_dataset, text_tokenizer):
    from tests.conftest import text_changes, with_changes

    config = with_changes(tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK), **text_changes(text_tokenizer))
    config["model_name"] = "HFCausalLM"
    config["model_config"] = {"model_type": "llama", "num_channels": 4, "vocab_size": 400, **BACKBONES["llama"], "max_position_embeddings": 512}
    config["eval_runner"] = {"enabled": False}
    experiment = ExperimentDL(config)
    experiment.train()
    assert experiment.trainer.global_step == 3 and torch.isfinite(experiment.trainer.callback_metrics["val/loss"])
    model = experiment.model
    ids = torch.randint(0, 400, (2, 12))
    context = (ids, torch.ones_like(ids), torch.randint(-1, 4, (2, 12)))
    argmax = SamplingConfig(strategy="argmax")
    next_channel = lambda history: history[:, -1] % 4  # any rule the caller has for the newest token's channel
    cached = model.forecast(context, 8, argmax, next_channel_ids=next_channel)
    assert cached.shape == (2, 8)
    assert torch.equal(cached, model.forecast(context, 8, argmax, use_cache=False, next_channel_ids=next_channel))
