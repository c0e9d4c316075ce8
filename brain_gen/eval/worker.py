"""The evaluation process: ``python -m brain_gen.eval.worker --result-fd N``.

Started by EvalRunner beside training, at the lowest CPU priority and with few torch
threads. It imports what evaluations need, reads the run's config path as the first
JSON line on stdin (``{"config": PATH}``), builds what every evaluation of the run
shares once (datasets, contexts, teacher-forced batches), then reads one JSON job
per line, evaluates it
with its stdout and stderr going to that job's ``eval.log``, and answers one JSON
line on the result pipe: ``{"ok": true}``, ``{"ok": false, "error": "..."}``, or
``{"ok": false, "cancelled": true}`` when SIGUSR1 stopped the job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path


def send_output_to(path: str | Path) -> None:
    """Append this process's stdout and stderr (file descriptors 1 and 2) to ``path`` from now on."""
    sys.stdout.flush(), sys.stderr.flush()
    with open(path, "a") as log_file:
        os.dup2(log_file.fileno(), 1), os.dup2(log_file.fileno(), 2)


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr to ``path`` for a while."""
    saved = os.dup(1), os.dup(2)
    send_output_to(path)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def lower_priority() -> None:
    """Let training win the CPU: the idle scheduling class where Linux has it, else nice 19.

    Under SCHED_IDLE this process runs only when no normal task of the same
    scheduling group wants the core, which nice 19 alone does not ensure.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


class Cancelled(BaseException):
    """Raised inside a job when the runner asks (SIGUSR1) to drop it for a newer checkpoint."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brain_gen.eval.worker")
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args(argv)
    lower_priority()
    # Ctrl-C belongs to training, which stops this process itself when it must.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    in_job, job = False, {}

    def cancelled() -> bool:
        """Whether the runner named the current job in its cancel file."""
        try:
            return Path(job["cancel_file"]).read_text() == job["name"]
        except (KeyError, OSError):
            return False

    def cancel(signum, frame):
        if in_job and cancelled():
            raise Cancelled()

    signal.signal(signal.SIGUSR1, cancel)
    # Heavy imports first, before the run's config exists: they overlap the training
    # process's own start-up, which leaves a core idle.
    import torch

    torch.set_num_threads(1)
    import brain_gen.eval.analyses  # noqa: F401
    import brain_gen.eval.plots  # noqa: F401
    import brain_gen.eval.tensorboard  # noqa: F401
    import brain_gen.losses.next_step  # noqa: F401  (torchmetrics: seconds of imports)
    from brain_gen.config.loading import load_config
    from brain_gen.eval.evaluation import Evaluation

    brain_gen.eval.plots.warm_up()

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("brain_gen").addHandler(handler)
    logging.getLogger("brain_gen").setLevel(logging.INFO)
    results = os.fdopen(args.result_fd, "w", buffering=1)

    # The first line names the run's config.yaml; every later line is a job.
    setup = json.loads(sys.stdin.readline() or "{}")
    if setup.get("log"):
        # Started before the run's folder existed: from now on write into the run's worker.log.
        send_output_to(setup["log"])
    evaluation, setup_error = None, None
    try:
        # The run checked its trainer keys already; skipping that keeps Lightning out of this process.
        evaluation = Evaluation(load_config(setup["config"], check_trainer=False), strict=False)
        evaluation.warm_up()
    except Exception as error:  # reported with every job: the worker must keep answering
        setup_error = error
        traceback.print_exc()
    for line in sys.stdin:
        job = json.loads(line)
        out_dir = Path(job["out"])
        out_dir.mkdir(parents=True, exist_ok=True)
        with output_to(out_dir / "eval.log"):
            try:
                in_job = True
                if cancelled():  # the signal came before this job was read
                    raise Cancelled()
                if setup_error is not None:
                    raise setup_error
                threads = int(job.get("threads", 1))
                # With two cores or more the teacher-forced half runs in a thread of its own beside
                # generation and plots, each half with its share of torch threads.
                concurrent = threads >= 2
                torch.set_num_threads(max(1, threads // 2) if concurrent else threads)
                print(f"evaluating {job['source']} into {out_dir}", flush=True)
                summary = evaluation.evaluate(job["checkpoint"], out_dir, job.get("tensorboard_dir"), source=job["source"], concurrent=concurrent)
                in_job = False
                print(f"done in {summary['wall_time_s']:.1f} s", flush=True)
                answer = {"ok": True, "loss": summary["loss"]}
            except Cancelled:
                print("cancelled: a newer checkpoint is evaluated instead", flush=True)
                answer = {"ok": False, "cancelled": True}
            except Exception as error:
                in_job = False
                traceback.print_exc()
                answer = {"ok": False, "error": one_line(error)}
            finally:
                in_job = False
                if job.get("remove_checkpoint"):
                    Path(job["checkpoint"]).unlink(missing_ok=True)
        results.write(json.dumps(answer) + "\n")
    # No more jobs: every file is written, so skip the interpreter's teardown of torch and
    # matplotlib (tenths of a second that the end of a run would wait for).
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
