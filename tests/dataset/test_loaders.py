"""The dataloader section: loader classes, common keys, MixupDataLoader, TextDataLoader and BPE text."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import SequentialSampler

from brain_gen.cli import main
from brain_gen.config.errors import ConfigError, DataError
from brain_gen.dataset.mixup import MixupCollate, MixupDataLoader, mix_pairs, stack_batch
from brain_gen.dataset.mulaw import mu_law_encode
from brain_gen.dataset.order import TrainingOrder
from brain_gen.dataset.text import CODE_CHAR_OFFSET, ChannelGroups, TextCollate
from brain_gen.training.train import ExperimentDL
from tests.conftest import text_changes, tiny_config
from tests.conftest import scalars


def test_loader_classes_are_importable_from_train_and_are_dataloaders():
    from brain_gen.training.train import DataLoader, MixupDataLoader, TextDataLoader

    assert issubclass(MixupDataLoader, DataLoader) and issubclass(TextDataLoader, DataLoader)
    loader = MixupDataLoader([(torch.ones(2, 3), torch.tensor(1))] * 4, batch_size=2, mixup_alpha=0.4, num_classes=3)
    inputs, targets = next(iter(loader))
    assert inputs.shape == (2, 2, 3) and targets.shape == (2, 3)


def test_train_shuffles_and_evaluation_keeps_order_and_every_window(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, dataloader={"batch_size": 7, "drop_last": True, "prefetch_factor": None})
    experiment = ExperimentDL(config)
    train, val, test = (experiment.dataloader(name) for name in ("train", "val", "test"))
    # Training goes through the seeded order, a permutation of every window.
    assert isinstance(train.sampler, TrainingOrder) and train.drop_last
    assert sorted(train.sampler) == list(range(len(train.dataset)))
    for loader in (val, test):
        assert isinstance(loader.sampler, SequentialSampler) and not loader.drop_last
        assert sum(len(batch[1]) for batch in loader) == len(loader.dataset)


@pytest.mark.parametrize("loader_class", ["DataLoader", "MixupDataLoader", "TextDataLoader"])
def test_batch_size_lives_in_one_attribute_of_the_data_module(tmp_path, tiny_dataset, text_tokenizer, loader_class):
    changes = {"dataloader_class": loader_class}
    if loader_class == "MixupDataLoader":
        changes["dataloader"] = {"mixup_alpha": 0.2}
        changes["datasplitter"] = {"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}}
        changes["loss_name"] = "MSE"
        changes["model_name"] = "tests.user_classes:LastValueModel"
    if loader_class == "TextDataLoader":
        changes.update(text_changes(text_tokenizer))
    config = tiny_config(tmp_path / "runs", tiny_dataset, **changes)
    if loader_class == "MixupDataLoader":
        config["model_config"] = {"num_channels": 4}
    experiment = ExperimentDL(config)
    experiment.build()
    module = experiment.datamodule
    assert module.batch_size == 8
    module.batch_size = 5
    assert {module.make_loader(split).batch_size for split in ("train", "val", "test")} == {5}


# --------------------------------------------------------------------------- MixupDataLoader


def constant_samples(n=6, classes=None):
    """Sample i: inputs all equal to i; targets 10*i (float) or class i % classes."""
    samples = []
    for i in range(n):
        target = torch.tensor(i % classes) if classes else torch.full((2,), 10.0 * i)
        samples.append((torch.full((2, 3), float(i)), target))
    return samples


def test_mixup_blends_pairs_with_one_folded_weight_for_inputs_and_targets():
    torch.manual_seed(0)
    collate = MixupCollate(mixup_alpha=0.4)
    weights = []
    for _ in range(20):
        inputs, targets = collate(constant_samples())
        values = inputs[:, 0, 0]
        assert torch.allclose(targets[:, 0], 10 * values)
        # Pairs (i, j): out_i + out_j = i + j, and out_i = lam*i + (1-lam)*j with lam >= 0.5.
        partner = {}
        for i in range(6):
            for j in range(6):
                if i != j and abs(values[i] + values[j] - (i + j)) < 1e-5 and j not in partner and i not in partner:
                    partner[i], partner[j] = j, i
        i, j = next(iter(partner.items()))
        lam = (values[i] - j) / (i - j)
        assert 0.5 <= lam <= 1.0
        weights.append(float(lam))
    assert len(set(round(w, 4) for w in weights)) > 10


@pytest.mark.parametrize("num_workers", [0, 1])
def test_large_mixed_batches_hold_their_values_in_and_out_of_workers(num_workers):
    # 8 samples of 1 MB: the batch is large enough for the huge-page allocation in the main
    # process, and comes through shared memory from a worker.
    samples = [(torch.full((64, 4096), float(i)), torch.full((64, 4096), 10.0 * i)) for i in range(8)]
    loader = MixupDataLoader(samples, batch_size=8, mixup_alpha=0.4, num_workers=num_workers)
    torch.manual_seed(3)
    batches = [next(iter(loader)) for _ in range(3)]
    gc.collect()
    _ = [torch.ones(64, 4096) for _ in range(32)]  # reuse whatever memory was freed
    for inputs, targets in batches:
        assert inputs.shape == (8, 64, 4096)
        first = inputs[:, 0, 0]
        # Every sample stays constant, keeps the larger share of one sample, pairs sum to i + j.
        assert torch.equal(inputs, first[:, None, None].expand_as(inputs))
        assert torch.allclose(targets, 10 * inputs)
        assert torch.allclose(first.sum(), torch.tensor(28.0))
    assert any(not torch.equal(inputs[:, 0, 0], torch.arange(8.0)) for inputs, _ in batches)


def mixed_values(collate: MixupCollate, batches: int = 5) -> list[list[float]]:
    return [collate(constant_samples())[0][:, 0, 0].tolist() for _ in range(batches)]


def test_mixup_draws_are_the_same_for_a_seed_and_rank_and_differ_between_ranks():
    first = mixed_values(MixupCollate(mixup_alpha=0.4, seed=7, rank=0))
    assert mixed_values(MixupCollate(mixup_alpha=0.4, seed=7, rank=0)) == first
    assert mixed_values(MixupCollate(mixup_alpha=0.4, seed=7, rank=1)) != first
    assert mixed_values(MixupCollate(mixup_alpha=0.4, seed=8, rank=0)) != first
    # By default the seed is torch's, which seed_everything sets.
    torch.manual_seed(7)
    assert mixed_values(MixupCollate(mixup_alpha=0.4, rank=0)) == first


def test_loader_workers_mix_differently_and_a_seeded_loader_mixes_the_same_way_again():
    samples = constant_samples() * 2  # two batches of the same six samples

    def epoch() -> list[list[float]]:
        loader = MixupDataLoader(samples, batch_size=6, mixup_alpha=0.4, num_workers=2)
        return [inputs[:, 0, 0].tolist() for inputs, _ in loader]

    torch.manual_seed(3)
    first = epoch()
    torch.manual_seed(3)
    assert epoch() == first
    # The two workers made one batch each, from the same six samples: their blends differ.
    assert first[0] != first[1]


def _mixup_draws_of_rank(rank: int, folder: str) -> None:
    """One process of a two-process gloo group: its MixUp collate reads its rank and records its blends."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2)
    try:
        torch.manual_seed(11)  # the same seed on both ranks, as seed_everything gives
        Path(folder, f"rank{rank}.json").write_text(json.dumps(mixed_values(MixupCollate(mixup_alpha=0.4))))
    finally:
        torch.distributed.destroy_process_group()


def test_each_rank_of_a_process_group_mixes_differently_from_the_same_seed(tmp_path):
    torch.multiprocessing.start_processes(_mixup_draws_of_rank, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    draws = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert draws[0] != draws[1]
    assert draws[0] == mixed_values(MixupCollate(mixup_alpha=0.4, seed=11, rank=0))
    assert draws[1] == mixed_values(MixupCollate(mixup_alpha=0.4, seed=11, rank=1))


def test_mix_pairs_and_stack_batch_match_their_closed_forms_on_large_tensors():
    samples = [torch.randn(128, 4096) for _ in range(4)]
    mixed = mix_pairs(samples, [(0, 3), (1, 2)], 0.7)
    assert torch.allclose(mixed[0], 0.7 * samples[0] + 0.3 * samples[3], atol=1e-6)
    assert torch.allclose(mixed[3], 0.7 * samples[3] + 0.3 * samples[0], atol=1e-6)
    assert torch.allclose(mixed[2], 0.7 * samples[2] + 0.3 * samples[1], atol=1e-6)
    assert torch.equal(stack_batch(samples), torch.stack(samples))
    assert torch.equal(stack_batch([s.double() for s in samples]), torch.stack(samples).double())


def test_mixup_probability_and_alpha_zero():
    torch.manual_seed(1)
    never = MixupCollate(mixup_alpha=0.0)
    assert torch.equal(never(constant_samples())[0][:, 0, 0], torch.arange(6.0))
    sometimes = MixupCollate(mixup_alpha=1.0, mixup_prob=0.5)
    mixed = sum(not torch.equal(sometimes(constant_samples())[0][:, 0, 0], torch.arange(6.0)) for _ in range(300))
    assert 110 < mixed < 190


def test_only_the_first_floating_input_is_mixed():
    torch.manual_seed(2)
    samples = [((torch.full((2, 3), float(i)), torch.full((2, 2), 100.0 + i), torch.tensor([i, i])), torch.full((2,), 1.0 * i)) for i in range(4)]
    (signal, positions, types), _ = MixupCollate(mixup_alpha=1.0)(samples)
    assert not torch.equal(signal[:, 0, 0], torch.arange(4.0))
    assert torch.equal(positions[:, 0, 0], 100.0 + torch.arange(4.0))
    assert torch.equal(types[:, 0], torch.arange(4))


def test_integer_targets_become_blended_one_hot_probabilities():
    torch.manual_seed(3)
    inputs, targets = MixupCollate(mixup_alpha=0.5, num_classes=6)(constant_samples(classes=6))
    assert targets.shape == (6, 6) and torch.allclose(targets.sum(dim=1), torch.ones(6))
    for row, value in zip(targets, inputs[:, 0, 0]):
        nonzero = torch.nonzero(row).flatten().tolist()
        # The row's weights sit on the two classes whose blend gave this input.
        assert torch.isclose((row * torch.arange(6.0)).sum(), value)
        assert len(nonzero) in (1, 2) and row.max() >= 0.5


def test_integer_targets_without_num_classes_name_the_key():
    with pytest.raises(ConfigError, match="dataloader.num_classes"):
        MixupCollate(mixup_alpha=0.5)(constant_samples(classes=3))


def test_quantize_codes_mixed_inputs_and_evaluation_only_quantizes():
    samples = [(torch.full((2, 3), 0.5 * i), torch.tensor(i % 2)) for i in range(4)]
    torch.manual_seed(4)
    mixed_floats, _ = MixupCollate(mixup_alpha=1.0, num_classes=2)(samples)
    torch.manual_seed(4)  # the same draws: the same pairs and weight
    train_inputs, _ = MixupCollate(mixup_alpha=1.0, num_classes=2, quantize=True, mu=15, max_val=2.0)(samples)
    assert train_inputs.dtype == torch.int64 and torch.equal(train_inputs, mu_law_encode(mixed_floats, 15, 2.0))
    assert not torch.equal(mixed_floats[:, 0, 0], 0.5 * torch.arange(4.0))
    eval_inputs, eval_targets = MixupCollate(mixup_alpha=1.0, num_classes=2, quantize=True, mu=15, max_val=2.0, mix=False)(samples)
    expected = mu_law_encode(torch.stack([s[0] for s in samples]), 15, 2.0)
    assert torch.equal(eval_inputs, expected) and torch.equal(eval_targets, torch.tensor([0, 1, 0, 1]))


def mixup_config(tmp_path, dataset, **dataloader):
    return tiny_config(
        tmp_path / "runs",
        dataset,
        dataloader_class="MixupDataLoader",
        dataloader={"mixup_alpha": 0.4, "num_classes": 256, "quantize": True, "mu": 255, "max_val": 4.0, **dataloader},
        datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {"target": "codes", "mu": 255, "max_val": 4.0}},
        trainer={"max_epochs": 2, "limit_train_batches": 6},
    )


def test_mixup_with_quantize_trains_end_to_end_from_yaml(tmp_path, tiny_dataset, capsys):
    path = tmp_path / "mixup.yaml"
    path.write_text(yaml.safe_dump(mixup_config(tmp_path, tiny_dataset, num_workers=1)))
    assert main(["train", str(path)]) == 0
    logged = scalars(tmp_path / "runs" / "logs" / "version_0")
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(logged)
    val_loss = [value for _, value in logged["val/loss"]]
    assert val_loss[1] < val_loss[0] < np.log(256) + 0.5


def test_experiment_mixes_training_batches_only(tmp_path, tiny_dataset):
    experiment = ExperimentDL(mixup_config(tmp_path, tiny_dataset, pin_memory=True))
    train, val = experiment.dataloader("train"), experiment.dataloader("val")
    assert train.mixup.mix and not val.mixup.mix and train.pin_memory
    assert next(iter(train))[1].dtype == torch.float32  # soft targets
    assert next(iter(val))[1].dtype == torch.int64


def test_import_path_loader_classes_get_their_extras(tmp_path, tiny_dataset):
    config = mixup_config(tmp_path, tiny_dataset)
    config["dataloader_class"] = "brain_gen.dataset.mixup:MixupDataLoader"
    experiment = ExperimentDL(config)
    assert experiment.dataloader("train").mixup.options.mixup_alpha == 0.4 and not experiment.dataloader("val").mixup.mix
    # The run's resolved config keeps the extras written for a class given by import path,
    # so the evaluation process and a resume build the same loader.
    resolved = experiment.config.to_dict()["dataloader"]
    assert resolved["mixup_alpha"] == 0.4 and "tokenizer_path" not in resolved
    assert ExperimentDL(experiment.config.to_dict()).dataloader("train").mixup.options == experiment.dataloader("train").mixup.options


def test_mixup_options_are_typed_with_their_defaults_in_one_place():
    from pydantic import ValidationError

    from brain_gen.config.schema import DataLoaderConfig, MixupOptions

    assert MixupCollate().options == MixupOptions() == DataLoaderConfig().options("MixupDataLoader")
    assert MixupCollate(mixup_alpha=0.4).options.mixup_alpha == 0.4
    assert MixupDataLoader([], mixup_alpha=0.4, batch_size=2).mixup.options == MixupOptions(mixup_alpha=0.4)
    with pytest.raises(ValidationError, match="mixup_alpha"):
        MixupCollate(mixup_alpha=-1.0)
    with pytest.raises(TypeError, match="not both"):
        MixupCollate(MixupOptions(), mixup_alpha=0.4)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"num_classes": None}, "dataloader.num_classes: the targets are integer classes"),
        ({"num_classes": 100}, "dataloader.num_classes: 100, but the targets have 256 classes"),
        ({"max_val": 8.0}, "dataloader.max_val: 8.0, but the dataset codes its targets with max_val=4.0"),
        ("integer inputs", "datasplitter.dataset_class: MixupDataLoader blends floating-point inputs, but the dataset gives torch.int64 inputs"),
    ],
)
def test_mixup_configuration_mistakes_exit_2(tmp_path, tiny_dataset, capsys, changes, expected):
    config = mixup_config(tmp_path, tiny_dataset)
    if changes == "integer inputs":
        config["datasplitter"] = {**config["datasplitter"], "dataset_class": "ChunkDataset", "dataset_kwargs": {"max_val": 4.0}}
    else:
        config["dataloader"].update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


# --------------------------------------------------------------------------- text


def test_bpe_dataset_groups_have_one_string_length_per_group(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, datasplitter={"dataset_class": "BPEDataset", "dataset_kwargs": {"max_val": 4.0, "group_size": 7}})
    experiment = ExperimentDL(config)
    experiment.build_datasets()
    dataset = experiment.datasets["train"]
    sample = dataset[0]
    assert isinstance(sample, ChannelGroups) and sample.channels == [0, 1, 2, 3]
    assert len(sample) == -(-50 // 7)
    for group in sample:
        assert len(group) == 4 and len({len(word) for word in group}) == 1
    window, _ = dataset.read_window(0)
    codes = mu_law_encode(torch.from_numpy(window), 255, 4.0)
    channel_two = "".join(group[2] for group in sample)
    assert [ord(char) - CODE_CHAR_OFFSET for char in channel_two] == codes[2].tolist()


def test_tokenizer_text_writes_a_folder_transformers_can_load(text_tokenizer, capsys, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    folder = text_tokenizer / "tokenizer"
    assert {p.name for p in folder.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(str(folder))
    text = "[BOS] " + chr(CODE_CHAR_OFFSET + 128) * 5 + " [SEP] " + chr(CODE_CHAR_OFFSET + 130) * 5
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    assert theirs.pad_token == "[PAD]" and theirs.sep_token == "[SEP]" and theirs.bos_token == "[BOS]"
    assert 300 < ours.get_vocab_size() <= 400

    # A second run never overwrites the first.
    config_path = tmp_path / "text.yaml"
    assert main(["tokenizer-text", str(config_path), "--out", str(text_tokenizer)]) == 2
    assert "already exists" in capsys.readouterr().err


def reference_channels(collate: TextCollate, sample, ids_row):
    """Channel of each token by brute force: walk the text word by word."""
    text, _, _ = collate.render(sample)
    encoding = collate.tokenizer.encode(text, add_special_tokens=False)
    owners = []
    words = text.split(" ")
    channel_of_word = []
    for group in sample:
        for position, _ in enumerate(group):
            channel_of_word.append(sample.channels[position])
    word_iter = iter(channel_of_word)
    spans, cursor = [], 0
    for word in words:
        owner = -1 if word in ("[SEP]", "[BOS]") else next(word_iter)
        spans.append((cursor, cursor + len(word), owner))
        cursor += len(word) + 1
    for start, _ in encoding.offsets:
        owners.append(next(owner for a, b, owner in spans if a <= start < b))
    return encoding.ids, owners


@pytest.mark.parametrize("use_separator", [True, False])
def test_text_batches_carry_ids_mask_channels_and_shifted_targets(tmp_path, tiny_dataset, text_tokenizer, use_separator):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer, use_separator=use_separator))
    experiment = ExperimentDL(config)
    loader = experiment.dataloader("val")
    samples = [loader.dataset[i] for i in range(3)]
    samples[1] = ChannelGroups(samples[1][:4], samples[1].channels)  # a shorter sample forces padding
    (ids, mask, channels), targets = loader.collate_fn(samples)
    collate = loader.collate_fn
    special = {collate.tokenizer.token_to_id(t) for t in ("[SEP]", "[BOS]")}
    pad = collate.tokenizer.token_to_id("[PAD]")
    for row in range(3):
        expected_ids, expected_owners = reference_channels(collate, samples[row], ids[row])
        n = len(expected_ids)
        m = min(n, ids.shape[1])  # real input tokens: all of them, or all but the last for the longest row
        assert ids[row, :m].tolist() == expected_ids[:m]
        assert channels[row, :m].tolist() == expected_owners[:m]
        assert targets[row, : n - 1].tolist() == expected_ids[1:]
        assert (targets[row, n - 1 :] == -100).all()
        assert (mask[row, :m] == 1).all() and (mask[row, m:] == 0).all()
        assert (ids[row, m:] == pad).all() and (channels[row, m:] == -1).all()
    assert (mask == 0).any(), "the shorter sample should be padded"
    has_special = bool(set(ids.flatten().tolist()) & special)
    assert has_special == use_separator


def test_max_length_truncates_inputs(tmp_path, tiny_dataset, text_tokenizer):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer, max_length=16))
    (ids, mask, channels), targets = next(iter(ExperimentDL(config).dataloader("train")))
    assert ids.shape[1] == 16 and targets.shape == ids.shape and mask.shape == channels.shape == ids.shape


def test_missing_tokenizer_is_a_config_error(capsys, tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(tmp_path / "nowhere"))
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    assert f"dataloader.tokenizer_path: folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    config["dataloader"]["tokenizer_path"] = str(tmp_path / "empty")
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    assert "tokenizer/tokenizer.json not found" in capsys.readouterr().err


def test_text_gpt_trains_end_to_end_from_yaml(tmp_path, tiny_dataset, text_tokenizer, capsys):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer))
    config["trainer"].update(max_epochs=2, limit_train_batches=5)
    path = tmp_path / "text-train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    logged = scalars(tmp_path / "runs" / "logs" / "version_0")
    val_loss = [value for _, value in logged["val/loss"]]
    assert len(val_loss) == 2 and val_loss[1] < val_loss[0]
    saved = json.loads(json.dumps(yaml.safe_load((tmp_path / "runs" / "logs" / "version_0" / "config.yaml").read_text())))
    assert saved["dataloader"]["tokenizer_path"] == str(text_tokenizer)


def test_example_configs_validate_against_demo_data(tmp_path, capsys):
    import shutil

    from brain_gen.demo import make_synthetic_dataset

    examples = Path(__file__).resolve().parents[2] / "examples"
    make_synthetic_dataset(tmp_path / "demo_run" / "data", n_sessions=6, session_seconds=20.0, chunk_seconds=10.0)
    (tmp_path / "examples").mkdir()
    for name in ("mixup_quantize.yaml", "text_gpt.yaml"):
        shutil.copy(examples / name, tmp_path / "examples" / name)
    assert main(["validate", str(tmp_path / "examples" / "mixup_quantize.yaml")]) == 0
    text = str(tmp_path / "examples" / "text_gpt.yaml")
    assert main(["tokenizer-text", text, "--vocab-size", "600", "--max-windows", "50"]) == 0
    assert main(["validate", text]) == 0
    assert "TextGPT with" in capsys.readouterr().out


def test_text_batches_of_groups_and_target_pairs_keep_the_samples_targets(tmp_path, tiny_dataset, text_tokenizer):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer))
    loader = ExperimentDL(config).dataloader("val")
    samples = [loader.dataset[i] for i in range(3)]
    (ids, mask, channels), _ = loader.collate_fn(samples)
    # A class label per sample, as when decoding from text.
    (pair_ids, pair_mask, pair_channels), labels = loader.collate_fn([(sample, label) for sample, label in zip(samples, [2, 0, 1])])
    assert torch.equal(pair_ids, ids) and torch.equal(pair_mask, mask) and torch.equal(pair_channels, channels)
    assert torch.equal(labels, torch.tensor([2, 0, 1]))
    # Plain lists and tuples work as well as ChannelGroups.
    (list_ids, _, _), targets = loader.collate_fn([[list(group) for group in sample] for sample in samples])
    assert list_ids.shape == ids.shape and targets.shape == ids.shape


@pytest.mark.parametrize("sample", ["a string", {"groups": []}, (["ab", "cd"], 1, 2), 3])
def test_text_collate_names_the_two_accepted_sample_forms(tmp_path, tiny_dataset, text_tokenizer, sample):
    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer))
    loader = ExperimentDL(config).dataloader("val")
    with pytest.raises(DataError, match=r"TextDataLoader: a sample must be channel groups .* or a \(groups, target\) pair; got") as caught:
        loader.collate_fn([sample])
    assert "\n" not in str(caught.value)


def test_mixup_collate_checks_its_first_batch_with_the_pre_run_check():
    from brain_gen.dataset.mixup import sample_problems
    from brain_gen.config.schema import MixupOptions

    coded = [(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)) for _ in range(2)]
    expected = sample_problems(MixupOptions(), coded[0])
    assert len(expected) == 2 and expected[0].startswith("datasplitter.dataset_class:") and expected[1].startswith("dataloader.num_classes:")
    with pytest.raises(ConfigError) as raised:
        MixupCollate()(coded)
    assert raised.value.problems == expected
    # Not mixing (validation, test): integer targets need no num_classes.
    assert sample_problems(MixupOptions(), (torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long)), mix=False) == []
