"""Starting the evaluation process (``brain_gen.eval.worker``), without importing torch or Lightning.

The process spends seconds importing torch, torchmetrics, scipy and matplotlib. A
`brain-gen train` command therefore starts it (``start_early``) before importing
Lightning itself: while the command's own imports keep one core busy, the process
imports on the other, and is ready before training saturates both. ``EvalRunner``
adopts a process started early, or starts one itself when fitting starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from brain_gen.config.errors import BrainGenError
from brain_gen.distributed import launched_as_rank_zero

WORKER_COMMAND = (sys.executable, "-m", "brain_gen.eval.worker")


@dataclass
class WorkerProcess:
    """A running evaluation process: its handle, the read end of its result pipe, and its log file."""

    process: subprocess.Popen
    results_fd: int
    log: IO[str]
    stopped: bool = False


def start_worker(command: tuple[str, ...] | list[str], log: IO[str]) -> WorkerProcess:
    """Start ``command --result-fd N`` with its stdout and stderr going to ``log``."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        # A process group of its own, so that Ctrl-C in the terminal reaches training, which
        # decides what to stop. Not a session of its own: with the kernel's autogroup
        # scheduling, each session gets a fair share of the CPU whatever its niceness, so a
        # new session would compete with training as an equal.
        process = subprocess.Popen(
            [*command, "--result-fd", str(write_end)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            process_group=0,
            text=True,
            # numpy's BLAS would start a thread per core beside training; torch's threads are set per job.
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return WorkerProcess(process, read_end, log)


def start_early(source: Any, overrides: list[str] | None = None) -> WorkerProcess | None:
    """The evaluation process of a run about to train, when its config enables evaluations.

    None when it does not, or when the config does not load: the run itself reports
    that, with every problem, once it reads the config. Until the run's folder exists
    the process writes to a temporary file, which the runner folds into its
    ``worker.log`` when the process ends.
    """
    from brain_gen.config.loading import load_config

    if not launched_as_rank_zero():
        return None  # only global rank zero evaluates
    try:
        config = load_config(source, overrides, check_trainer=False)
    except BrainGenError:
        return None
    if config.eval_runner is None or not config.eval_runner.enabled:
        return None
    log = tempfile.NamedTemporaryFile("a+", prefix="brain-gen-eval-", suffix=".log", delete=False)
    try:
        return start_worker(WORKER_COMMAND, log)
    except OSError:
        log.close()
        Path(log.name).unlink(missing_ok=True)
        return None


def stop_worker(worker: WorkerProcess) -> None:
    """Kill the process (and anything it started) if it still runs, and release its pipe and log (once)."""
    if worker.stopped:
        return
    worker.stopped = True
    process = worker.process
    if process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(OSError):
        os.close(worker.results_fd)
    if process.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            process.stdin.close()
    worker.log.close()
