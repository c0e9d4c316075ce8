"""The eval runner on real training runs, the offline commands, and the evaluation queue."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

from brain_gen import cli
from brain_gen.cli import main
from brain_gen.config.errors import ConfigError
from brain_gen.config.loading import load_config
from brain_gen.config.pending import pending_features
from brain_gen.config.schema import EvalRunnerConfig
from brain_gen.eval.evaluation import Evaluation
from brain_gen.eval.process import start_early, stop_worker
from brain_gen.eval.runner import EvalRunner
from brain_gen.training.train import ExperimentDL
from tests.conftest import text_changes, tiny_config
from tests.conftest import scalars, write_config

EVAL_FILES = {"summary.json", "rollouts.npz", "psd.png", "covariance.png", "examples.png", "horizon.png", "eval.log"}
# 50 Hz data: 1 s of context and 2 s of continuation keep the runs short.
FAST_EVAL = {"enabled": True, "max_batches": 2, "example_sampler": {"context_length_s": 1.0, "total_length_s": 3.0}}


def eval_config(tmp_path: Path, dataset: Path, **eval_runner) -> dict:
    return tiny_config(tmp_path / "runs", dataset, eval_runner={**FAST_EVAL, **eval_runner})


def test_two_epoch_run_evaluates_its_checkpoints_into_folders_and_tensorboard(tmp_path, tiny_dataset):
    experiment = ExperimentDL(eval_config(tmp_path, tiny_dataset))
    trainer = experiment.train()
    run_dir = Path(trainer.logger.log_dir)
    folders = sorted(path for path in (run_dir / "evals").iterdir() if path.is_dir() and not path.name.startswith("."))
    final_step = trainer.global_step
    # The final checkpoint is always evaluated; an earlier one may have been replaced while it waited.
    assert folders and folders[-1].name == f"epoch=1-step={final_step}"
    logged = scalars(run_dir)
    for folder in folders:
        if not (folder / "summary.json").exists():
            # Stopped at the end in favour of the final checkpoint.
            assert "cancelled" in (folder / "eval.log").read_text() and folder != folders[-1]
            continue
        assert EVAL_FILES <= {path.name for path in folder.iterdir()}, folder
        summary = json.loads((folder / "summary.json").read_text())
        assert f"step={summary['step']}" in folder.name
        for tag in ("eval/loss", "eval/accuracy", "eval/psd_distance_db", "eval/psd_distance_ratio", "eval/cov_corr", "eval/kurtosis_diff", "eval/bandpower_alpha"):
            assert summary["step"] in [step for step, _ in logged[tag]], tag
    assert not (run_dir / "evals" / ".checkpoints").exists(), "the links kept for evaluations are removed"

    # The teacher-forced loss is the batch-size weighted mean over the first max_batches val batches.
    summary = json.loads((folders[-1] / "summary.json").read_text())
    model = experiment.model
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)
    model.load_state_dict({name[len("model.") :]: value for name, value in checkpoint["state_dict"].items()})
    model.eval()
    losses, sizes = [], []
    with torch.no_grad():
        for _, (inputs, targets) in zip(range(2), experiment.dataloader("val")):
            losses.append(float(experiment.lit_model.loss_fn(model(inputs), targets)))
            sizes.append(len(targets))
    assert summary["loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-5)
    assert summary["teacher_forced"]["loss"]["n"] == sum(sizes)

    rollouts = np.load(folders[-1] / "rollouts.npz")
    assert rollouts["generated"].shape[-1] == rollouts["real"].shape[-1] == 100  # 2 s at 50 Hz
    assert rollouts["context"].shape[-1] == 50 and list(rollouts["ch_names"]) == ["MEG000", "MEG001", "MEG002", "MEG003"]


def test_whole_split_evaluation_equals_the_logged_val_loss(tmp_path, tiny_dataset):
    config = eval_config(tmp_path, tiny_dataset, max_batches=None, generator={"enabled": False})
    config["trainer"]["max_epochs"] = 1
    trainer = ExperimentDL(config).train()
    run_dir = Path(trainer.logger.log_dir)
    logged = scalars(run_dir)
    val_loss = dict(logged["val/loss"])[trainer.global_step - 1] if trainer.global_step - 1 in dict(logged["val/loss"]) else logged["val/loss"][-1][1]
    assert dict(logged["eval/loss"])[trainer.global_step] == pytest.approx(val_loss, rel=1e-5)
    summary = json.loads(next((run_dir / "evals").glob("epoch=*/summary.json")).read_text())
    assert "analyses" not in summary and not (summary_dir := next((run_dir / "evals").glob("epoch=*"))).joinpath("psd.png").exists(), summary_dir


def test_a_failing_evaluation_is_logged_and_training_finishes(tmp_path, tiny_dataset, capsys):
    config = eval_config(tmp_path, tiny_dataset)
    config["model_name"] = "tests.user_classes:BrokenForecastGPT"
    config["trainer"]["max_epochs"] = 1
    assert main(["train", str(write_config(tmp_path, config))]) == 0
    captured = capsys.readouterr()
    log_path = next((tmp_path / "runs").rglob("evals/epoch=*/eval.log"))
    assert f"failed (RuntimeError: this forecast always fails); see {log_path}" in captured.err
    assert "this forecast always fails" in log_path.read_text()


def test_model_without_forecast_gets_teacher_forced_metrics_or_an_error_when_generation_was_asked(tmp_path, tiny_dataset, caplog):
    config = eval_config(tmp_path, tiny_dataset)
    config["model_name"] = "tests.user_classes:NoForecastGPT"
    config["trainer"]["max_epochs"] = 1
    with caplog.at_level(logging.WARNING):
        trainer = ExperimentDL(config).train()
    assert "has no forecast method" in caplog.text and "teacher-forced metrics only" in caplog.text
    summary = json.loads(next(Path(trainer.logger.log_dir).glob("evals/epoch=*/summary.json")).read_text())
    assert "loss" in summary and "analyses" not in summary

    config["eval_runner"]["generator"] = {"enabled": True}
    config_path = write_config(tmp_path, config)
    with pytest.raises(ConfigError, match="set generator.enabled: false"):
        ExperimentDL(config_path).train()


def test_disabled_block_trains_normally_and_nothing_is_pending(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, eval_runner={"enabled": False})
    config["trainer"]["max_epochs"] = 1
    assert pending_features(load_config(config)) == []
    trainer = ExperimentDL(config).train()
    assert not (Path(trainer.logger.log_dir) / "evals").exists()


def test_reference_cloud_keys_parse_with_a_notice(tmp_path, tiny_dataset, caplog):
    config = tiny_config(tmp_path / "runs", tiny_dataset, eval_runner={"enabled": False, "use_modal": True, "modal_app": "x"})
    with caplog.at_level(logging.WARNING):
        ExperimentDL(config)
    assert "eval_runner.use_modal, modal_app: evaluations run locally" in caplog.text


def test_newest_pending_checkpoint_replaces_older_ones(tmp_path, caplog):
    run_dir = tmp_path / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    settings = EvalRunnerConfig(enabled=True)
    fake = (sys.executable, str(Path(__file__).parents[1] / "slow_eval_worker.py"), "1.0")
    runner = EvalRunner(settings, run_dir, run_dir / "config.yaml", worker_command=fake)
    runner.start()
    runner._send_setup()
    paths = []
    for step in (10, 20, 30, 40):
        path = run_dir / "checkpoints" / f"last-checkpoint-epoch={step // 10 - 1}-step={step}.ckpt"
        path.write_bytes(b"weights")
        paths.append(path)
    with caplog.at_level(logging.INFO):
        runner.checkpoint_written(str(paths[0]))
        runner.poll()  # the first one starts at once
        for path in paths[1:]:
            runner.checkpoint_written(str(path))
            path.unlink()  # training deletes the older file: the evaluation still reads its link
        deadline = time.monotonic() + 30
        while not runner.completed and time.monotonic() < deadline:
            time.sleep(0.05)
            runner.poll()  # once the first one finished, the newest waiting one starts
        for step in (50, 60):
            path = run_dir / "checkpoints" / f"last-checkpoint-epoch={step // 10 - 1}-step={step}.ckpt"
            path.write_bytes(b"weights")
            runner.checkpoint_written(str(path))
        # At the end an older evaluation would only delay the final one: it is stopped.
        runner.finish(wait=True)
    finished = sorted(path.parent.name for path in (run_dir / "evals").glob("*/job.json"))
    assert finished == ["epoch=0-step=10", "epoch=5-step=60"]
    assert caplog.text.count("skipped the evaluation of") == 3  # steps 20, 30 and 50
    assert "stopped the evaluation of epoch=3-step=40 to evaluate the final checkpoint sooner" in caplog.text
    assert [(name, ok) for name, ok, _ in runner.completed] == [("epoch=0-step=10", True), ("epoch=5-step=60", True)]
    assert not list((run_dir / "evals").glob(".checkpoints/*"))


def test_wait_at_end_false_cancels_and_prints_the_offline_command(tmp_path, caplog):
    run_dir = tmp_path / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    fake = (sys.executable, str(Path(__file__).parents[1] / "slow_eval_worker.py"), "30")
    runner = EvalRunner(EvalRunnerConfig(enabled=True, wait_at_end=False), run_dir, run_dir / "config.yaml", worker_command=fake)
    runner.start()
    runner._send_setup()
    path = run_dir / "checkpoints" / "last-checkpoint-epoch=0-step=5.ckpt"
    path.write_bytes(b"weights")
    runner.checkpoint_written(str(path))
    runner.poll()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        runner.finish()
    assert time.monotonic() - started < 5
    assert f"brain-gen eval {run_dir / 'config.yaml'} --ckpt {path}" in caplog.text
    assert not list((run_dir / "evals").glob(".checkpoints/*"))


def test_offline_eval_and_generate_write_results_and_a_fif_mne_reads(tmp_path, tiny_dataset, capsys):
    config = eval_config(tmp_path, tiny_dataset, enabled=False)
    config["trainer"]["max_epochs"] = 1
    config_path = write_config(tmp_path, config)
    assert main(["train", str(config_path)]) == 0
    assert main(["eval", str(config_path), "--ckpt", "last"]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split("results: ")[1].split()[0])
    assert EVAL_FILES - {"eval.log"} <= {path.name for path in folder.iterdir()}
    # Again: a new folder, the first one is kept.
    assert main(["eval", str(config_path), "--ckpt", "best"]) == 0
    assert len(list(folder.parent.iterdir())) == 2

    fif = tmp_path / "generated_raw.fif"
    assert main(["generate", str(config_path), "--ckpt", "last", "--seconds", "2", "--context-seconds", "1", "--out", str(fif)]) == 0
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    assert raw.ch_names == ["MEG000", "MEG001", "MEG002", "MEG003"]
    assert raw.info["sfreq"] == 50.0 and raw.n_times == 150
    assert list(raw.annotations.description) == ["generated"] and raw.annotations.onset[0] == pytest.approx(1.0)
    assert main(["generate", str(config_path), "--ckpt", "last", "--seconds", "2", "--out", str(fif)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--ckpt", "missing.ckpt"], "--ckpt: checkpoint not found"),
        (["--ckpt", "last"], "--ckpt last: no last-checkpoint"),
        (["--ckpt", "CONFIG"], "is not a PyTorch checkpoint"),
    ],
)
def test_offline_eval_bad_input_is_one_line(tmp_path, tiny_dataset, capsys, arguments, message):
    config_path = write_config(tmp_path, eval_config(tmp_path, tiny_dataset))
    arguments = [str(config_path) if value == "CONFIG" else value for value in arguments]
    assert main(["eval", str(config_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_contexts_come_from_distinct_sessions_and_are_seeded(tmp_path, tiny_dataset):
    config = load_config(eval_config(tmp_path, tiny_dataset, example_sampler={"split": "train", "num_sessions": 3, "context_length_s": 1.0, "total_length_s": 3.0}))
    first, second = Evaluation(config), Evaluation(config)
    first.warm_up(), second.warm_up()
    first, second = first.contexts, second.contexts
    assert len(set(first.sessions)) == 3 and first.starts_s == second.starts_s
    assert first.signals.shape == (3, 4, 150)


@pytest.mark.parametrize("use_separator", [True, False])
def test_text_gpt_generates_through_text_and_reports_its_wellformed_rate(tmp_path, tiny_dataset, text_tokenizer, use_separator):

    config = tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer, use_separator=use_separator))
    config["eval_runner"] = {**FAST_EVAL, "max_batches": 1, "generator": {"sampling": {"strategy": "argmax"}}}
    config["trainer"].update(max_epochs=1, limit_train_batches=3)
    trainer = ExperimentDL(config).train()
    folder = next(Path(trainer.logger.log_dir).glob("evals/epoch=*"))
    summary = json.loads((folder / "summary.json").read_text())
    generation = summary["generation"]
    assert generation["mode"] == "text" and generation["groups"] == 2 * 20  # two contexts of 100 steps in groups of 5
    assert 0.0 <= generation["text_wellformed_rate"] <= 1.0
    rollouts = np.load(folder / "rollouts.npz")
    assert rollouts["generated"].shape == (2, 1, 4, 100) and np.isfinite(rollouts["generated"]).all()
    assert "eval/text_wellformed_rate" in scalars(Path(trainer.logger.log_dir))


def test_wellformed_text_decodes_back_to_its_codes(tmp_path, tiny_dataset, text_tokenizer):
    from brain_gen.eval.text_generation import decode_groups

    config = load_config(tiny_config(tmp_path / "runs", tiny_dataset, **text_changes(text_tokenizer)))
    evaluation = Evaluation(config)
    collate, dataset = evaluation.loader.collate_fn, evaluation.datasets["val"]
    sample = dataset[0]
    ids, _ = collate.tokenize(sample)
    groups, wellformed = decode_groups(collate, ids.tolist(), 4, 5, dataset.mu)
    window, _ = dataset.read_window(0)
    codes = dataset.encode(window)
    assert wellformed == len(sample) - (codes.shape[1] % 5 != 0)
    assert np.array_equal(np.concatenate([group for group in groups if group is not None], axis=1), codes[:, : 5 * wellformed])
    # A group missing a channel's word is malformed, never a crash.
    sep = collate.tokenizer.token_to_id(collate.special_tokens["sep_token"])
    broken = ids.tolist()
    broken.remove(sep)
    assert decode_groups(collate, broken, 4, 5, dataset.mu)[1] == wellformed - 1


@pytest.mark.parametrize(
    "changes, mode",
    [
        ({"model_name": "WaveNet", "model_config": {"vocab_size": 256, "num_channels": 4, "residual_channels": 8, "skip_channels": 8, "n_layers": 3}}, "forecast"),
        (
            {
                "model_name": "tests.user_classes:LastValueModel",
                "loss_name": "MSE",
                "model_config": {"num_channels": 4},
                "datasplitter": {"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}},
            },
            "iterate",
        ),
    ],
)
def test_other_generative_models_are_evaluated_offline(tmp_path, tiny_dataset, capsys, changes, mode):
    config = tiny_config(tmp_path / "runs", tiny_dataset)
    for key, value in changes.items():
        if isinstance(value, dict) and key == "datasplitter":
            config[key].update(value)
        else:
            config[key] = value
    config["eval_runner"] = {**FAST_EVAL, "enabled": False}
    config["trainer"].update(max_epochs=1, limit_train_batches=3)
    config_path = write_config(tmp_path, config)
    assert main(["train", str(config_path)]) == 0
    assert main(["eval", str(config_path), "--ckpt", "last", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["generation"]["mode"] == mode and "psd_distance_db" in summary["analyses"]["scalars"]


@pytest.mark.parametrize(
    "worker_seconds, timeout_minutes, expected",
    [
        ("crash", 30.0, "the evaluation process exited with code 3"),
        ("30", 0.002, "stopped after eval_runner.timeout_minutes=0.002"),
    ],
)
def test_a_crashed_or_overdue_evaluation_is_reported_and_the_next_one_gets_a_fresh_process(tmp_path, caplog, worker_seconds, timeout_minutes, expected):
    run_dir = tmp_path / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    fake = (sys.executable, str(Path(__file__).parents[1] / "slow_eval_worker.py"), worker_seconds)
    runner = EvalRunner(EvalRunnerConfig(enabled=True, timeout_minutes=timeout_minutes), run_dir, run_dir / "config.yaml", worker_command=fake)
    runner.start()
    runner._send_setup()
    path = run_dir / "checkpoints" / "last-checkpoint-epoch=0-step=5.ckpt"
    path.write_bytes(b"weights")
    with caplog.at_level(logging.INFO):
        runner.checkpoint_written(str(path))
        runner.poll()
        first_process = runner._worker.process
        deadline = time.monotonic() + 20
        while not runner.completed and time.monotonic() < deadline:
            time.sleep(0.05)
            runner.poll()
        assert runner.completed and not runner.completed[0][1]
        assert f"{expected}" in caplog.text and str(run_dir / "evals" / "epoch=0-step=5" / "eval.log") in caplog.text
        assert runner._worker is None and first_process.poll() is not None
    runner.cancel()


def test_an_evaluation_process_started_before_the_run_is_adopted_and_its_early_log_folded_in(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = eval_config(tmp_path, tiny_dataset)
    config["trainer"]["max_epochs"] = 1
    config_path = write_config(tmp_path, config)
    process = start_early(config_path)
    assert process is not None and process.process.poll() is None
    early_log = Path(process.log.name)
    assert early_log.parent == tmp_path
    process.log.write("written before the run folder existed\n")
    process.log.flush()
    experiment = ExperimentDL(config_path, eval_process=process)
    trainer = experiment.train()
    runner = experiment.eval_runner
    final = f"epoch=0-step={trainer.global_step}"
    assert runner.completed[-1][:2] == (final, True)
    # The run stopped the process it adopted, and kept what it wrote early in worker.log.
    assert process.stopped and process.process.returncode is not None
    assert not early_log.exists()
    assert "written before the run folder existed" in (runner.evals_dir / "worker.log").read_text()
    assert EVAL_FILES <= {path.name for path in (runner.evals_dir / final).iterdir()}


def test_no_early_process_for_runs_without_evaluations_or_with_a_broken_config(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, eval_runner={"enabled": False})
    assert start_early(write_config(tmp_path, config)) is None
    assert start_early(write_config(tmp_path, config), ["eval_runner.enabeld=true"]) is None  # the run reports that key


def test_a_run_that_stops_before_fitting_stops_the_early_process(tmp_path, tiny_dataset, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started = []
    monkeypatch.setattr(cli, "start_early", lambda *args: started.append(start_early(*args)) or started[-1])
    config = eval_config(tmp_path, tiny_dataset)
    config["resume_from"] = str(tmp_path / "missing.ckpt")
    assert main(["train", str(write_config(tmp_path, config))]) == 2
    assert "resume_from" in capsys.readouterr().err
    assert started[0] is not None and started[0].stopped and started[0].process.returncode is not None
    assert not list(tmp_path.glob("brain-gen-eval-*.log"))


@pytest.mark.parametrize("variable", ["RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"])
def test_no_early_process_outside_global_rank_zero(tmp_path, tiny_dataset, monkeypatch, variable):
    config_path = write_config(tmp_path, eval_config(tmp_path, tiny_dataset))
    monkeypatch.setenv(variable, "1")
    assert start_early(config_path) is None
    monkeypatch.setenv(variable, "0")
    process = start_early(config_path)
    try:
        assert process is not None and process.process.poll() is None
    finally:
        stop_worker(process)
        Path(process.log.name).unlink(missing_ok=True)
