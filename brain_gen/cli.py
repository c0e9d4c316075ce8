"""The `brain-gen` command: argument parsing and error printing; the work happens elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from pathlib import Path

import yaml

from brain_gen.config.errors import BrainGenError, CheckpointWriteError, ConfigError, NonFiniteTraining
from brain_gen.config.schema import DEFAULT_SPECIAL_TOKENS
from brain_gen.distributed import TrainingPreempted, launched_as_rank_zero
from brain_gen.eval.process import start_early, stop_worker

EXIT_BAD_INPUT = 2
# Training met a NaN or infinite loss or gradient and stopped before applying it.
EXIT_NON_FINITE = 3
# A run a cluster preempted (SIGTERM, or SLURM's requeue signal) after saving its last-checkpoint:
# 128 + 15, as if SIGTERM had killed it.
EXIT_PREEMPTED = 143
# A checkpoint could not be written (a full disk, a lost mount): the earlier checkpoints are intact.
EXIT_WRITE_FAILED = 4


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    _add_common_arguments(parser)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set trainer.max_epochs=3 (VALUE is read as YAML; repeatable)",
    )
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


# The baselines' model orders when the command line names none (brain-gen baselines).
DEFAULT_AR_ORDERS = (1, 2, 4, 8, 16)
DEFAULT_VAR_ORDERS = (1, 2, 4)


def orders(text: str) -> tuple[int, ...]:
    """Comma-separated model orders of at least 1 (``1,2,4``); empty for none."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = (0,)
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="brain-gen", description="Train models of brain signals from YAML configs.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_run_arguments(commands.add_parser("train", help="train a model"))
    _add_run_arguments(commands.add_parser("test", help="evaluate a checkpoint (resume_from) on the test split"))
    _add_run_arguments(
        commands.add_parser("validate", help="check config, data and model without training, and summarize them")
    )
    tokenizer = commands.add_parser(
        "tokenizer-text", help="train a BPE tokenizer on the training split rendered as text (BPEDataset)"
    )
    _add_run_arguments(tokenizer)
    tokenizer.add_argument("--out", help="folder to write tokenizer/ into (default: dataloader.tokenizer_path)")
    tokenizer.add_argument("--vocab-size", type=positive_int, default=4096, help="size of the BPE vocabulary (default: 4096)")
    tokenizer.add_argument("--min-frequency", type=positive_int, default=2, help="fewest occurrences for a merge (default: 2)")
    tokenizer.add_argument("--max-windows", type=positive_int, help="train on at most this many training windows")
    for role, token in DEFAULT_SPECIAL_TOKENS.items():
        tokenizer.add_argument(f"--{role.replace('_', '-')}", default=token, help=f"the {role.split('_')[0]} token (default: {token})")
    baselines = commands.add_parser(
        "baselines", help="score closed-form references (unigram, AR, VAR) on the config's splits, as val/loss is scored"
    )
    _add_run_arguments(baselines)
    baselines.add_argument("--ar", type=orders, default=DEFAULT_AR_ORDERS, help=f"AR orders, comma-separated (default: {','.join(map(str, DEFAULT_AR_ORDERS))})")
    baselines.add_argument("--var", type=orders, default=DEFAULT_VAR_ORDERS, help=f"VAR orders, comma-separated; empty for none (default: {','.join(map(str, DEFAULT_VAR_ORDERS))})")
    baselines.add_argument("--overwrite", action="store_true", help="replace the baselines.json of an earlier run")
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint: teacher-forced metrics, generated continuations, plots")
    _add_run_arguments(evaluate)
    evaluate.add_argument("--ckpt", required=True, help="checkpoint file, or last / best: the newest one under save_dir")
    evaluate.add_argument("--out", help="new folder for the results (default: <run>/evals/epoch=E-step=S)")
    generate = commands.add_parser("generate", help="continue a real recording with a model and write it as MNE FIF")
    _add_run_arguments(generate)
    generate.add_argument("--ckpt", required=True, help="checkpoint file, or last / best: the newest one under save_dir")
    generate.add_argument("--seconds", type=positive_float, required=True, help="length of the generated continuation, in seconds")
    generate.add_argument("--context-seconds", type=positive_float, help="real context given to the model (default: eval_runner.example_sampler.context_length_s)")
    generate.add_argument("--session", help="session to continue (default: the first of eval_runner.example_sampler.split)")
    generate.add_argument("--out", required=True, help="the .fif file to write (e.g. generated_raw.fif)")
    prepare = commands.add_parser(
        "prepare", help="turn raw MEG/EEG recordings (files, folders, BIDS datasets) into session folders"
    )
    prepare.add_argument("inputs", nargs="+", metavar="INPUT", help="recording files, folders of recordings, or BIDS roots")
    prepare.add_argument("--out", required=True, help="folder that receives one session folder per recording")
    prepare.add_argument("--config", help="YAML file with a prepare: section (see docs/preparing.md)")
    prepare.add_argument("--jobs", type=positive_int, default=1, help="recordings prepared in parallel (default: 1)")
    prepare.add_argument("--overwrite", action="store_true", help="prepare again recordings whose session already exists")
    prepare.add_argument("--no-progress", dest="progress", action="store_false", help="do not draw progress bars")
    _add_common_arguments(prepare)
    demo = commands.add_parser("demo", help="train a small model on a generated dataset")
    demo.add_argument("--out", default="demo_run", help="folder for the demo data, config and runs (default: demo_run)")
    _add_common_arguments(demo)
    return parser


def run_train(args: argparse.Namespace) -> None:
    from brain_gen.training.train import ExperimentDL

    experiment = ExperimentDL(args.config, args.overrides, eval_process=args.eval_process)
    trainer = experiment.train()
    print(f"logs and checkpoints: {trainer.logger.log_dir}")
    print_against_baselines(experiment)
    print_evaluations(experiment)
    print(f"open TensorBoard with: tensorboard --logdir {experiment.save_dir}")


def print_against_baselines(experiment) -> None:
    """The run's best val/loss next to the strongest baseline in save_dir/baselines.json, when there is one."""
    from brain_gen.eval.baselines import read_baselines, strongest

    best = min((float(callback.best_model_score) for callback in experiment.trainer.checkpoint_callbacks
                if getattr(callback, "monitor", None) == "val/loss" and callback.best_model_score is not None), default=None)
    found = read_baselines(experiment.save_dir)
    reference = strongest(found) if found else None
    if best is None or reference is None:
        return
    name, nats = reference
    verdict = "below" if best < nats else "not below"
    print(f"best val/loss {best:.4f}: {verdict} the strongest baseline, {name} at {nats:.4f} ({experiment.save_dir / 'baselines.json'})")


def print_evaluations(experiment) -> None:
    """Where the checkpoint evaluations of a run went, and whether the final one is there."""
    runner = experiment.eval_runner
    if runner is None or not runner.completed:
        return
    done = [name for name, ok, _ in runner.completed if ok]
    print(f"evaluations:      {runner.evals_dir} ({len(done)} of {len(runner.completed)} succeeded)")
    final = {name: (ok, message) for name, ok, message in runner.completed}.get(runner.final_name)
    if final is None:
        print(f"final checkpoint not evaluated; run: {runner.offline_hint()}")
    elif final[0]:
        folder = runner.evals_dir / runner.final_name
        plots = ", ".join(sorted(path.name for path in folder.glob("*.png")))
        print(f"final evaluation: {folder} (summary.json, {plots})")
    else:
        print(f"final evaluation of {runner.final_name} {final[1]}")


def run_test(args: argparse.Namespace) -> None:
    from brain_gen.training.train import ExperimentDL

    experiment = ExperimentDL(args.config, args.overrides)
    experiment.test()
    print(f"test logs: {experiment.trainer.logger.log_dir}")


def run_validate(args: argparse.Namespace) -> None:
    from brain_gen.training.train import ExperimentDL

    experiment = ExperimentDL(args.config, args.overrides)
    summary = experiment.validate()
    config = experiment.config
    print(f"config ok: {args.config}")
    for name, counts in summary["splits"].items():
        print(f"  {name:5s}: {counts['sessions']} sessions, {counts['samples']} {summary['sample_kind']}")
    seconds = summary["window_samples"] / summary["sfreq"]
    print(
        f"  data : {summary['channels']} channels at {summary['sfreq']:g} Hz, "
        f"windows of {summary['window_samples']} samples ({seconds:g} s)"
    )
    print(f"  model: {config.model_name} with {summary['parameters']:,} parameters, loss {config.loss_name}")
    if summary["pending"]:
        print(f"  note : train stops on keys whose behaviour is not implemented yet: {', '.join(summary['pending'])}")


def run_eval(args: argparse.Namespace) -> None:
    from brain_gen.config.loading import load_config
    from brain_gen.eval.offline import evaluate_checkpoint

    config = load_config(args.config, args.overrides)
    out_dir, summary = evaluate_checkpoint(config, args.ckpt, args.out)
    print(f"evaluated {summary['checkpoint']} (epoch {summary['epoch']}, step {summary['step']}) in {summary['wall_time_s']:.1f} s")
    print(f"  teacher-forced loss on {summary['teacher_forced']['split']}: {summary['loss']:.4f}")
    scalars = summary.get("analyses", {}).get("scalars", {})
    for name in ("psd_distance_db", "psd_distance_ratio", "cov_corr", "kurtosis_diff"):
        if name in scalars:
            print(f"  {name}: {scalars[name]:.3f}")
    print(f"results: {out_dir}")


def run_generate(args: argparse.Namespace) -> None:
    from brain_gen.config.loading import load_config
    from brain_gen.eval.offline import generate_recording

    config = load_config(args.config, args.overrides)
    path = generate_recording(config, args.ckpt, args.seconds, args.out, args.context_seconds, args.session)
    print(f"generated recording: {path}")
    print(f"look at it with: python -c \"import mne; mne.io.read_raw_fif('{path}').plot(block=True)\"")


def run_baselines(args: argparse.Namespace) -> None:
    from brain_gen.eval.baselines import compute_baselines, table, write_baselines
    from brain_gen.training.train import ExperimentDL

    # Reads the data only: no model, no Trainer.
    experiment = ExperimentDL(args.config, args.overrides, check_trainer=False)
    experiment.build_datasets()
    result = compute_baselines(experiment.datasets, args.ar, args.var)
    path = write_baselines(result, experiment.save_dir, overwrite=args.overwrite)
    print(f"closed-form baselines, {result['unit']} (lower is better):")
    print(table(result))
    print(f"written to {path}")


def run_tokenizer_text(args: argparse.Namespace) -> None:
    from brain_gen.training.train import ExperimentDL

    # Reads the data only: the Trainer settings (a GPU this machine may lack) are not checked.
    experiment = ExperimentDL(args.config, args.overrides, check_trainer=False)
    out_dir = args.out or experiment.config.dataloader.tokenizer_path
    if out_dir is None:
        raise ConfigError("tokenizer-text --out: give --out or set dataloader.tokenizer_path")
    special_tokens = {role: getattr(args, role) for role in DEFAULT_SPECIAL_TOKENS}
    folder = experiment.train_text_tokenizer(out_dir, args.vocab_size, args.min_frequency, special_tokens, args.max_windows)
    print(f"tokenizer written to {folder}")
    print(f"use it with: dataloader_class: TextDataLoader and dataloader.tokenizer_path: {Path(out_dir).resolve()}")


def run_prepare(args: argparse.Namespace) -> int:
    from brain_gen.config.loading import load_prepare_config
    from brain_gen.preprocessing.prepare import prepare_all, summary_table

    settings = load_prepare_config(args.config, args.overrides)
    outcomes = prepare_all(args.inputs, args.out, settings, jobs=args.jobs, overwrite=args.overwrite, progress=args.progress)
    print(summary_table(outcomes))
    # Sessions that failed while being prepared make the run fail; skipped files do not.
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


def demo_files(out: str) -> Path:
    """The demo's datasets and config under ``out`` (made once); returns the config's path."""
    from brain_gen.demo import demo_config, make_evoked_dataset, make_synthetic_dataset

    out_dir = Path(out).resolve()
    data_dir = out_dir / "data"
    if not data_dir.is_dir():
        print(f"generating the demo dataset in {data_dir}")
        make_synthetic_dataset(data_dir)
    if not (out_dir / "evoked_data").is_dir():
        # For examples/conv_classifier.yaml: event-locked responses to decode.
        make_evoked_dataset(out_dir / "evoked_data")
    config_path = out_dir / "demo.yaml"
    if not config_path.exists():
        config_path.write_text(yaml.safe_dump(demo_config(), sort_keys=False))
    return config_path


def run_demo(args: argparse.Namespace) -> None:
    from brain_gen.training.train import ExperimentDL

    config_path = args.config  # written by demo_files()
    experiment = ExperimentDL(config_path, args.overrides, eval_process=args.eval_process)
    trainer = experiment.train()
    run_dir = Path(trainer.logger.log_dir)
    val_loss = trainer.callback_metrics.get("val/loss")
    print()
    print(f"demo config:  {config_path}")
    if val_loss is not None:
        chance = math.log(experiment.config.model_kwargs["vocab_size"])
        print(f"final val/loss: {float(val_loss):.4f} (guessing uniformly over the codes scores {chance:.4f})")
    print(f"TensorBoard logs: {run_dir}")
    print(f"checkpoints:      {run_dir / 'checkpoints'}")
    print_evaluations(experiment)
    print(f"open TensorBoard with: tensorboard --logdir {experiment.save_dir}")


COMMANDS = {
    "train": run_train,
    "test": run_test,
    "validate": run_validate,
    "eval": run_eval,
    "generate": run_generate,
    "tokenizer-text": run_tokenizer_text,
    "baselines": run_baselines,
    "prepare": run_prepare,
    "demo": run_demo,
}


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: ... install litlogger ..."): not about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith("💡")


@contextlib.contextmanager
def console_logging(quiet: bool = False):
    """Status messages to stdout, warnings to stderr, for brain-gen and Lightning alike.

    Lightning prints its status lines (GPU available, ...) to stderr by default; on
    stdout they stay out of the way of the one-line error a bad input gets. ``quiet``
    (the other ranks of a distributed run): errors only, since every other line would
    repeat rank zero's.
    """
    saved = []
    for name, prefix in (("brain_gen", "brain-gen: "), ("pytorch_lightning", ""), ("lightning_fabric", "")):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        status = logging.StreamHandler(sys.stdout)
        status.addFilter(_BelowWarning())
        problems = logging.StreamHandler(sys.stderr)
        problems.setLevel(logging.WARNING)
        for handler in (status, problems):
            handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
            handler.addFilter(_NoAdvertisements())
        logger.handlers[:] = [status, problems]
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@contextlib.contextmanager
def _prints_unless_rank_zero():
    """In the other processes of a distributed run, print() goes nowhere: each rank runs
    the same command, and its summary would repeat rank zero's."""
    if launched_as_rank_zero():
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        args.config = demo_files(args.out)
    # A run that evaluates its checkpoints starts its evaluation process now: it imports
    # torch and its other heavy modules on one core while this process imports Lightning
    # on the other, instead of waiting for training to leave a core idle.
    args.eval_process = start_early(args.config, args.overrides) if args.command in ("train", "demo") else None
    import pytorch_lightning  # noqa: F401  (its loggers must exist before they are redirected)

    try:
        with console_logging(quiet=not launched_as_rank_zero()), _prints_unless_rank_zero():
            try:
                exit_code = COMMANDS[args.command](args)
            except TrainingPreempted as exc:
                print(f"brain-gen: {exc}", file=sys.stderr)
                return EXIT_PREEMPTED
            except NonFiniteTraining as exc:
                if args.debug:
                    raise
                print(f"brain-gen: error: {exc}", file=sys.stderr)
                return EXIT_NON_FINITE
            except CheckpointWriteError as exc:
                if args.debug:
                    raise
                print(f"brain-gen: error: {exc}; the earlier checkpoints are intact, resume_from: last continues from them", file=sys.stderr)
                return EXIT_WRITE_FAILED
            except BrainGenError as exc:
                if args.debug:
                    raise
                # One line per problem, each naming its key or file.
                for problem in getattr(exc, "problems", None) or [str(exc)]:
                    print(f"brain-gen: error: {problem}", file=sys.stderr)
                return EXIT_BAD_INPUT
    finally:
        if args.eval_process is not None:
            # A run that adopted it stopped it already; one that stopped before fitting did not.
            stop_worker(args.eval_process)
            Path(args.eval_process.log.name).unlink(missing_ok=True)
    return exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
