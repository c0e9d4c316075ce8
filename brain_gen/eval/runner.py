"""EvalRunner: evaluate each new last-checkpoint in a separate low-priority process while training goes on.

The evaluation process (brain_gen.eval.worker) is started when fitting starts, or by
`brain-gen train` before its own imports (brain_gen.eval.process), so that its imports
overlap the run's start-up rather than wait for training to leave a core idle; afterwards each
evaluation only loads a checkpoint. One evaluation runs at a time. A checkpoint that
lands while one runs waits, and a newer one replaces it (the dropped one is logged).
A crash, an error or a timeout of an evaluation is logged with its log file, and
training goes on; the next evaluation gets a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from brain_gen.config.schema import EvalRunnerConfig
from brain_gen.eval.evaluation import evaluation_folder_name
from brain_gen.eval.process import WORKER_COMMAND, WorkerProcess, start_worker, stop_worker

log = logging.getLogger(__name__)

@dataclass
class _Job:
    source: str  # the checkpoint as training wrote it
    link: str  # a hard link (or copy) the evaluation reads, so the source may be deleted meanwhile
    out_dir: Path
    name: str
    started: float | None = None


class EvalRunner(pl.Callback):
    """Evaluates last-checkpoints as they are written (rank zero only).

    Args:
        settings: the ``eval_runner`` config section.
        run_dir: the version folder; evaluations go to ``<run_dir>/evals/epoch=E-step=S/``.
        config_path: the run's resolved ``config.yaml``, which the evaluation process reads.
        worker_command: the command that starts an evaluation process (tests pass a fake).
        early_process: a process started before the run's imports (``process.start_early``);
            it is used instead of starting one when fitting starts.
    """

    def __init__(
        self,
        settings: EvalRunnerConfig,
        run_dir: str | Path,
        config_path: str | Path,
        worker_command: tuple[str, ...] | list[str] = WORKER_COMMAND,
        early_process: WorkerProcess | None = None,
    ):
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.evals_dir = self.run_dir / "evals"
        self.config_path = Path(config_path)
        self.worker_command = list(worker_command)
        self._lock = threading.Lock()
        self._written = 0
        self._pending: _Job | None = None
        self._running: _Job | None = None
        self._worker: WorkerProcess | None = None
        # A process the command started before its own imports; adopted by start().
        self._early = early_process
        self._early_log: Path | None = None
        self._threads = 1
        self._setup_sent = False
        self._buffer = b""
        self.latest_checkpoint: str | None = None
        self.completed: list[tuple[str, bool, str]] = []  # (folder name, ok, message)
        # Set by ExperimentDL from its pre-run check: whether the model generates.
        self.generates = True
        self._active = True

    # ----------------------------------------------------------------- hooks

    def start(self) -> None:
        """Start the evaluation process now (or adopt the early one), so that its imports overlap the run's own start-up."""
        if self._worker is not None:
            return
        early, self._early = self._early, None
        if early is not None and early.process.poll() is None:
            self.evals_dir.mkdir(parents=True, exist_ok=True)
            self._worker, self._early_log = early, Path(early.log.name)
            self._buffer = b""
            self._setup_sent = False
            return
        if early is not None:
            stop_worker(early)
            self._fold_log(Path(early.log.name))
        self._start_worker()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = trainer.is_global_zero
        if not self._active:
            self._close_worker()
            return
        # The run's config.yaml exists by now: the process can prepare the data.
        self.start()
        self._send_setup()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._running is not None or self._pending is not None:
            self.poll()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.poll()

    # ----------------------------------------------------------------- queue

    def checkpoint_written(self, path: str) -> None:
        """Called on the checkpoint writer thread for each last-checkpoint once it is durable,
        before the file can be replaced: keep a link to it."""
        if not self._active:
            return
        with self._lock:
            self._written += 1
            self.latest_checkpoint = path
            # The Nth, 2Nth, ... write, as Lightning counts every_n_epochs; the final one is added by finish().
            if self._written % self.settings.every_n_checkpoints:
                return
            self._queue(path)

    def _queue(self, path: str) -> None:
        job = self._job_for(path)
        if job is None:
            return
        if self._pending is not None:
            log.info("eval_runner: skipped the evaluation of %s: a newer checkpoint arrived while it waited", self._pending.name)
            Path(self._pending.link).unlink(missing_ok=True)
        self._pending = job

    def _job_for(self, path: str) -> _Job | None:
        name = evaluation_folder_name(path, 0, 0)
        out_dir = self.evals_dir / name
        if out_dir.exists() or (self._running is not None and self._running.name == name) or (self._pending is not None and self._pending.name == name):
            return None  # already evaluated or on its way
        links = self.evals_dir / ".checkpoints"
        links.mkdir(parents=True, exist_ok=True)
        # Not named like a checkpoint, so that `resume_from: last` and `--ckpt last` never pick it.
        link = links / f"evaluating-{name}.ckpt"
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)  # a file system without hard links
        return _Job(source=path, link=str(link), out_dir=out_dir, name=name)

    def poll(self) -> None:
        """Collect a finished evaluation, stop one past its timeout, and start the next one."""
        with self._lock:
            running = self._running
            # Whatever goes wrong with an evaluation, training goes on.
            if running is not None:
                try:
                    self._collect(running)
                except Exception as error:
                    self._fail(running, f"could not be collected ({type(error).__name__}: {error})")
            if self._running is None and self._pending is not None:
                job, self._pending = self._pending, None
                try:
                    self._launch(job)
                except Exception as error:
                    self._fail(job, f"could not be started ({type(error).__name__}: {error}); see {self.evals_dir / 'worker.log'}")

    def _collect(self, job: _Job) -> None:
        answer = self._read_answer()
        if answer is not None:
            self._running = None
            if answer.get("cancelled"):
                Path(job.link).unlink(missing_ok=True)
                log.info("eval_runner: stopped the evaluation of %s to evaluate the final checkpoint sooner", job.name)
            elif answer.get("ok"):
                self._report(job, True, f"done in {time.monotonic() - job.started:.0f} s: {job.out_dir}")
            else:
                self._report(job, False, f"failed ({answer.get('error')}); see {job.out_dir / 'eval.log'}")
            return
        if self._worker.process.poll() is not None:
            self._fail(job, f"the evaluation process exited with code {self._worker.process.returncode}; see {job.out_dir / 'eval.log'}")
        elif time.monotonic() - job.started > self.settings.timeout_minutes * 60:
            self._fail(job, f"stopped after eval_runner.timeout_minutes={self.settings.timeout_minutes:g}; see {job.out_dir / 'eval.log'}")

    def _fail(self, job: _Job, message: str) -> None:
        """Report a failed evaluation and stop its process: the next one gets a fresh process."""
        self._running = None
        self._report(job, False, message)
        self._close_worker()

    def _report(self, job: _Job, ok: bool, message: str) -> None:
        Path(job.link).unlink(missing_ok=True)
        self.completed.append((job.name, ok, message))
        if ok:
            log.info("eval_runner: evaluation of %s %s", job.name, message)
        else:
            log.warning("eval_runner: evaluation of %s %s", job.name, message)

    def _launch(self, job: _Job) -> None:
        if self._worker is None or self._worker.process.poll() is not None:
            self._close_worker()
            self._start_worker()
            self._send_setup()
        job.out_dir.mkdir(parents=True, exist_ok=True)
        job.started = time.monotonic()
        message = {
            "checkpoint": job.link,
            "source": job.source,
            "out": str(job.out_dir),
            "tensorboard_dir": str(self.run_dir),
            "threads": self._threads,
            "remove_checkpoint": True,
            "name": job.name,
            "cancel_file": str(self.evals_dir / ".cancel"),
        }
        self._write(message)  # a failure is reported by poll()
        self._running = job
        log.info("eval_runner: evaluating %s in the background", job.name)

    # ----------------------------------------------------------------- the process

    def _write(self, message: dict[str, Any]) -> None:
        self._worker.process.stdin.write(json.dumps(message) + "\n")
        self._worker.process.stdin.flush()

    def _send_setup(self) -> None:
        if not self._setup_sent:
            self._setup_sent = True
            # "log": a process started early writes to a temporary file until it reads this.
            self._write({"config": str(self.config_path), "log": str(self.evals_dir / "worker.log")})

    def _start_worker(self) -> None:
        self.evals_dir.mkdir(parents=True, exist_ok=True)
        self._worker = start_worker(self.worker_command, open(self.evals_dir / "worker.log", "a"))
        self._buffer = b""
        self._setup_sent = False

    def _read_answer(self) -> dict[str, Any] | None:
        try:
            chunk = os.read(self._worker.results_fd, 1 << 16)
        except BlockingIOError:
            chunk = b""
        self._buffer += chunk
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _close_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            stop_worker(worker)
        early, self._early = self._early, None
        if early is not None:  # never adopted (another rank, or the run stopped before fitting)
            stop_worker(early)
            self._early_log = Path(early.log.name)
        if self._early_log is not None:
            self._fold_log(self._early_log)
            self._early_log = None

    def _fold_log(self, path: Path) -> None:
        """Append what an early process wrote before it knew the run's folder to worker.log."""
        with contextlib.suppress(OSError):
            text = path.read_text()
            if text:
                self.evals_dir.mkdir(parents=True, exist_ok=True)
                with open(self.evals_dir / "worker.log", "a") as log_file:
                    log_file.write(text)
            path.unlink()

    # ----------------------------------------------------------------- end of training

    def offline_hint(self) -> str:
        """The command that runs the final checkpoint's evaluation later."""
        checkpoint = self.latest_checkpoint or "<checkpoint>"
        # The run's config.yaml writes every default, generator.enabled included; a model
        # the run could not let generate needs it switched off there.
        extra = "" if self.generates else " --set eval_runner.generator.enabled=false"
        return f"brain-gen eval {self.config_path} --ckpt {checkpoint}{extra}"

    @property
    def final_name(self) -> str | None:
        """The evaluation folder name of the newest last-checkpoint."""
        return evaluation_folder_name(self.latest_checkpoint, 0, 0) if self.latest_checkpoint else None

    def finish(self, wait: bool | None = None) -> None:
        """After fit: evaluate the final checkpoint and wait for it, or cancel everything.

        Ctrl-C during the wait stops it, and the offline command is printed.
        """
        if not self._active:
            return
        wait = self.settings.wait_at_end if wait is None else wait
        if not wait:
            self.cancel()
            if self.latest_checkpoint:
                log.info("eval_runner: evaluations cancelled (wait_at_end: false); evaluate the final checkpoint with: %s", self.offline_hint())
            return
        # Training is over: the final evaluation may use every core.
        self._threads = max(1, os.cpu_count() or 1)
        with self._lock:
            if self.latest_checkpoint is not None:
                self._queue(self.latest_checkpoint)
            # An older checkpoint's evaluation would only delay the final one: stop it, keeping the warm process.
            running, pending = self._running, self._pending
            if running is not None and pending is not None and self._worker is not None:
                # Named in a file, so that the signal can never stop another job than this one,
                # even when it arrives before the process has read this job or after it finished.
                (self.evals_dir / ".cancel").write_text(running.name)
                with contextlib.suppress(OSError):
                    os.kill(self._worker.process.pid, signal.SIGUSR1)
        self.poll()
        shown = 0.0
        started = time.monotonic()
        try:
            while self._running is not None or self._pending is not None:
                time.sleep(0.05)
                self.poll()
                waited = time.monotonic() - started
                if self._running is not None and waited - shown >= 5:
                    shown = waited
                    log.info("eval_runner: waiting for the evaluation of %s (%.0f s; Ctrl-C skips it)", self._running.name, waited)
        except KeyboardInterrupt:
            self.cancel()
            log.warning("eval_runner: evaluation stopped by Ctrl-C; run it later with: %s", self.offline_hint())
            return
        finally:
            if self._running is None and self._pending is None:
                self.close()

    def cancel(self) -> None:
        """Drop the pending evaluation and stop the running one."""
        with self._lock:
            for job in (self._pending, self._running):
                if job is not None:
                    Path(job.link).unlink(missing_ok=True)
            self._pending = self._running = None
        self._close_worker()
        self._remove_link_folder()

    def close(self) -> None:
        """Stop the evaluation process."""
        process = self._worker.process if self._worker is not None else None
        if process is not None and process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.close()  # end of jobs: the worker exits by itself
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close_worker()
        self._remove_link_folder()

    def _remove_link_folder(self) -> None:
        (self.evals_dir / ".cancel").unlink(missing_ok=True)
        links = self.evals_dir / ".checkpoints"
        if links.is_dir() and not any(links.iterdir()):
            links.rmdir()


